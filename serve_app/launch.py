"""``make serve``: start a local Ray whose metrics Prometheus can scrape at a fixed port, then
``serve run`` a config in it (Ctrl-C or SIGTERM stops both).

``serve run`` alone starts Ray with a random metrics port; Ray only takes a fixed one when it
starts. Every metric of the app (``ray_openai_api_*``), of Serve (``ray_serve_*``) and of
vLLM's engines (``ray_vllm_*``) is then at ``http://127.0.0.1:<metrics-port>/metrics``.
"""

import argparse
import os
import signal
import sys

import ray
from ray.serve.scripts import cli

# Every Ray process of the app inherits these (set before Ray starts; on a cluster, set them on
# every node: cluster/): HTTP through HAProxy straight to the ingress replicas, with a 128 KiB
# header buffer. Why, and what it measured: the README's Configuration section.
RAY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": "131072"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a Serve config file, e.g. serve_config.yaml")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("SERVE_APP_METRICS_PORT", "8080")),
        help="Prometheus scrape port of Ray's metrics agent (env SERVE_APP_METRICS_PORT)",
    )
    args = parser.parse_args(argv)
    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)
    ray.init(address="local", namespace="serve", _metrics_export_port=args.metrics_port)
    # SIGTERM (a process manager, `kill`) stops like Ctrl-C: serve run shuts the app down.
    # Set after ray.init, which installs a handler of its own.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"==> metrics: http://127.0.0.1:{args.metrics_port}/metrics", flush=True)
    try:
        cli.main(args=["run", args.config], prog_name="serve", standalone_mode=False)
    except KeyboardInterrupt:
        pass
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
