"""Composition root: ``build_app(args)`` is the only place that binds deployments.

``serve run serve_config.yaml`` calls it with the config's ``args``; Serve validates them
against ``AppConfig`` first, so a bad config fails the deploy with pydantic's message.
"""

import time
from pathlib import Path

from ray import serve
from ray.serve import Application

from deployments.audio.deployment import AudioPreprocessor
from deployments.llm.deployment import LLMDeployment
from deployments.whisper.deployment import WhisperDeployment
from serve_app.config import AppConfig, deployment_name
from serve_app.ingress import Ingress
from serve_app.models import default_models_dir
from serve_app.ratelimit import RateLimiter

BACKENDS = {"llm": LLMDeployment, "whisper": WhisperDeployment}


def build_app(args: AppConfig) -> Application:
    """Bind one deployment per configured model, the audio pool, the rate limiter, and the
    ingress in front of them."""
    handles = {}
    for model in args.models:
        source = args.resolve_source(model.source, default_models_dir())
        if not Path(source).is_dir():
            raise ValueError(
                f"model {model.id!r}: source {source} is not a directory; "
                "prepare the models first (`make setup` or `python -m serve_app.models prepare`)"
            )
        options = model.deployment.to_serve_options(deployment_name(model.id, model.family))
        deployment = serve.deployment(BACKENDS[model.family]).options(**options)
        handles[model.id] = deployment.bind(model.id, source, model.engine.model_dump())
    preprocessor = None
    if args.stt_models:
        options = args.audio.deployment.to_serve_options("audio-preprocessor")
        preprocessor = (
            serve.deployment(AudioPreprocessor).options(**options).bind(args.audio.max_duration_s)
        )
    limiter = (
        serve.deployment(RateLimiter)
        .options(**args.rate_limiter.to_serve_options("rate-limiter"))
        .bind()
    )
    ingress = serve.deployment(Ingress).options(**args.ingress.to_serve_options("ingress"))
    config = args.model_dump(mode="json")
    return ingress.bind(config, handles, preprocessor, limiter, int(time.time()))
