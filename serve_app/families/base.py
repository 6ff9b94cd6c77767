"""What a model family declares, in one place: its config model, its deployment, what it can
serve, which usage budget it spends, and how its deployments are bound.

Routes ask the registry for a model that can do a thing (``chat``, ``completions``,
``embeddings``, ``transcriptions``, ``translations``) and never name a family; a model's
config may narrow its family's capabilities (``capabilities_of``: an upstream model serves
what its provider does). A new family is one module
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

Capability = Literal["chat", "completions", "embeddings", "transcriptions", "translations"]
UsageKind = Literal["tokens", "audio"]


@dataclass(frozen=True)
class Family:
    """One model family.

    ``deployment`` is ``"module:Class"`` of its Serve deployment class, imported only when the
    application is built. ``group`` says which models share a deployment, by its name (one
    deployment per model unless the family groups them: upstream models by provider);
    ``bind`` binds one group (default: one model, called with ``(model_id, source,
    engine_options, *bind_extra(model, resolve_source))``).
    ``check`` refuses requests the model is not configured for; ``backend_body`` turns a
    validated request into what its deployment runs. ``replica_env`` gives environment
    variables a model's replica processes start with (e.g. thread counts their native
    libraries read once, at load). ``channel``: its deployment's ``generate`` takes a
    ``caller`` and it has a ``channel`` method; its streams' chunks travel on per-step
    channels (``deployments/common/channel.py``). ``meters_aborts``: its ``generate`` takes
    an ``account`` and charges work cut short to it (``deployments/common/usage.py``).
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
    group: Callable[[list[Any]], dict[str, list[Any]]] | None = None
    bind: Callable[[str, list[Any], Any], Application] | None = None
    replica_env: Callable[[Any], dict[str, str]] = lambda model: {}
    bind_extra: Callable[[Any, Callable[[str], str]], tuple[Any, ...]] = lambda model, resolve: ()
    channel: bool = False
    meters_aborts: bool = False

    def deployment_class(self) -> type:
        module, _, name = self.deployment.partition(":")
        return getattr(import_module(module), name)

    def groups(self, models: list[Any]) -> dict[str, list[Any]]:
        """Deployment name -> the models that deployment serves."""
        if self.group is not None:
            return self.group(models)
        return {deployment_name(model.id, self.name): [model] for model in models}

    def bind_group(
        self, name: str, models: list[Any], resolve_source: Callable[[str], str]
    ) -> Application:
        """The deployment ``name`` serving ``models`` (one of ``groups``), bound."""
        if self.bind is not None:
            return self.bind(name, models, self)
        (model,) = models
        source = resolve_source(model.source) if self.local_weights else ""
        if self.local_weights and not Path(source).is_dir():
            raise ValueError(
                f"model {model.id!r}: source {source} is not a directory; prepare the "
                "models first (`make setup` or `python -m serve_app.models prepare`)"
            )
        options = model.deployment.to_serve_options(name)
        if env := self.replica_env(model):
            options["ray_actor_options"]["runtime_env"] = {"env_vars": env}
        deployment = serve.deployment(self.deployment_class()).options(**options)
        return deployment.bind(
            model.id, source, model.engine.model_dump(), *self.bind_extra(model, resolve_source)
        )

    def bind_models(
        self, models: list[Any], resolve_source: Callable[[str], str]
    ) -> dict[str, Application]:
        """model id -> bound deployment, for this family's configured models."""
        bound = {}
        for name, group in self.groups(models).items():
            app = self.bind_group(name, group, resolve_source)
            bound.update({model.id: app for model in group})
        return bound


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered twice")
    FAMILIES[family.name] = family
    return family


def cpu_threads_env(model: Any) -> dict[str, str]:
    """``OMP_NUM_THREADS`` from a model's ``engine.cpu_threads`` (0: Ray's, floor(num_cpus),
    at least 1): the thread count native engines read once, when they load."""
    threads = model.engine.cpu_threads
    return {"OMP_NUM_THREADS": str(threads)} if threads else {}


def family_of(model: Any) -> Family:
    return FAMILIES[model.family]


def capabilities_of(model: Any) -> frozenset[Capability]:
    """What a configured model serves: its own ``capabilities`` if its config has them,
    else its family's."""
    declared = getattr(model, "capabilities", None)
    return frozenset(declared) if declared is not None else family_of(model).capabilities
