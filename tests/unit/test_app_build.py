"""``build_app``: the same config binds the same arguments, whatever the time, so that Serve
redeploys nothing when the same config is deployed again."""

import itertools
import time
from pathlib import Path
from typing import Any

import yaml
from ray.serve import Application

from serve_app.app import build_app
from serve_app.config import AppConfig

ROOT = Path(__file__).resolve().parents[2]


def bound(value: Any) -> Any:
    """The arguments of ``value`` and every deployment it binds, as plain data."""
    if isinstance(value, Application):
        deployment = value._bound_deployment
        return {
            "deployment": deployment.name,
            "args": bound(list(deployment.init_args)),
            "kwargs": bound(dict(deployment.init_kwargs)),
        }
    if isinstance(value, dict):
        return {k: bound(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bound(v) for v in value]
    return value


def test_the_same_config_binds_the_same_arguments(monkeypatch):
    clock = itertools.count(1_800_000_000, 1000)  # every call: 1000 s later
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))
    for config in ("serve_config.yaml", "examples/loopback-gateway.yaml"):
        args = yaml.safe_load((ROOT / config).read_text())["applications"][0]["args"]
        first = bound(build_app(AppConfig.model_validate(args)))
        again = bound(build_app(AppConfig.model_validate(args)))
        assert first == again, config
        assert first["deployment"] == "ingress"


def test_whisper_and_embedding_replicas_start_with_openmp_at_cpu_threads():
    """Unset, Ray starts them with OMP_NUM_THREADS=1 (num_cpus 0.25), and CTranslate2 then
    transcribes otherwise than faster-whisper run by hand with the same ``cpu_threads``; the
    embedding engine would compute on one thread of two."""
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    config = AppConfig.model_validate(args)
    handles = build_app(config)._bound_deployment.init_args[1]
    for model in config.models:
        actor = handles[model.id]._bound_deployment.ray_actor_options
        env = actor.get("runtime_env", {}).get("env_vars", {})
        if model.family in ("whisper", "embedding"):
            assert env == {"OMP_NUM_THREADS": str(model.engine.cpu_threads)}, model.id
        else:
            assert "OMP_NUM_THREADS" not in env, model.id
    assert {m.family for m in config.models} >= {"whisper", "llm", "embedding"}
