"""Split a config into one Serve application per model deployment plus the front, so that a
redeploy restarts only what changed: ``python -m serve_app.plan serve_config.yaml``.

Serve versions every deployment of an application by the application's ``args``: one
application holding every model (``serve_app.app:build_app``) replaces every replica when any
option of any model changes. The plan turns each application of a config that uses
``build_app`` into
- the front application (same name and route): ``build_front`` with the args minus
  ``models``; the models, and which application serves each, go to the ingress as its
  ``user_config`` in the ``deployments`` section, which Serve hands to running replicas
  without restarting them (``Ingress.reconfigure``);
- one application per model deployment, named as the deployment (``llm-<id>``,
  ``whisper-<id>``, ``upstream-<provider>``), without a route: ``build_models`` with that
  deployment's models as written.

The config is validated whole first (the same checks ``build_app`` makes), then checked
against the cluster its ``cluster`` section states: a config whose scaled-up replicas could
leave a crashed deployment nowhere to start is refused (``serve_app/capacity.py``; the
section itself goes to no application). Everything else
in the config is kept as it is. ``make serve`` and ``cluster/local.sh`` deploy the plan;
``serve deploy`` of the plan's output does the same on any cluster.
"""

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from serve_app import capacity
from serve_app.config import AppConfig, ClusterOptions

BUILD_APP = "serve_app.app:build_app"


def plan(serve_config: dict[str, Any], notes: list[str] | None = None) -> dict[str, Any]:
    """The split of ``serve_config`` (a Serve config as a dict). ``ValueError`` if it is
    invalid, or can leave a crashed deployment unschedulable on the cluster it states
    (``serve_app/capacity.py``); why that could not be checked is appended to ``notes``."""
    applications = []
    for app in serve_config.get("applications", []):
        if app.get("import_path") != BUILD_APP:
            applications.append(app)
            continue
        applications.extend(_split(app, notes if notes is not None else []))
    names = [app["name"] for app in applications]
    if clash := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"two applications would be named {clash}: rename the application")
    return {**serve_config, "applications": applications}


def _split(app: dict[str, Any], notes: list[str]) -> list[dict[str, Any]]:
    args = app.get("args") or {}
    config = AppConfig.model_validate(args)
    written = {model["id"]: model for model in args["models"]}
    overrides = {d["name"]: d for d in app.get("deployments", [])}
    if note := capacity.check(config, overrides):
        notes.append(f"application {app.get('name')!r}: {note}")
    shared = {k: app[k] for k in ("runtime_env",) if k in app}
    model_apps, served_by = [], {}
    for name, group in config.deployment_groups().items():
        models_written = [copy.deepcopy(written[m.id]) for m in group]
        model_args = {"family": group[0].family, "models": models_written}
        if config.models_dir is not None:
            model_args["models_dir"] = config.models_dir
        model_app = {
            "name": name,
            "route_prefix": None,
            "import_path": "serve_app.app:build_models",
            "args": model_args,
            **shared,
        }
        if name in overrides:
            model_app["deployments"] = [overrides.pop(name)]
        model_apps.append(model_app)
        served_by.update({m.id: name for m in group})
    ingress = dict(overrides.pop("ingress", {"name": "ingress"}))
    ingress["user_config"] = {"models": list(written.values()), "deployments": served_by}
    front_args = {k: v for k, v in args.items() if k not in ("models", "cluster")}
    front_args["speech"] = bool(config.models_that("transcriptions"))
    front = {
        **app,
        "import_path": "serve_app.app:build_front",
        "args": front_args,
        "deployments": [*overrides.values(), ingress],
    }
    return [front, *model_apps]


def local_node(serve_config: dict[str, Any]) -> dict[str, Any] | None:
    """``ray.init`` arguments for a Serve config whose ``build_app`` application states a
    one-node cluster (``make serve``), so that the Ray it starts is the cluster the plan
    checked; None otherwise."""
    for app in serve_config.get("applications", []):
        cluster = (app.get("args") or {}).get("cluster")
        if app.get("import_path") == BUILD_APP and cluster is not None:
            nodes = ClusterOptions.model_validate(cluster).nodes
            if [node.count for node in nodes] == [1]:
                (node,) = nodes
                return {
                    "num_cpus": node.num_cpus,
                    "num_gpus": node.num_gpus,
                    "resources": node.resources,
                }
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="a Serve config file, e.g. serve_config.yaml")
    args = parser.parse_args(argv)
    notes: list[str] = []
    try:
        split = plan(yaml.safe_load(args.config.read_text()), notes)
    except ValueError as exc:
        parser.exit(2, f"{args.config}: {exc}\n")
    for note in notes:
        print(f"warning: {args.config}: {note}", file=sys.stderr)
    yaml.safe_dump(split, sys.stdout, sort_keys=False, width=100)


if __name__ == "__main__":
    main()
