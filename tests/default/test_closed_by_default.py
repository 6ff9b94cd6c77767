"""`make serve` as a user runs it (``serve_app.launch serve_config.yaml``), checked from the
outside: nothing that answers without authentication listens off loopback, a Ray driver
without the cluster's token is refused, and HTTP takes the headers it took before HAProxy.

Its own pytest run (Makefile ``test``): it starts the default's Ray, which must not share the
machine with the serve suite's."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import psutil
import pytest

from serve_app.launch import LOCAL_ENV

ROOT = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:8000"  # serve_config.yaml's http_options
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def default() -> Iterator[tuple[psutil.Process, int]]:
    """The launcher's process and its metrics port, once /health answers 200."""
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["SERVE_APP_API_KEYS"] = ""  # as `make serve` without keys
    proc = subprocess.Popen(
        [sys.executable, "-m", "serve_app.launch", "serve_config.yaml"]
        + ["--metrics-port", str(metrics_port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, "serve_app.launch exited"
            assert time.monotonic() < deadline, "the default did not become healthy"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{URL}/health", timeout=5).status_code == 200:
                    break
            time.sleep(1)
        yield psutil.Process(proc.pid), metrics_port
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def listeners(root: psutil.Process) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of ``root``'s tree."""
    procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
    found = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in procs:
            with contextlib.suppress(psutil.Error):
                found.append((conn.laddr.ip, conn.laddr.port, procs[conn.pid].name()))
    return found


def grpc_refuses_without_token(port: int) -> bool:
    """A call of a real method of Serve's replica service (an unknown one would be refused
    as unimplemented before any authentication) is refused as unauthenticated."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
        try:
            call(b"", timeout=10)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


def test_nothing_unauthenticated_listens_off_loopback(default):
    root, metrics_port = default
    found = listeners(root)
    ports = {port for _, port, _ in found}
    assert {8000, metrics_port, 8404, 9101} <= ports  # the API, metrics, HAProxy's pages
    exposed = [(ip, port, name) for ip, port, name in found if ip not in LOOPBACK]
    for ip, port, name in exposed:
        # Serve's inter-replica gRPC binds [::]:0 whatever the node address (Ray's
        # replica.py); Ray's token interceptor guards it.
        assert name.startswith("ray::ServeRepli"), (ip, port, name)
        assert grpc_refuses_without_token(port), (ip, port, name)
    for ip, port, name in found:
        if port in (8000, metrics_port, 8404, 9101):
            assert ip in LOOPBACK, (ip, port, name)


def test_a_ray_driver_without_the_token_is_refused(default):
    connect = "import ray; ray.init(address='auto'); print('connected')"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(LOCAL_ENV)  # a driver on the same machine, as Ray's CLI would be run there

    def driver(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", connect],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )

    for extra in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "not-the-token"}):
        refused = driver(**extra)
        assert refused.returncode != 0 and "connected" not in refused.stdout, extra
        assert "auth" in refused.stderr.lower(), refused.stderr[-2000:]
    assert "connected" in driver().stdout  # with the token `make serve` made: in


def test_headers_as_many_and_as_large_as_before_haproxy(default):
    headers = {f"x-custom-{i}": "v" * 240 for i in range(256)}  # 256 lines, ~64 KiB
    answer = httpx.get(f"{URL}/v1/models", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "list"
