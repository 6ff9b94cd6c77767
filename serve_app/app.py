"""Composition root: the only place that binds deployments.

Two shapes of the same config (README, Deploying and redeploying):
- ``build_app``: everything in one Serve application (``serve run serve_config.yaml``). Serve
  versions every deployment of an application by its ``args``, so a redeploy of a changed
  config replaces every replica.
- the split that ``serve_app/plan.py`` makes of it, which ``make serve`` and the cluster run:
  ``build_front`` (ingress, audio pool, rate limiter, response store) in one application and
  ``build_models`` for each model deployment in its own, so a redeploy restarts only the
  model whose options changed. The ingress learns the models from its ``user_config``, which
  Serve hands to the running replicas without restarting them.

Serve validates ``args`` against the annotated config model first, so a bad config fails the
deploy with pydantic's message.
"""

from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve import Application

from deployments.audio.deployment import AudioPreprocessor
from serve_app.config import AppConfig, FrontConfig, FrontOptions, ModelGroupConfig, ModelsDir
from serve_app.families import FAMILIES
from serve_app.ingress import Ingress
from serve_app.models import default_models_dir
from serve_app.ratelimit import RateLimiter
from serve_app.store.deployment import ResponseStore


def build_app(args: AppConfig) -> Application:
    """Every deployment in one application: each family's deployments for its configured
    models, the audio pool, the rate limiter, and the ingress in front of them."""
    handles = {}
    for name, family in FAMILIES.items():
        models = [m for m in args.models if m.family == name]
        if models:
            handles.update(family.bind_models(models, _resolver(args)))
    models = [m.model_dump(mode="json", exclude_unset=True) for m in args.models]
    speech = bool(args.models_that("transcriptions"))
    return _front(args, speech, handles, {"models": models})


def build_front(args: FrontConfig) -> Application:
    """The front application of the split: the models (and the applications their
    deployments run in) come as the ingress's ``user_config``, from the config's
    ``deployments`` section that the plan writes."""
    return _front(args, args.speech, None, None)


def build_models(args: ModelGroupConfig) -> Application:
    """One model application of the split: the deployment serving ``args.models``."""
    family = FAMILIES[args.family]
    ((name, models),) = family.groups(args.models).items()
    return family.bind_group(name, models, _resolver(args))


def _resolver(args: ModelsDir) -> Callable[[str], str]:
    return lambda source: args.resolve_source(source, default_models_dir())


def _front(
    args: FrontOptions,
    speech: bool,
    handles: dict[str, Application] | None,
    user_config: dict[str, Any] | None,
) -> Application:
    preprocessor = None
    if speech:
        options = args.audio.deployment.to_serve_options("audio-preprocessor")
        preprocessor = (
            serve.deployment(AudioPreprocessor).options(**options).bind(args.audio.max_duration_s)
        )
    store = (
        serve.deployment(ResponseStore)
        .options(**args.store.deployment.to_serve_options("response-store"))
        .bind(args.store.model_dump(mode="json", exclude={"deployment"}))
    )
    limiter = (
        serve.deployment(RateLimiter)
        .options(**args.rate_limiter.to_serve_options("rate-limiter"))
        .bind(store)  # the usage ledger is in the store
    )
    options = args.ingress.to_serve_options("ingress")
    if user_config is not None:
        options["user_config"] = user_config
    ingress = serve.deployment(Ingress).options(**options)
    # Only what the config says goes into the bind: the same config binds the same arguments,
    # so Serve's redeploy of it replaces no replica.
    front = args.model_dump(mode="json", include=set(FrontOptions.model_fields))
    return ingress.bind(front, handles, preprocessor, limiter, store)
