"""The form fields of ``/v1/audio/transcriptions`` and ``/v1/audio/translations``."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.whisper.languages import LANGUAGES


class AudioParams(BaseModel):
    """Everything but the file. Unknown fields are ignored, as OpenAI does."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    task: Literal["transcribe", "translate"]
    model: str | None = Field(None, min_length=1, max_length=256)
    language: str | None = None
    prompt: str | None = Field(None, max_length=4096)
    response_format: Literal["json", "text", "srt", "verbose_json", "vtt"] = "json"
    temperature: float | None = Field(None, ge=0, le=1)
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=list)
    stream: bool = False

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        if value is None:
            return None
        code = value.strip().lower()
        if code not in LANGUAGES:
            raise ValueError(f"unsupported language {value!r}; use an ISO-639-1 code such as 'en'")
        return code

    @model_validator(mode="after")
    def _combinations(self) -> "AudioParams":
        if self.timestamp_granularities and self.response_format != "verbose_json":
            raise ValueError("timestamp_granularities requires response_format 'verbose_json'")
        if self.stream and self.response_format not in ("json", "text"):
            raise ValueError("stream requires response_format 'json' or 'text'")
        return self

    def to_backend(self) -> dict[str, Any]:
        return self.model_dump(exclude={"model"})
