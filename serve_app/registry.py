"""Model ids and aliases -> configured models and their DeploymentHandles."""

from dataclasses import dataclass
from typing import Any

from serve_app.config import AppConfig, LLMModelConfig
from serve_app.errors import APIError


@dataclass(frozen=True)
class ServedModel:
    config: LLMModelConfig
    handle: Any  # DeploymentHandle; Any keeps fakes usable in unit tests

    @property
    def id(self) -> str:
        return self.config.id

    def card(self, created: int) -> dict[str, Any]:
        """The OpenAI ``model`` object, plus ``type`` and ``context_length``."""
        return {
            "id": self.config.id,
            "object": "model",
            "created": created,
            "owned_by": self.config.owned_by,
            "type": self.config.type,
            "context_length": self.config.context_length,
        }


class ModelRegistry:
    def __init__(self, config: AppConfig, handles: dict[str, Any], created: int) -> None:
        self.created = created
        self.models = [ServedModel(m, handles[m.id]) for m in config.models]
        self._by_name: dict[str, ServedModel] = {}
        for model in self.models:
            for name in (model.id, *model.config.aliases):
                self._by_name[name] = model

    def get(self, name: str) -> ServedModel:
        """The model for an id or alias; 404 ``model_not_found`` otherwise."""
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

    def cards(self) -> list[dict[str, Any]]:
        return [model.card(self.created) for model in self.models]
