"""The ``upstream`` family: models served by a remote OpenAI-compatible API.

Models that share a ``provider`` (by default: the host and port of ``base_url``) share one
Serve deployment, ``upstream-<provider>``, with a pooled async HTTP client. The request is
checked as strictly as for local models, then sent on as the client wrote it, with ``model``
replaced by ``upstream_model``. The API key is read from the environment variable
``api_key_env`` names, inside the replica; it is never in the config, logs or errors.
"""

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field
from ray import serve
from ray.serve import Application

from serve_app.families.base import Family, register
from serve_app.options import DeploymentOptions, ModelBase

PROVIDER_FIELDS = ("base_url", "api_key_env", "headers", "max_concurrency", "deployment")


class UpstreamModelConfig(ModelBase):
    """One model of a remote OpenAI-compatible provider."""

    family: Literal["upstream"]
    base_url: str = Field(
        pattern=r"^https?://", description="The provider's API root, e.g. https://api.x.ai/v1."
    )
    provider: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,48}$",
        description="Groups models into one deployment (default: base_url's host and port).",
    )
    upstream_model: str | None = Field(None, description="Model id at the provider (default: id).")
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the provider's API key (sent as Bearer).",
    )
    capabilities: list[Literal["chat", "completions", "embeddings"]] = Field(
        default_factory=lambda: ["chat", "completions"],
        min_length=1,
        description="What the provider serves this model for: chat, completions, embeddings.",
    )
    dimensions: int | None = Field(
        None, ge=1, description="`dimensions` in /v1/models (embedding models)."
    )
    context_length: int | None = Field(None, ge=1, description="`context_length` in /v1/models.")
    timeout_s: float = Field(60, gt=0, description="No first byte within this: 504.")
    max_concurrency: int = Field(64, ge=1, description="Open requests per replica to the provider.")
    max_retries: int = Field(
        2, ge=0, le=10, description="Retries of connection errors and 429/503, before any byte."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(
            num_cpus=0, max_ongoing_requests=256, max_queued_requests=512
        ),
        description="Placement and scaling of the provider's deployment (I/O only: no CPU "
        "reserved, never a GPU).",
    )

    @property
    def model_type(self) -> str:
        """`type` in /v1/models: ``embedding`` for a model served only for embeddings."""
        return "embedding" if set(self.capabilities) == {"embeddings"} else "llm"

    @property
    def provider_name(self) -> str:
        if self.provider:
            return self.provider
        parts = urlsplit(self.base_url)
        return re.sub(r"[^A-Za-z0-9-]+", "-", parts.netloc).strip("-") or "upstream"

    def upstream(self) -> dict[str, Any]:
        """What the provider's deployment needs to know of this model."""
        return {
            "upstream_model": self.upstream_model or self.id,
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
        }


def group(models: list[UpstreamModelConfig]) -> dict[str, list[UpstreamModelConfig]]:
    """One deployment per provider, serving all of that provider's models."""
    providers: dict[str, list[UpstreamModelConfig]] = {}
    for model in models:
        providers.setdefault(model.provider_name, []).append(model)
    for name, members in providers.items():
        first = members[0]
        for model in members[1:]:
            differing = [f for f in PROVIDER_FIELDS if getattr(model, f) != getattr(first, f)]
            if differing:
                raise ValueError(
                    f"upstream models {first.id!r} and {model.id!r} share provider {name!r} "
                    f"but differ in {differing}; give them different `provider` names"
                )
    return {f"upstream-{name}": members for name, members in providers.items()}


def bind(name: str, models: list[UpstreamModelConfig], family: Family) -> Application:
    first = models[0]
    settings = {
        "base_url": first.base_url.rstrip("/"),
        "api_key_env": first.api_key_env,
        "headers": first.headers,
        "max_concurrency": first.max_concurrency,
    }
    return (
        serve.deployment(family.deployment_class())
        .options(**first.deployment.to_serve_options(name))
        .bind(first.provider_name, settings, {m.id: m.upstream() for m in models})
    )


def backend_body(body: Any, model: UpstreamModelConfig) -> dict[str, Any]:
    """The request as the client wrote it (our id in ``model``: the deployment maps it)."""
    return body.model_dump(exclude_unset=True, by_alias=True)


FAMILY = register(
    Family(
        name="upstream",
        config=UpstreamModelConfig,
        deployment="deployments.upstream.deployment:UpstreamDeployment",
        capabilities=frozenset({"chat", "completions", "embeddings"}),  # per model: capabilities
        usage="tokens",
        model_type="llm",
        noun="a remote model",
        local_weights=False,
        meters_aborts=True,
        backend_body=backend_body,
        group=group,
        bind=bind,
    )
)
