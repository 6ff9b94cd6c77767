"""Typed ``args`` of the Serve application (the ``args:`` block of ``serve_config.yaml``).

Serve validates these at deploy time through ``build_app``'s type annotation, so a bad config
fails ``serve run``/``serve deploy`` with pydantic's message instead of a replica crash loop.
"""

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.protocol.sampling import SamplingFields

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoscalingOptions(StrictModel):
    """The subset of Serve's ``autoscaling_config`` we expose, with Serve's meaning."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept even when idle.")
    max_replicas: int = Field(1, ge=1, description="Upper bound on replicas.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time.")
    target_ongoing_requests: float = Field(
        2, gt=0, description="Ongoing requests per replica the autoscaler aims for."
    )
    upscale_delay_s: float = Field(30, ge=0, description="Seconds of overload before scaling up.")
    downscale_delay_s: float = Field(600, ge=0, description="Seconds idle before scaling down.")

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingOptions":
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling: min_replicas must be <= max_replicas")
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("autoscaling: initial_replicas must lie in [min, max]")
        return self


class DeploymentOptions(StrictModel):
    """How one deployment is placed and scaled on the Ray cluster."""

    num_cpus: float = Field(1, ge=0, description="CPUs reserved per replica (fractional ok).")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica; fractions share one GPU.")
    max_ongoing_requests: int = Field(
        ge=1, description="Requests one replica handles at once (set explicitly: Serve's 5 is low)."
    )
    max_queued_requests: int = Field(
        64,
        ge=-1,
        description="Requests each caller queues beyond max_ongoing before 503 + Retry-After "
        "(-1: unbounded, not recommended).",
    )
    autoscaling_config: AutoscalingOptions = Field(
        default_factory=AutoscalingOptions, description="Replica autoscaling."
    )
    health_check_period_s: float = Field(10, gt=0, description="Seconds between health checks.")
    health_check_timeout_s: float = Field(30, gt=0, description="Health check deadline.")
    graceful_shutdown_timeout_s: float = Field(
        20, ge=0, description="Seconds in-flight requests get to finish on shutdown."
    )

    def to_serve_options(self, name: str) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        ray_actor_options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            ray_actor_options["num_gpus"] = self.num_gpus
        return {
            "name": name,
            "ray_actor_options": ray_actor_options,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "autoscaling_config": self.autoscaling_config.model_dump(exclude_none=True),
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }


class LLMEngineOptions(StrictModel):
    """vLLM engine arguments (``AsyncEngineArgs``). Unlisted ones go in ``extra``."""

    dtype: str = Field("auto", description="Weights dtype; use float32 on CPU.")
    max_model_len: int = Field(2048, ge=16, description="Context length (prompt + output).")
    enforce_eager: bool = Field(False, description="Skip graph compilation (faster start on CPU).")
    kv_cache_memory_bytes: int | None = Field(
        None, gt=0, description="KV cache size in bytes; required on CPU."
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Share of GPU memory vLLM may use (GPU only)."
    )
    max_num_seqs: int | None = Field(None, ge=1, description="Sequences batched at once.")
    seed: int = Field(0, description="Engine seed.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica for tensor parallel.")
    chat_template: str | None = Field(
        None,
        description="Chat template: inline Jinja, an absolute path, or a file name under "
        "deployments/llm/templates/ (default: the model's own).",
    )
    tool_call_parser: str | None = Field(
        None, description="vLLM tool parser name (e.g. hermes); needed for tools."
    )
    enable_auto_tool_choice: bool = Field(False, description="Allow tool_choice=auto.")
    tool_strict_level: Literal["auto", "function", "parameter"] = Field(
        "auto",
        description="Constrain tool calls: 'parameter' makes arguments match each tool's schema.",
    )
    reasoning_parser: str | None = Field(
        None, description="vLLM reasoning parser name, or think_tags (<think> as plain text)."
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Further AsyncEngineArgs passed through verbatim."
    )


class _ModelBase(StrictModel):
    """What every served model has, whatever its family."""

    id: Annotated[str, Field(pattern=MODEL_ID_PATTERN)] = Field(
        description="Model id clients send in `model`."
    )
    source: str = Field(
        description="Weights directory; relative paths resolve against the models dir."
    )
    aliases: list[Annotated[str, Field(pattern=MODEL_ID_PATTERN)]] = Field(
        default_factory=list, description="Other ids that resolve to this model."
    )
    owned_by: str = Field("ray-openai-serve", description="`owned_by` in /v1/models.")


class SamplingDefaults(SamplingFields):
    """Sampler values used when a request leaves them unset (OpenAI's defaults otherwise)."""

    @model_validator(mode="after")
    def _one_repeat_penalty(self) -> "SamplingDefaults":
        if self.both_repeat_penalties():
            raise ValueError("set either repeat_penalty or repetition_penalty, not both")
        return self


class LLMModelConfig(_ModelBase):
    """One LLM served by its own vLLM deployment (weights in Hugging Face format)."""

    family: Literal["llm"]
    engine: LLMEngineOptions = Field(default_factory=LLMEngineOptions)
    sampling_defaults: SamplingDefaults | None = Field(
        None, description="Sampler defaults (e.g. llama.cpp's: top_k 40, min_p 0.05)."
    )
    audio_model: str | None = Field(
        None, description="STT model that transcribes input_audio parts (default: audio's)."
    )
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(max_ongoing_requests=64, max_queued_requests=128),
        description="Placement and scaling of this model's replicas.",
    )

    @property
    def type(self) -> str:
        return "llm"

    @property
    def context_length(self) -> int:
        return self.engine.max_model_len


class WhisperEngineOptions(StrictModel):
    """faster-whisper options."""

    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Where the model runs.")
    compute_type: str = Field("int8", description="CTranslate2 compute type (int8, float16...).")
    beam_size: int = Field(5, ge=1, le=16, description="Beam width for decoding.")
    vad_filter: bool = Field(False, description="Skip non-speech with Silero VAD.")
    cpu_threads: int = Field(0, ge=0, description="CTranslate2 CPU threads (0: its default).")
    num_workers: int = Field(1, ge=1, description="Transcriptions one replica runs at once.")


class WhisperModelConfig(_ModelBase):
    """One speech-to-text model served by its own faster-whisper deployment (CTranslate2)."""

    family: Literal["whisper"]
    engine: WhisperEngineOptions = Field(default_factory=WhisperEngineOptions)
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(max_ongoing_requests=4, max_queued_requests=32),
        description="Placement and scaling of this model's replicas.",
    )

    @property
    def type(self) -> str:
        return "stt"

    @property
    def context_length(self) -> int | None:
        return None


ModelConfig = Annotated[LLMModelConfig | WhisperModelConfig, Field(discriminator="family")]


class AudioOptions(StrictModel):
    """Upload limits and the CPU pool that decodes audio for the Whisper replicas."""

    max_upload_bytes: int = Field(
        25 * 1024 * 1024, ge=1, description="Largest accepted upload (413 above, before decoding)."
    )
    max_duration_s: float = Field(
        1800, gt=0, description="Longest accepted audio after decoding (400 above)."
    )
    default_model: str | None = Field(
        None, description="STT model used when a request names none (default: the first)."
    )
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(num_cpus=0.5, max_ongoing_requests=8),
        description="Placement and scaling of the audio preprocessor (keep num_gpus at 0).",
    )


class LimitOptions(StrictModel):
    """Request size and time limits enforced by the ingress."""

    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest JSON body (413 above, while reading)."
    )
    request_timeout_s: float = Field(
        600, gt=0, description="Deadline for a whole non-streaming response (504 after)."
    )
    stream_ttft_timeout_s: float = Field(
        120, gt=0, description="Deadline for a stream's first event (504 after)."
    )
    retry_after_s: int = Field(
        2, ge=1, description="Retry-After sent with 503 when a deployment's queue is full."
    )


class AppConfig(StrictModel):
    """The whole application: the models and the ingress deployment."""

    models: list[ModelConfig] = Field(min_length=1, description="Models to serve.")
    models_dir: str | None = Field(
        None,
        description="Where relative `source` paths resolve "
        "(default: $SERVE_APP_MODELS_DIR, else ./models at the project root).",
    )
    ingress: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(
            num_cpus=0.5, max_ongoing_requests=512, max_queued_requests=512
        ),
        description="Placement and scaling of the HTTP ingress.",
    )
    audio: AudioOptions = Field(default_factory=AudioOptions, description="Speech endpoints.")
    limits: LimitOptions = Field(default_factory=LimitOptions, description="Size/time limits.")
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS; empty (default) = CORS off."
    )
    rate_limiter: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(
            num_cpus=0,
            max_ongoing_requests=1000,
            max_queued_requests=-1,
            autoscaling_config=AutoscalingOptions(min_replicas=1, max_replicas=1),
        ),
        description="The single replica holding per-key rate-limit counters (keep 1 replica).",
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> "AppConfig":
        seen: dict[str, str] = {}
        for model in self.models:
            for name in (model.id, *model.aliases):
                if name in seen:
                    raise ValueError(
                        f"model id or alias {name!r} is used by both {seen[name]!r} "
                        f"and {model.id!r}"
                    )
                seen[name] = model.id
        stt = {m.id for m in self.stt_models}
        default = self.audio.default_model
        if default is not None and seen.get(default) not in stt:
            raise ValueError(f"audio.default_model {default!r} is not a configured whisper model")
        for model in self.models:
            audio_model = getattr(model, "audio_model", None)
            if audio_model is not None and seen.get(audio_model) not in stt:
                raise ValueError(
                    f"model {model.id!r}: audio_model {audio_model!r} is not a whisper model"
                )
        return self

    @property
    def stt_models(self) -> list[WhisperModelConfig]:
        return [m for m in self.models if isinstance(m, WhisperModelConfig)]

    def resolve_source(self, source: str, default_dir: Path) -> str:
        """Absolute path of a model's weights directory."""
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = Path(self.models_dir).expanduser() if self.models_dir else default_dir
            path = path / source
        return str(path.resolve())


def deployment_name(model_id: str, family: str) -> str:
    """Readable, Serve-safe deployment name derived from a model id (shown in the dashboard)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", model_id).strip("-")
    return f"{family}-{slug}"
