"""Typed ``args`` of the Serve application (the ``args:`` block of ``serve_config.yaml``).

Serve validates these at deploy time through ``build_app``'s type annotation, so a bad config
fails ``serve run``/``serve deploy`` with pydantic's message instead of a replica crash loop.
"""

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from serve_app.families import Capability, ModelConfig, capabilities_of, family_of
from serve_app.options import AutoscalingOptions, DeploymentOptions, StrictModel


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


class ModelsDir(StrictModel):
    models_dir: str | None = Field(
        None,
        description="Where relative `source` paths resolve "
        "(default: $SERVE_APP_MODELS_DIR, else ./models at the project root).",
    )

    def resolve_source(self, source: str, default_dir: Path) -> str:
        """Absolute path of a model's weights directory."""
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = Path(self.models_dir).expanduser() if self.models_dir else default_dir
            path = path / source
        return str(path.resolve())


class StoreOptions(StrictModel):
    """Where stored responses live (``/v1/responses``), how long, and how big."""

    backend: Literal["sqlite", "postgres"] = Field(
        "sqlite",
        description="sqlite: one file, owned by the store's single replica (one machine); "
        "postgres: a PostgreSQL server every store replica shares (clusters).",
    )
    path: str | None = Field(
        None,
        description="SQLite file (default: $SERVE_APP_DATA_DIR/responses.sqlite3, else "
        "./data/responses.sqlite3 at the project root).",
    )
    dsn_env: str = Field(
        "SERVE_APP_STORE_DSN",
        description="Environment variable holding the PostgreSQL connection string (the "
        "store replicas read it; it never goes into the config).",
    )
    retention_days: float = Field(
        30, gt=0, description="Stored responses are deleted this long after their creation."
    )
    usage_retention_days: float = Field(
        400,
        gt=0,
        description="The usage ledger (per-minute usage per key and model) keeps this long.",
    )
    max_input_items: int = Field(
        2048, ge=1, description="Input items one request may carry (400 above)."
    )
    max_response_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest input one stored response may carry, as JSON (400 above, before "
        "the model runs); its output is bounded by the model's context.",
    )
    max_chain: int = Field(
        1000, ge=1, description="Longest previous_response_id chain expanded (400 above)."
    )
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(
            num_cpus=0,
            max_ongoing_requests=1000,
            max_queued_requests=-1,
            autoscaling_config=AutoscalingOptions(min_replicas=1, max_replicas=1),
        ),
        description="The store's replicas (keep 1 with sqlite; any number with postgres).",
    )

    @model_validator(mode="after")
    def _one_sqlite_writer(self) -> "StoreOptions":
        if self.backend == "sqlite" and self.deployment.autoscaling_config.max_replicas != 1:
            raise ValueError("store: the sqlite backend needs exactly one store replica")
        return self


class FrontOptions(ModelsDir):
    """Everything but the models: the ingress, the audio pool, the rate limiter, limits."""

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
    store: StoreOptions = Field(
        default_factory=StoreOptions, description="Stored responses (Responses API)."
    )


class FrontConfig(FrontOptions):
    """``args`` of the front application of a split deployment (``serve_app/plan.py``); the
    models reach its ingress as the ingress's ``user_config``."""

    speech: bool = Field(
        False, description="Deploy the audio pool (the plan sets it when a model transcribes)."
    )


class ModelGroupConfig(ModelsDir):
    """``args`` of one model application of a split deployment: the models one deployment
    of ``family`` serves (one, or an upstream provider's)."""

    family: str
    models: list[ModelConfig] = Field(min_length=1)


class NodeKind(StrictModel):
    """One kind of Ray node, as ``ray start`` declares it (``--num-cpus``, ``--num-gpus``,
    ``--resources``), and how many of them the cluster has."""

    name: str = Field(description="What the kind is called (in the plan's messages).")
    count: int = Field(1, ge=1, description="Nodes of this kind.")
    num_cpus: float = Field(ge=0, description="Logical CPUs of each node (`--num-cpus`).")
    num_gpus: float = Field(0, ge=0, description="GPUs of each node (`--num-gpus`).")
    resources: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="Custom resources of each node (`--resources`)."
    )

    def capacity(self) -> dict[str, float]:
        """Resources of one node, named as Ray names them (``CPU``, ``GPU``, custom)."""
        return {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}


class ClusterOptions(StrictModel):
    """The Ray cluster a config is planned for: ``serve_app.plan`` checks that every
    deployment's ``min_replicas`` stays schedulable while every other is at ``max_replicas``."""

    nodes: list[NodeKind] = Field(
        default_factory=list, description="The cluster's nodes, by kind (a fixed-size cluster)."
    )
    autoscaling: bool = Field(
        False,
        description="The cluster adds nodes on demand (Ray's autoscaler, KubeRay): its size is "
        "not known, so the plan cannot check it.",
    )

    @model_validator(mode="after")
    def _nodes_or_autoscaling(self) -> "ClusterOptions":
        if bool(self.nodes) == self.autoscaling:
            raise ValueError("cluster: give either its `nodes` or `autoscaling: true`")
        return self


class AppConfig(FrontOptions):
    """The whole application: the models and the ingress deployment."""

    models: list[ModelConfig] = Field(min_length=1, description="Models to serve.")
    cluster: ClusterOptions | None = Field(
        None,
        description="The Ray cluster this config is for (`make serve` starts its one node); "
        "unset, the plan cannot check that a crashed deployment can come back.",
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
        stt = {m.id for m in self.models_that("transcriptions")}
        default = self.audio.default_model
        if default is not None and seen.get(default) not in stt:
            raise ValueError(f"audio.default_model {default!r} is not a configured STT model")
        for model in self.models:
            audio_model = getattr(model, "audio_model", None)
            if audio_model is not None and seen.get(audio_model) not in stt:
                raise ValueError(
                    f"model {model.id!r}: audio_model {audio_model!r} is not an STT model"
                )
        return self

    def deployment_groups(self) -> dict[str, list[Any]]:
        """Model deployment name -> the models it serves, family by family, as each family
        groups its models (one deployment per model, or per upstream provider)."""
        families: dict[str, list[Any]] = {}
        for model in self.models:
            families.setdefault(model.family, []).append(model)
        return {
            name: group
            for models in families.values()
            for name, group in family_of(models[0]).groups(models).items()
        }

    def models_that(self, capability: Capability) -> list[Any]:
        """Configured models that serve ``capability`` (``capabilities_of``), in config order."""
        return [m for m in self.models if capability in capabilities_of(m)]
