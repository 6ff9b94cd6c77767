"""Model ids and aliases -> configured models, their families and their DeploymentHandles."""

from dataclasses import dataclass
from typing import Any

from serve_app.config import AppConfig
from serve_app.errors import APIError
from serve_app.families import Capability, Family, capabilities_of, family_of


@dataclass(frozen=True)
class ServedModel:
    config: Any  # the family's config model
    handle: Any  # DeploymentHandle; Any keeps fakes usable in unit tests

    @property
    def id(self) -> str:
        return self.config.id

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
            "id": self.config.id,
            "object": "model",
            "created": created,
            "owned_by": self.config.owned_by,
            "type": self.type,
            "context_length": self.config.context_length,
        }
        if self.type == "embedding":
            card["dimensions"] = getattr(self.config, "dimensions", None)
        return card


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
