"""The ``embedding`` family: a local embedding model on vLLM's pooling runner, one deployment
per model."""

from typing import Any, Literal

from pydantic import Field

from serve_app.families.base import Family, cpu_threads_env, register
from serve_app.options import DeploymentOptions, LocalModelBase, StrictModel


class EmbeddingEngineOptions(StrictModel):
    """vLLM engine arguments for the pooling runner. Unlisted ones go in ``extra``."""

    dtype: str = Field("auto", description="Weights dtype; use float32 on CPU.")
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="Context in tokens (default: the model's own, e.g. sentence-transformers' "
        "max_seq_length); a longer input is a 400 unless the request truncates it.",
    )
    enforce_eager: bool = Field(False, description="Skip graph compilation (faster start on CPU).")
    max_num_seqs: int | None = Field(None, ge=1, description="Inputs batched in one engine step.")
    max_num_batched_tokens: int | None = Field(
        None, ge=16, description="Tokens in one engine step."
    )
    kv_cache_memory_bytes: int | None = Field(
        None,
        gt=0,
        description="Set it on CPU (a few MiB: encoder models keep no KV cache); unset, vLLM's "
        "CPU worker refuses to start unless 92% of the machine's memory is free.",
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Share of GPU memory vLLM may use (GPU only)."
    )
    seed: int = Field(0, description="Engine seed.")
    cpu_threads: int = Field(
        0,
        ge=0,
        description="Torch threads of the engine on CPU, as the replica's OMP_NUM_THREADS (0: "
        "Ray's default, floor(num_cpus), at least 1).",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Further AsyncEngineArgs passed through verbatim."
    )


class EmbeddingModelConfig(LocalModelBase):
    """One embedding model served by its own vLLM deployment (Hugging Face folder; pooling
    and normalisation from its sentence-transformers ``modules.json``)."""

    family: Literal["embedding"]
    dimensions: int = Field(
        ge=1,
        description="Size of the vectors the model makes (in /v1/models; a replica whose "
        "model makes another size fails to start).",
    )
    engine: EmbeddingEngineOptions = Field(default_factory=EmbeddingEngineOptions)
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(max_ongoing_requests=32, max_queued_requests=64),
        description="Placement and scaling of this model's replicas.",
    )

    @property
    def context_length(self) -> int | None:
        return self.engine.max_model_len


FAMILY = register(
    Family(
        name="embedding",
        config=EmbeddingModelConfig,
        deployment="deployments.embedding.deployment:EmbeddingDeployment",
        capabilities=frozenset({"embeddings"}),
        usage="tokens",
        model_type="embedding",
        noun="an embedding model",
        backend_body=lambda body, model: body.to_backend(),
        replica_env=cpu_threads_env,  # vLLM's CPU worker reads OMP_NUM_THREADS
        bind_extra=lambda model, resolve: (model.dimensions,),
    )
)
