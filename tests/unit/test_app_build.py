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


def test_embedding_replicas_are_placed_and_scaled_as_llm_replicas(tmp_path):
    """Fractional GPUs, custom resources and autoscaling reach an embedding deployment as
    they reach an LLM's (the same DeploymentOptions), with its model's engine arguments."""
    placement = {
        "num_cpus": 0.5,
        "num_gpus": 0.25,
        "resources": {"llm_node": 0.25},
        "max_ongoing_requests": 16,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 3},
    }
    models = []
    for family, extra in (("llm", {}), ("embedding", {"dimensions": 384})):
        (tmp_path / family).mkdir()
        models.append(
            {
                "id": family,
                "family": family,
                "source": str(tmp_path / family),
                "deployment": placement,
                **extra,
            }  # fmt: skip
        )
    config = AppConfig.model_validate({"models": models})
    handles = build_app(config)._bound_deployment.init_args[1]
    llm, embedding = (handles[m]._bound_deployment for m in ("llm", "embedding"))
    assert embedding.name == "embedding-embedding"
    assert embedding.ray_actor_options == llm.ray_actor_options
    assert embedding.ray_actor_options["num_gpus"] == 0.25
    assert embedding.ray_actor_options["resources"] == {"llm_node": 0.25}
    assert embedding._deployment_config.autoscaling_config.max_replicas == 3
    assert embedding._deployment_config.max_ongoing_requests == 16
    model_id, source, engine, dimensions = embedding.init_args
    assert (model_id, source, dimensions) == ("embedding", str(tmp_path / "embedding"), 384)
