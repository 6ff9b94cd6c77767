"""Configuration pieces every model family shares: deployment placement and scaling, and
the fields every served model has."""

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    resources: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica, e.g. {llm_node: 0.5}: replicas go only "
        "to nodes that declare them (`ray start --resources`); fractions share a node's unit.",
    )
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
        if self.resources:
            ray_actor_options["resources"] = dict(self.resources)
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


class ModelBase(StrictModel):
    """What every served model has, whatever its family."""

    id: Annotated[str, Field(pattern=MODEL_ID_PATTERN)] = Field(
        description="Model id clients send in `model`."
    )
    aliases: list[Annotated[str, Field(pattern=MODEL_ID_PATTERN)]] = Field(
        default_factory=list, description="Other ids that resolve to this model."
    )
    owned_by: str = Field("ray-openai-serve", description="`owned_by` in /v1/models.")


class LocalModelBase(ModelBase):
    """A model whose weights are on disk, served by engines in our replicas."""

    source: str = Field(
        description="Weights directory; relative paths resolve against the models dir."
    )


def deployment_name(model_id: str, family: str) -> str:
    """Readable, Serve-safe deployment name derived from a model id (shown in the dashboard)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", model_id).strip("-")
    return f"{family}-{slug}"
