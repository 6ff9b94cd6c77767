"""The Serve ingress: builds the FastAPI app (from a factory) around the model registry.

Imports no ML stack: it parses, authenticates, routes and frames; the model deployments
behind the DeploymentHandles do the work.
"""

import functools
import logging
import time
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from ray import serve

from serve_app import docs
from serve_app.admission import RateLimits
from serve_app.auth import KeyStore, load_keys
from serve_app.config import AppConfig, FrontOptions
from serve_app.errors import install_error_handlers
from serve_app.limits import BodyLimit
from serve_app.log import LOGGER
from serve_app.metrics import Metrics
from serve_app.models import default_models_dir
from serve_app.pipeline import Recorder
from serve_app.registry import ModelRegistry
from serve_app.routes import (
    audio,
    conversations,
    embeddings,
    generation,
    health,
    models,
    responses,
    usage,
)
from serve_app.settings import Settings
from serve_app.store import HandleStore


def create_app(
    registry: ModelRegistry | None,
    settings: Settings,
    keys: KeyStore,
    rate_limits: RateLimits,
    metrics: Metrics | None = None,
    front: FrontOptions | None = None,
    store: Any = None,
) -> FastAPI:
    """The FastAPI app: /health, /docs, /openapi.json and /playground open, every /v1 route
    behind its key scope. Its limits and CORS come from ``front`` (default: the registry's
    config); ``app.state.registry`` may be set later (``Ingress.reconfigure``). ``store`` holds
    stored responses (``serve_app/store``)."""
    front = front or registry.config
    app = FastAPIOffline(
        title="ray-openai-serve",
        summary="OpenAI-compatible chat, completions and speech on Ray Serve.",
        redoc_url=None,
        favicon_url="data:,",
    )
    app.state.registry = registry
    app.state.settings = settings
    app.state.keys = keys
    app.state.rate_limits = rate_limits
    app.state.store = store
    app.state.background = set()  # tasks of background responses this replica runs
    # Told about every /v1 request (pipeline.Recorder).
    app.state.observers = [rate_limits, metrics or Metrics()]
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=front.limits.max_body_bytes)
    if front.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=front.cors_allow_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After"],
        )
    for module in (
        health,
        models,
        generation,
        embeddings,
        responses,
        conversations,
        audio,
        usage,
        docs,
    ):
        app.include_router(module.router)
    docs.install_openapi(app)
    paths = [(r.path_regex, r.path) for r in app.routes if hasattr(r, "path_regex")]
    app.add_middleware(Recorder, observers=app.state.observers, routes=paths)  # outermost
    return app


@serve.ingress()
class Ingress:
    """HTTP edge of the graph.

    ``config`` is everything but the models; the models come with ``reconfigure`` (the
    deployment's ``user_config``), which Serve also calls on running replicas when only the
    models changed, so they are swapped in without a restart. ``handles`` maps each model id
    to its deployment's handle when the models are bound in this application (``build_app``);
    otherwise ``user_config["deployments"]`` names each model's deployment, which runs in the
    application of the same name (``serve_app/plan.py``).
    ``preprocessor`` is the audio pool's handle (None without speech models);
    ``rate_limiter`` holds the shared per-key counters; ``store`` is the response store's
    handle. ``/v1/models`` reports the replica's start as the models' ``created`` time (a
    bind argument would change with every build, and Serve would replace every replica on a
    redeploy of the same config).
    """

    def __init__(
        self,
        config: dict[str, Any],
        handles: dict[str, Any] | None,
        preprocessor: Any,
        rate_limiter: Any,
        store: Any,
    ) -> None:
        self.settings = Settings()
        logging.getLogger(LOGGER).setLevel(self.settings.log_level.upper())
        self.front = FrontOptions.model_validate(config)
        self.handles = handles
        self.named: dict[str, Any] = {}  # handles by deployment (and application) name
        self.preprocessor = preprocessor
        self.created = int(time.time())
        self.keys = KeyStore(load_keys(self.settings.api_keys, self.settings.keys_file))
        # Over Serve's gRPC data plane, as the model calls (serve_app/routes/generation.py).
        self.rate_limits = RateLimits(rate_limiter.options(_by_reference=False))
        self.store = HandleStore(store)
        self.metrics = Metrics()
        self.fastapi: FastAPI | None = None
        self.registry: ModelRegistry | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve the models of ``user_config`` from the next request on (requests in flight
        keep the model they were given)."""
        config = AppConfig.model_validate(
            {**self.front.model_dump(mode="json"), "models": user_config["models"]}
        )
        handles = self.handles
        if handles is None:
            handles = {}
            for model_id, deployment in user_config["deployments"].items():
                if deployment not in self.named:
                    # The plan names each model application after its one deployment.
                    handle = serve.get_deployment_handle(deployment, app_name=deployment)
                    self.named[deployment] = handle
                handles[model_id] = self.named[deployment]
        resolve = functools.partial(config.resolve_source, default_dir=default_models_dir())
        self.registry = ModelRegistry(config, handles, self.created, self.preprocessor, resolve)
        if self.fastapi is not None:
            self.fastapi.state.registry = self.registry

    def __serve_build_asgi_app__(self) -> FastAPI:
        self.fastapi = create_app(
            self.registry,
            self.settings,
            self.keys,
            self.rate_limits,
            self.metrics,
            self.front,
            self.store,
        )
        return self.fastapi
