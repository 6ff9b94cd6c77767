"""The ``llm`` family: a local LLM on vLLM, one deployment per model."""

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, model_validator

from serve_app.adapters import location
from serve_app.errors import APIError
from serve_app.families.base import Family, register
from serve_app.options import DeploymentOptions, LocalModelBase, StrictModel
from serve_app.protocol.openai import ChatCompletionRequest, GenerationRequest
from serve_app.protocol.sampling import SamplingFields


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


class LoRAOptions(StrictModel):
    """LoRA adapters served on this model (``serve_app/adapters.py``)."""

    source: str = Field(
        description="Where the adapters are: a directory (relative paths resolve against the "
        "models dir) or a URL fsspec reads (s3://, gs://...). Each subfolder in PEFT's format "
        "is an adapter, served as '<model id>:<subfolder>'."
    )
    max_adapters_per_replica: int = Field(
        8, ge=1, description="Adapters a replica holds loaded (least recently used evicted)."
    )
    max_loras: int = Field(2, ge=1, description="Adapters in one batch (vLLM's max_loras).")
    max_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(
        8, description="Highest adapter rank served (vLLM's max_lora_rank)."
    )
    load_timeout_s: float = Field(
        60, gt=0, description="An adapter not loaded by then fails its request (400)."
    )

    @model_validator(mode="after")
    def _batch_fits(self) -> "LoRAOptions":
        if self.max_loras > self.max_adapters_per_replica:
            raise ValueError("max_loras cannot exceed max_adapters_per_replica")
        return self


class SamplingDefaults(SamplingFields):
    """Sampler values used when a request leaves them unset (OpenAI's defaults otherwise)."""

    @model_validator(mode="after")
    def _one_repeat_penalty(self) -> "SamplingDefaults":
        if self.both_repeat_penalties():
            raise ValueError("set either repeat_penalty or repetition_penalty, not both")
        return self


class LLMModelConfig(LocalModelBase):
    """One LLM served by its own vLLM deployment (weights in Hugging Face format)."""

    family: Literal["llm"]
    engine: LLMEngineOptions = Field(default_factory=LLMEngineOptions)
    sampling_defaults: SamplingDefaults | None = Field(
        None, description="Sampler defaults (e.g. llama.cpp's: top_k 40, min_p 0.05)."
    )
    audio_model: str | None = Field(
        None, description="STT model that transcribes input_audio parts (default: audio's)."
    )
    lora: LoRAOptions | None = Field(None, description="LoRA adapters served on this model.")
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(max_ongoing_requests=64, max_queued_requests=128),
        description="Placement and scaling of this model's replicas.",
    )

    @property
    def context_length(self) -> int:
        return self.engine.max_model_len


def check(body: GenerationRequest, model: LLMModelConfig) -> None:
    """400 when the request asks for what this model is not configured to do."""
    if not isinstance(body, ChatCompletionRequest):
        return
    engine = model.engine
    if body.thinking() and not engine.reasoning_parser:
        param = "enable_thinking" if body.enable_thinking is not None else "reasoning_effort"
        raise APIError(
            400,
            f"The model '{body.model}' does not support reasoning (no reasoning parser is "
            "configured for it).",
            param=param,
        )
    if body.uses_tools():
        if not engine.tool_call_parser:
            raise APIError(
                400,
                f"The model '{body.model}' does not support tool calls (no tool parser is "
                "configured for it).",
                param="tools",
            )
        if body.tool_choice in (None, "auto") and not engine.enable_auto_tool_choice:
            raise APIError(
                400,
                f"The model '{body.model}' does not support tool_choice 'auto'; use "
                "'required' or name a function.",
                param="tool_choice",
            )


def backend_body(body: GenerationRequest, model: LLMModelConfig) -> dict[str, Any]:
    """The vLLM request, with the model's sampling defaults filling unset samplers."""
    return body.to_backend(model.sampling_defaults)


def bind_extra(model: LLMModelConfig, resolve: Callable[[str], str]) -> tuple[Any, ...]:
    """The replica's further arguments: its ``lora`` options, if any, with the source's
    location (``serve_app/adapters.py``)."""
    if model.lora is None:
        return (None,)
    return ({**model.lora.model_dump(), "source": location(model.lora.source, resolve)},)


FAMILY = register(
    Family(
        name="llm",
        config=LLMModelConfig,
        deployment="deployments.llm.deployment:LLMDeployment",
        capabilities=frozenset({"chat", "completions"}),
        usage="tokens",
        model_type="llm",
        noun="a language model",
        transcribes_audio_parts=True,
        check=check,
        backend_body=backend_body,
        bind_extra=bind_extra,
        channel=True,
        meters_aborts=True,
    )
)
