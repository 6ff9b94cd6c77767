"""`make serve` as a user runs it (``serve_app.launch serve_config.yaml``), checked from the
outside: nothing that answers without authentication listens off loopback, a Ray driver
without the cluster's token is refused, and HTTP takes the headers it took before HAProxy.

Its own pytest run (Makefile ``test``): it starts the default's Ray, which must not share the
machine with the serve suite's."""

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

import grpc
import httpx
import psutil
import pytest

from bench.server import Server, running_server  # `make serve`'s launcher, as the benchmarks run it
from serve_app.launch import LOCAL_ENV

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


@pytest.fixture(scope="module")
def default() -> Iterator[Server]:
    """The running default, once /health answers 200."""
    with running_server() as server:
        yield server


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
    found = listeners(psutil.Process(default.pid))
    pages = {httpx.URL(default.url).port, httpx.URL(default.metrics_url).port, 8404, 9101}
    assert pages <= {port for _, port, _ in found}  # the API, metrics, HAProxy's pages
    exposed = [(ip, port, name) for ip, port, name in found if ip not in LOOPBACK]
    for ip, port, name in exposed:
        # Serve's inter-replica gRPC binds [::]:0 whatever the node address (Ray's
        # replica.py); Ray's token interceptor guards it.
        assert name.startswith("ray::ServeRepli"), (ip, port, name)
        assert grpc_refuses_without_token(port), (ip, port, name)
    for ip, port, name in found:
        if port in pages:
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
    answer = httpx.get(f"{default.url}/v1/models", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "list"
