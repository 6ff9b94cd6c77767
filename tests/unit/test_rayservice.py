"""cluster/rayservice.yaml against KubeRay's RayService CRD schema (cluster/schema/), and its
serve config against the one the cluster tests deploy."""

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from serve_app.config import AppConfig
from serve_app.plan import plan

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
SCHEMA = json.loads((CLUSTER / "schema" / "rayservice-v1.schema.json").read_text())


def manifest() -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / "rayservice.yaml").read_text())


def problems(document: dict[str, Any]) -> list[str]:
    """Schema errors, plus fields the schema does not know (Kubernetes would silently drop
    them, or refuse them under `kubectl apply --validate=strict`)."""
    found = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(document)
    ]
    found += unknown_fields(document, SCHEMA, "")
    return found


def unknown_fields(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        known = schema.get("properties")
        extra = schema.get("additionalProperties")
        found = []
        for key, item in value.items():
            if known is not None and key in known:
                found += unknown_fields(item, known[key], f"{path}/{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(item, extra, f"{path}/{key}")
            elif known is not None:
                found.append(f"{path}/{key}: unknown field")
        return found
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [p for i, v in enumerate(value) for p in unknown_fields(v, schema["items"], path)]
    return []


def test_rayservice_matches_the_crd_schema():
    assert problems(manifest()) == []


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda m: m["spec"].update(serveConfig="x"), "spec/serveConfig: unknown field"),
        (
            lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(replicas="1"),
            "is not of type 'integer'",
        ),
        (lambda m: m["spec"]["rayClusterConfig"].pop("headGroupSpec"), "headGroupSpec"),
    ],
)
def test_the_schema_check_catches_a_broken_manifest(mutate, needle):
    broken = manifest()
    mutate(broken)
    assert any(needle in p for p in problems(broken)), problems(broken)


def test_rayservice_serves_the_cluster_tests_config_on_nodes_with_its_resources():
    spec = manifest()["spec"]
    serve_config = yaml.safe_load(spec["serveConfigV2"])
    local = yaml.safe_load((CLUSTER / "serve_config.local.yaml").read_text())
    assert serve_config["applications"] == plan(local)["applications"]
    (app,) = local["applications"]
    args = AppConfig.model_validate(app["args"])  # what Serve checks at deploy time
    cluster = spec["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    declared = set()
    for group in groups:
        # rayStartParams.resources is the quoted JSON `ray start --resources` takes.
        declared |= set(json.loads(json.loads(group["rayStartParams"]["resources"])))
    options = [args.ingress, args.rate_limiter, args.audio.deployment]
    options += [m.deployment for m in args.models]
    used = {name for o in options for name in o.resources}
    assert used == declared == {"head_node", "llm_node", "audio_node"}
    # The cluster the plan checks the config against is the one these groups start.
    stated = {
        (node.count, node.num_cpus, json.dumps(node.resources, sort_keys=True))
        for node in args.cluster.nodes
    }
    started = set()
    for group in groups:
        params = group["rayStartParams"]
        resources = {k: float(v) for k, v in json.loads(json.loads(params["resources"])).items()}
        started.add(
            (
                group.get("replicas", 1),
                float(params["num-cpus"]),
                json.dumps(resources, sort_keys=True),
            )
        )
    assert stated == started


def test_the_local_cluster_config_states_the_nodes_local_sh_starts():
    script = (CLUSTER / "local.sh").read_text()
    cpus = dict(re.findall(r"\[(\w+)\]=(\d+)", re.search(r"declare -A CPUS=\((.*)\)", script)[1]))
    resources = dict(
        re.findall(r"\[(\w+)\]='([^']*)'", re.search(r"declare -A RESOURCES=\((.*)\)", script)[1])
    )
    local = yaml.safe_load((CLUSTER / "serve_config.local.yaml").read_text())
    (app,) = local["applications"]
    nodes = AppConfig.model_validate(app["args"]).cluster.nodes
    assert {n.name: (n.count, n.num_cpus, n.resources) for n in nodes} == {
        kind: (1, float(cpus[kind]), {k: float(v) for k, v in json.loads(resources[kind]).items()})
        for kind in cpus
    }


def test_every_cluster_launcher_sets_the_ray_environment_make_serve_sets():
    """RAY_ENV (HAProxy in front of the ingress, Ray's token authentication) and our HAProxy
    script must reach every node's Ray processes."""
    from serve_app.launch import HAPROXY_SCRIPT, RAY_ENV

    def check(env: dict[str, str], where: str) -> None:
        assert RAY_ENV.items() <= env.items(), where
        assert HAPROXY_SCRIPT in env["RAY_SERVE_HAPROXY_BINARY_PATH"], where

    cluster = manifest()["spec"]["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token"
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        check({e["name"]: e.get("value") for e in container["env"]}, group.get("groupName", "head"))
    launcher = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    for command in launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]:
        if "ray start" in command:
            check(assignments(command.split("ray start")[0]), command)
    exports = [line for line in (CLUSTER / "local.sh").read_text().splitlines()]
    check(assignments(" ".join(x[7:] for x in exports if x.startswith("export "))), "local.sh")


def assignments(words: str) -> dict[str, str]:
    """``NAME=value`` pairs of a shell command line (a value may be a ``$(command)``)."""
    return dict(re.findall(r"(\w+)=(\$\([^)]*\)|\S+)", words))
