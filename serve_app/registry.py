"""Model ids and aliases -> configured models, their families and their DeploymentHandles.

An LLM's LoRA adapters are models too (``base:adapter``, ``serve_app/adapters.py``): their
handle is the base's, routed by Serve's model multiplexing to a replica that holds the
adapter.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serve_app.adapters import AdapterSource, check_name, location, split_id
from serve_app.config import AppConfig
from serve_app.errors import APIError
from serve_app.families import Capability, Family, capabilities_of, family_of


@dataclass(frozen=True)
class ServedModel:
    config: Any  # the family's config model (an adapter's: its base's)
    handle: Any  # DeploymentHandle; Any keeps fakes usable in unit tests
    adapter: str | None = None  # a LoRA adapter of the model, by name

    @property
    def id(self) -> str:
        return f"{self.config.id}:{self.adapter}" if self.adapter else self.config.id

    @property
    def aliases(self) -> list[str]:
        """Other names a key's ``models`` may give it: an adapter's under its base's
        aliases, and ``base:*`` (every adapter of the base)."""
        if not self.adapter:
            return self.config.aliases
        bases = (self.config.id, *self.config.aliases)
        return [f"{base}:{self.adapter}" for base in bases[1:]] + [f"{b}:*" for b in bases]

    @property
    def family(self) -> Family:
        return family_of(self.config)

    @property
    def capabilities(self) -> frozenset[Capability]:
        return capabilities_of(self.config)

    @property
    def type(self) -> str:
        """``llm``, ``stt`` or ``embedding``: the family's, unless the model says."""
        return getattr(self.config, "model_type", self.family.model_type)

    def card(self, created: int) -> dict[str, Any]:
        """The OpenAI ``model`` object, plus ``type``, ``context_length`` and, for embedding
        models, ``dimensions``."""
        card = {
            "id": self.id,
            "object": "model",
            "created": created,
            "owned_by": self.config.owned_by,
            "type": self.type,
            "context_length": self.config.context_length,
        }
        if self.adapter:
            card["parent"] = self.config.id  # as vLLM lists its adapters
        if self.type == "embedding":
            card["dimensions"] = getattr(self.config, "dimensions", None)
        return card


class ModelRegistry:
    def __init__(
        self,
        config: AppConfig,
        handles: dict[str, Any],
        created: int,
        preprocessor: Any = None,
        resolve: Callable[[str], str] = str,
    ) -> None:
        """``resolve``: a relative adapter source -> its directory."""
        self.config = config
        self.created = created
        self.preprocessor = preprocessor
        self.models = [ServedModel(m, handles[m.id]) for m in config.models]
        self._by_name: dict[str, ServedModel] = {}
        self.adapters: dict[str, AdapterSource] = {}  # base id -> where its adapters are
        self._adapters: dict[str, ServedModel] = {}  # adapter id -> it, once asked for
        for model in self.models:
            for name in (model.id, *model.config.aliases):
                self._by_name[name] = model
            if lora := getattr(model.config, "lora", None):
                self.adapters[model.id] = AdapterSource(location(lora.source, resolve))
        stt = config.audio.default_model or next(
            (m.id for m in config.models_that("transcriptions")), None
        )
        self.default_stt = self._by_name[stt] if stt else None

    def get(self, name: str, capability: Capability, route: str) -> ServedModel:
        """The model for an id or alias, checked to serve ``capability`` (the route's).

        404 ``model_not_found`` for an unknown name; 400 for a model that cannot do it.
        """
        model = self.lookup(name)
        if capability not in model.capabilities:
            raise APIError(
                400,
                f"The model '{name}' is {model.family.noun} and cannot be used with {route}.",
                param="model",
                code="model_not_supported",
            )
        return model

    def listed(self) -> list[ServedModel]:
        """Every model, each LLM's adapters after it (``GET /v1/models``)."""
        listed = []
        for model in self.models:
            listed.append(model)
            if source := self.adapters.get(model.id):
                listed += [self._adapter(model, name) for name in sorted(source.names(True))]
        return listed

    def lookup(self, name: str) -> ServedModel:
        """The model for an id or alias, of any family; 404 ``model_not_found`` otherwise."""
        model = self._by_name.get(name)
        if model is None and (parts := split_id(name)):
            base, adapter = self._by_name.get(parts[0]), parts[1]
            source = self.adapters.get(base.id) if base is not None else None
            if source is not None:
                check_name(name, adapter)
                if source.has(adapter):
                    model = self._adapter(base, adapter)
        if model is None:
            shown = name if len(name) <= 100 else name[:100] + "..."
            raise APIError(
                404,
                f"The model '{shown}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return model

    def _adapter(self, base: ServedModel, adapter: str) -> ServedModel:
        served = self._adapters.get(f"{base.id}:{adapter}")
        if served is None:
            handle = base.handle.options(multiplexed_model_id=adapter)
            served = self._adapters[f"{base.id}:{adapter}"] = ServedModel(
                base.config, handle, adapter
            )
        return served
