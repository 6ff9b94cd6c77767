"""A real PostgreSQL server for the test session: Debian's ``postgresql`` package, started in
a temp dir on loopback (``make test`` installs the package, as it does chromium)."""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")


def available() -> bool:
    return (BIN / "initdb").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server() -> Iterator[str]:
    """Start a throwaway server; yields its DSN, stops and removes it after."""
    root = Path(tempfile.mkdtemp(prefix="pg-test-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    run = lambda *cmd: subprocess.run([*as_postgres, *cmd], check=True, capture_output=True)  # noqa: E731
    run(str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    options = f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
    # -l: the server must not hold our pipes open, or run() would wait for it to exit
    run(str(BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
