"""Composition root: ``build_app(args)`` is the only place that binds deployments.

``serve run serve_config.yaml`` calls it with the config's ``args``; Serve validates them
against ``AppConfig`` first, so a bad config fails the deploy with pydantic's message.
"""

from ray import serve
from ray.serve import Application

from deployments.audio.deployment import AudioPreprocessor
from serve_app.config import AppConfig
from serve_app.families import FAMILIES
from serve_app.ingress import Ingress
from serve_app.models import default_models_dir
from serve_app.ratelimit import RateLimiter


def build_app(args: AppConfig) -> Application:
    """Bind each family's deployments for its configured models, the audio pool, the rate
    limiter, and the ingress in front of them."""
    handles = {}
    for name, family in FAMILIES.items():
        models = [m for m in args.models if m.family == name]
        if models:
            handles.update(
                family.bind_models(
                    models, lambda source: args.resolve_source(source, default_models_dir())
                )
            )
    preprocessor = None
    if args.models_that("transcriptions"):
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
    # Only what the config says goes into the bind: the same config binds the same arguments,
    # so Serve's redeploy of it replaces no replica.
    return ingress.bind(config, handles, preprocessor, limiter)
