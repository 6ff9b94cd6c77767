"""The Serve ingress: builds the FastAPI app (from a factory) around the model registry.

Imports no ML stack: it parses, authenticates, routes and frames; the model deployments
behind the DeploymentHandles do the work.
"""

import logging
from typing import Any

from fastapi import Depends, FastAPI
from ray import serve

from serve_app.auth import KeyChecker
from serve_app.config import AppConfig
from serve_app.errors import install_error_handlers
from serve_app.registry import ModelRegistry
from serve_app.routes import audio, generation, health, models
from serve_app.settings import Settings


def create_app(registry: ModelRegistry, settings: Settings) -> FastAPI:
    """The FastAPI app: health open, everything under /v1 behind the key check."""
    app = FastAPI(
        title="ray-openai-serve",
        summary="OpenAI-compatible chat, completions and speech on Ray Serve.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.registry = registry
    app.state.settings = settings
    install_error_handlers(app)
    protected = [Depends(KeyChecker(settings.api_keys))]
    app.include_router(health.router)
    app.include_router(models.router, dependencies=protected)
    app.include_router(generation.router, dependencies=protected)
    app.include_router(audio.router, dependencies=protected)
    return app


@serve.ingress()
class Ingress:
    """HTTP edge of the graph.

    ``handles`` maps each model id to its deployment's handle; ``preprocessor`` is the audio
    pool's handle (None without speech models).
    """

    def __init__(
        self, config: dict[str, Any], handles: dict[str, Any], preprocessor: Any, created: int
    ) -> None:
        self.settings = Settings()
        logging.getLogger("serve_app").setLevel(self.settings.log_level.upper())
        self.registry = ModelRegistry(
            AppConfig.model_validate(config), handles, created, preprocessor
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.registry, self.settings)
