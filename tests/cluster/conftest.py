"""The local multi-node cluster (cluster/local.sh) for the whole cluster suite: up and
deployed once, down at the end, whatever the tests did to its nodes."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "cluster" / "local.sh"
BASE_URL = "http://127.0.0.1:8000"
DASHBOARD = "http://127.0.0.1:8266"
METRICS = {"head": 8090, "llm": 8091, "audio": 8092}
REPORT = ROOT / "test-artifacts" / "cluster-report.txt"
# local.sh's defaults: Ray's files and the cluster's auth token live here.
CLUSTER_DIR = Path(os.environ.get("LOCAL_CLUSTER_DIR", f"/tmp/ray-openai-cluster-{os.getuid()}"))
TOKEN_PATH = CLUSTER_DIR / "auth_token"
# Ray's state API (list_actors, list_nodes) reads the token from here.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = str(TOKEN_PATH)


def dashboard_headers() -> dict[str, str]:
    """The dashboard's HTTP API needs the cluster's token."""
    return {"Authorization": f"Bearer {TOKEN_PATH.read_text().strip()}"}


def local(*args: str, timeout: float = 900) -> str:
    """Run ``cluster/local.sh ARGS`` and return its output (fails the test if it fails)."""
    env = {**os.environ, "SERVE_APP_API_KEYS": ""}
    done = subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"local.sh {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def report(line: str) -> None:
    """Timings and timelines the closing note quotes: printed and kept in test-artifacts/."""
    print(line)
    REPORT.parent.mkdir(exist_ok=True)
    with REPORT.open("a") as out:
        out.write(line + "\n")


@pytest.fixture(scope="session")
def cluster() -> Iterator[str]:
    REPORT.unlink(missing_ok=True)
    try:
        local("up")
        local("deploy")
        yield BASE_URL
    finally:
        local("down", timeout=120)


@pytest.fixture
def http(cluster: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster, timeout=120) as client:
        yield client
