"""Model ids and aliases -> configured models and their DeploymentHandles."""

from dataclasses import dataclass
from typing import Any

from serve_app.config import AppConfig, LLMModelConfig, WhisperModelConfig
from serve_app.errors import APIError

FAMILY_NAMES = {"llm": "a language model", "whisper": "a speech-to-text model"}


@dataclass(frozen=True)
class ServedModel:
    config: LLMModelConfig | WhisperModelConfig
    handle: Any  # DeploymentHandle; Any keeps fakes usable in unit tests

    @property
    def id(self) -> str:
        return self.config.id

    def card(self, created: int) -> dict[str, Any]:
        """The OpenAI ``model`` object, plus ``type`` and ``context_length``."""
        return {
            "id": self.config.id,
            "object": "model",
            "created": created,
            "owned_by": self.config.owned_by,
            "type": self.config.type,
            "context_length": self.config.context_length,
        }


class ModelRegistry:
    def __init__(
        self, config: AppConfig, handles: dict[str, Any], created: int, preprocessor: Any = None
    ) -> None:
        self.config = config
        self.created = created
        self.preprocessor = preprocessor
        self.models = [ServedModel(m, handles[m.id]) for m in config.models]
        self._by_name: dict[str, ServedModel] = {}
        for model in self.models:
            for name in (model.id, *model.config.aliases):
                self._by_name[name] = model
        stt = config.audio.default_model or next((m.id for m in config.stt_models), None)
        self.default_stt = self._by_name[stt] if stt else None

    def get(self, name: str, family: str, route: str) -> ServedModel:
        """The model for an id or alias, checked to be of ``family`` for ``route``.

        404 ``model_not_found`` for an unknown name; 400 for a model of another family.
        """
        model = self.lookup(name)
        if model.config.family != family:
            raise APIError(
                400,
                f"The model '{name}' is {FAMILY_NAMES[model.config.family]} and cannot be "
                f"used with {route}.",
                param="model",
                code="model_not_supported",
            )
        return model

    def lookup(self, name: str) -> ServedModel:
        """The model for an id or alias, of any family; 404 ``model_not_found`` otherwise."""
        model = self._by_name.get(name)
        if model is None:
            shown = name if len(name) <= 100 else name[:100] + "..."
            raise APIError(
                404,
                f"The model '{shown}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return model
