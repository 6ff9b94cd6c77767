"""``serve_app.haproxy``: the changes to Ray's HAProxy config, and its error answers."""

import json
import subprocess
import sys

import httpx
import psutil
import pytest

from serve_app import haproxy
from tests.serve.conftest import free_port
from tests.waiting import wait_until

# The lines of Ray 2.60's template (ray/serve/_private/haproxy_templates.py) that change.
RAY_CONFIG = """global
    log 127.0.0.1:514 local0 info
    tune.bufsize 131072
defaults
    mode http
    timeout connect 5s
    errorfile 502 /tmp/haproxy-serve/n/500.http
    errorfile 503 /tmp/haproxy-serve/n/500.http
    errorfile 504 /tmp/haproxy-serve/n/500.http
    balance leastconn
frontend prometheus
    bind :9101
    mode http
    http-request use-service prometheus-exporter if { path /metrics }
    no log
frontend http_frontend
    bind *:8000
    default_backend default_backend
backend default_backend
    http-request return status 404 content-type text/plain lf-string "Path not found"
listen stats
  bind *:8404
  stats enable
  stats uri /stats
"""


def test_pages_move_to_loopback_and_the_api_stays_where_the_config_put_it(tmp_path):
    config = haproxy.rewrite(RAY_CONFIG, tmp_path)
    assert "    bind 127.0.0.1:9101\n" in config
    assert "  bind 127.0.0.1:8404\n" in config
    assert "    bind *:8000\n" in config  # http_options.host 0.0.0.0: the user asked for it
    assert "    bind 10.0.0.5:9101\n" in haproxy.rewrite(RAY_CONFIG, tmp_path, "10.0.0.5")


def test_header_limit_and_error_files(tmp_path):
    config = haproxy.rewrite(RAY_CONFIG, tmp_path)
    assert config.startswith("global\n    tune.http.maxhdr 1024\n")
    assert "/tmp/haproxy-serve/n/500.http" not in config  # Ray's plain-text 500s
    for status in (400, 408, 500, 502, 503, 504):
        assert f"    errorfile {status} {tmp_path}/{status}.http\n" in config
        assert (tmp_path / f"{status}.http").read_bytes() == haproxy.error_file(status).encode()


@pytest.mark.parametrize(
    ("status", "answered", "code"),
    [(400, 400, "bad_request"), (502, 503, "unavailable"), (503, 503, "unavailable"),
     (504, 504, "timeout")],
)  # fmt: skip
def test_error_files_are_openai_envelopes(status, answered, code):
    head, body = haproxy.error_file(status).split("\r\n\r\n", 1)
    status_line, *lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert status_line.startswith(f"HTTP/1.1 {answered} ")
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body.encode())
    error = json.loads(body)["error"]
    assert error["code"] == code and error["param"] is None and error["message"]
    assert ("Retry-After" in headers) == (answered == 503)


def test_haproxy_accepts_the_rewritten_config(tmp_path):
    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy.rewrite(RAY_CONFIG, tmp_path / "errors"))
    checked = subprocess.run(
        [haproxy.real_binary(), "-c", "-f", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr


def test_no_reachable_server_is_a_json_503_with_retry_after(tmp_path):
    """The real HAProxy on the rewritten config, its only server a closed port."""
    front, dead = free_port(), free_port()
    config = RAY_CONFIG.replace("bind *:8000", f"bind 127.0.0.1:{front}")
    config = config.replace(":9101", f":{free_port()}").replace(":8404", f":{free_port()}")
    config = config.replace(
        '    http-request return status 404 content-type text/plain lf-string "Path not found"',
        f"    timeout server 5s\n    timeout client 5s\n    server gone 127.0.0.1:{dead}",
    )
    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy.rewrite(config, tmp_path / "errors"))
    proc = subprocess.Popen([haproxy.real_binary(), "-db", "-f", str(path)])
    try:
        url = f"http://127.0.0.1:{front}/v1/models"
        answer = wait_until(lambda: httpx.get(url, timeout=10), 10, "HAProxy listening")
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["type"] == "server_error"
    finally:
        proc.kill()
        proc.wait()


def test_haproxy_ends_with_the_process_that_started_it(tmp_path):
    """The wrapper asks Linux to stop HAProxy when its parent (Serve's HAProxyManager) dies,
    so no HAProxy is left holding port 8000 after Ray shuts down."""
    armed = tmp_path / "armed"  # the child's pid, written once its request is made
    child_code = (
        "import os, pathlib, time; from serve_app.haproxy import die_with_parent; "
        f"die_with_parent(); written = pathlib.Path({str(armed)!r} + '.tmp'); "
        f"written.write_text(str(os.getpid())); written.replace({str(armed)!r}); time.sleep(60)"
    )
    parent_code = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {child_code!r}]); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        pid = int(wait_until(armed.read_text, 30, "the child to ask for PR_SET_PDEATHSIG"))
        child = psutil.Process(pid)
        assert child.ppid() == proc.pid  # armed while its parent lives
    finally:
        proc.kill()
        proc.wait()

    def ended() -> bool:  # gone, or a zombie its new parent has not reaped yet
        return not child.is_running() or child.status() == psutil.STATUS_ZOMBIE

    try:
        wait_until(ended, 5, "the child to end with its parent")
    except AssertionError:
        child.kill()  # psutil checks it is still that process
        raise
