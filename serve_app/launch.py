"""``make serve``: start a local Ray whose metrics Prometheus can scrape at a fixed port, then
``serve run`` a config's plan in it (``serve_app/plan.py``; Ctrl-C or SIGTERM stops both).

``serve run`` alone starts Ray with a random metrics port; Ray only takes a fixed one when it
starts. Every metric of the app (``ray_openai_api_*``), of Serve (``ray_serve_*``) and of
vLLM's engines (``ray_vllm_*``) is then at ``http://127.0.0.1:<metrics-port>/metrics``.
"""

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

import yaml

# Every Ray process of the app inherits these (set before Ray starts; on a cluster, set them on
# every node: cluster/): HTTP through HAProxy straight to the ingress replicas, with a 128 KiB
# header buffer, run as ``serve_app.haproxy`` adjusts it (its pages on loopback, OpenAI error
# envelopes); Ray's token authentication; and less work while idle: Serve's control loop at
# 2 Hz instead of 10, Serve's cached metrics flushed every 5 s instead of 0.1 s (Ray exports
# them every 10 s anyway), and Ray's log monitor looking for new log files every 5 s instead
# of every 0.1 s (bench/idle.py: 0.37 -> 0.25 cores); and a replica's code and its handles'
# router on the replica's own event loop, not on two threads of their own, so a streamed chunk
# does not cross threads on its way out (as Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED sets them). Why,
# and what it measured: the README's Configuration and Security sections.
RAY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": "131072",
    "RAY_AUTH_MODE": "token",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "5000",
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    "LOG_NAME_UPDATE_INTERVAL_S": "5",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}
HAPROXY_SCRIPT = "serve-app-haproxy"  # the console script of serve_app.haproxy (pyproject)
# `make serve` alone: a one-node Ray whose node address is 127.0.0.1 (Ray's switch for it is
# named after the platforms where it is the default), so that Ray's servers that bind to the
# node address (its metrics export, agents, dashboard) listen on loopback only. A multi-node
# cluster is started otherwise (cluster/).
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def ray_env() -> dict[str, str]:
    """``RAY_ENV`` and where Ray finds our HAProxy: the console script pip installed next to
    this Python (a cluster sets the path its nodes have: cluster/)."""
    script = Path(sys.executable).with_name(HAPROXY_SCRIPT)
    return {**RAY_ENV, "RAY_SERVE_HAPROXY_BINARY_PATH": str(script)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a Serve config file, e.g. serve_config.yaml")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("SERVE_APP_METRICS_PORT", "8080")),
        help="Prometheus scrape port of Ray's metrics agent (env SERVE_APP_METRICS_PORT)",
    )
    parser.add_argument(
        "--allow-unauthenticated-ray",
        action="store_true",
        help="start even if RAY_AUTH_MODE turns Ray's token authentication off (anyone who "
        "reaches Ray's ports could then run code on this machine)",
    )
    args = parser.parse_args(argv)
    env = {**ray_env(), **LOCAL_ENV}
    mode = os.environ.get("RAY_AUTH_MODE", env["RAY_AUTH_MODE"])
    if mode.lower() != "token" and not args.allow_unauthenticated_ray:
        parser.exit(
            2,
            f"RAY_AUTH_MODE={mode} turns Ray's token authentication off: anyone who reaches "
            "Ray's ports could run code here. Unset it, or pass --allow-unauthenticated-ray "
            "(make serve LAUNCH_FLAGS=--allow-unauthenticated-ray).\n",
        )
    for name, value in env.items():
        os.environ.setdefault(name, value)
    # Imported only now: Ray reads RAY_AUTH_MODE once, when it is imported.
    import ray  # noqa: PLC0415
    from ray.serve.scripts import cli  # noqa: PLC0415

    from serve_app.plan import local_node, plan  # noqa: PLC0415  (imports Ray)

    # The plan first: a config that can starve a deployment is refused before Ray starts.
    config = yaml.safe_load(Path(args.config).read_text())
    notes: list[str] = []
    try:
        planned_config = plan(config, notes)
    except ValueError as exc:
        parser.exit(2, f"{args.config}: {exc}\n")
    for note in notes:
        print(f"==> warning: {note}", file=sys.stderr, flush=True)
    # Ray's node is the one the config's `cluster` states (the one the plan checked); without
    # one, Ray counts this machine's cores.
    ray.init(
        address="local",
        namespace="serve",
        _metrics_export_port=args.metrics_port,
        **(local_node(config) or {}),
    )
    # SIGTERM (a process manager, `kill`) stops like Ctrl-C: serve run shuts the app down.
    # Set after ray.init, which installs a handler of its own.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"==> metrics: http://127.0.0.1:{args.metrics_port}/metrics", flush=True)
    # One application per model deployment (serve_app/plan.py), so that `serve deploy` of a
    # changed plan restarts only what changed.
    with tempfile.TemporaryDirectory(prefix="serve-app-") as tmp:
        planned = Path(tmp) / "plan.yaml"
        planned.write_text(yaml.safe_dump(planned_config))
        try:
            cli.main(args=["run", str(planned)], prog_name="serve", standalone_mode=False)
        except KeyboardInterrupt:
            pass
        finally:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
