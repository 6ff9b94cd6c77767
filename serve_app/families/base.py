"""What a model family declares, in one place: its config model, its deployment, what it can
serve, which usage budget it spends, and how its deployments are bound.

Routes ask the registry for a model that can do a thing (``chat``, ``completions``,
``transcriptions``, ``translations``) and never name a family. A new family is one module
that calls ``register`` plus one import in ``serve_app/families/__init__.py``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Literal

from ray import serve
from ray.serve import Application

from serve_app.options import ModelBase, deployment_name

Capability = Literal["chat", "completions", "transcriptions", "translations"]
UsageKind = Literal["tokens", "audio"]


@dataclass(frozen=True)
class Family:
    """One model family.

    ``deployment`` is ``"module:Class"`` of its Serve deployment class, imported only when the
    application is built. ``bind`` makes one deployment per configured model (each called with
    ``(model_id, source, engine_options)``) unless the family groups models differently.
    ``check`` refuses requests the model is not configured for; ``backend_body`` turns a
    validated request into what its deployment runs. ``replica_env`` gives environment
    variables a model's replica processes start with (e.g. thread counts their native
    libraries read once, at load).
    """

    name: str
    config: type[ModelBase]
    deployment: str
    capabilities: frozenset[Capability]
    usage: UsageKind
    model_type: str  # `type` in /v1/models
    noun: str  # "a language model", for errors
    local_weights: bool = True
    transcribes_audio_parts: bool = False
    check: Callable[[Any, Any], None] = lambda body, model: None
    backend_body: Callable[[Any, Any], dict[str, Any]] | None = None
    bind: Callable[[list[Any], Any], dict[str, Application]] | None = None
    replica_env: Callable[[Any], dict[str, str]] = lambda model: {}

    def deployment_class(self) -> type:
        module, _, name = self.deployment.partition(":")
        return getattr(import_module(module), name)

    def bind_models(
        self, models: list[Any], resolve_source: Callable[[str], str]
    ) -> dict[str, Application]:
        """model id -> bound deployment, for this family's configured models."""
        if self.bind is not None:
            return self.bind(models, self)
        bound = {}
        for model in models:
            source = resolve_source(model.source) if self.local_weights else ""
            if self.local_weights and not Path(source).is_dir():
                raise ValueError(
                    f"model {model.id!r}: source {source} is not a directory; prepare the "
                    "models first (`make setup` or `python -m serve_app.models prepare`)"
                )
            options = model.deployment.to_serve_options(deployment_name(model.id, self.name))
            if env := self.replica_env(model):
                options["ray_actor_options"]["runtime_env"] = {"env_vars": env}
            deployment = serve.deployment(self.deployment_class()).options(**options)
            bound[model.id] = deployment.bind(model.id, source, model.engine.model_dump())
        return bound


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered twice")
    FAMILIES[family.name] = family
    return family


def family_of(model: Any) -> Family:
    return FAMILIES[model.family]
