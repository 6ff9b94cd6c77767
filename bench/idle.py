"""What an idle `make serve` costs: CPU cores per process of the app, over a quiet minute.

Starts the embedded default as `make serve` does (bench/server.py), lets it settle, then
reads every process's CPU time (user + system, from /proc through psutil) before and after
``--seconds`` without a request, and the whole machine's busy time (/proc/stat) over the
same span. Prints cores per process kind (Ray's services, Serve's controller and proxy, each
replica, vLLM's engine core) and the total, largest first.

    .venv/bin/python -m bench.idle [--seconds 60] [--settle 30]

Environment variables given to this command reach the app's Ray processes (e.g. one of the
``RAY_SERVE_*`` intervals, to see what it saves).
"""

import argparse
import contextlib
import re
import time
from collections import defaultdict

import psutil

from bench.server import running_server

KINDS = (
    "gcs_server", "raylet", "dashboard/agent.py", "dashboard.py", "runtime_env", "log_monitor",
    "monitor.py", "haproxy", "serve_app.launch", "EngineCore",
)  # fmt: skip


def kind(process: psutil.Process) -> str:
    """A readable name for what a process of the app is."""
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return "?"
    title = cmdline[0] if cmdline else process.name()
    if title.startswith("ray::"):
        return re.sub(r"\.[a-z_]+$", "", title.split()[0])  # ray::ServeReplica:app:name
    text = " ".join(cmdline)
    for needle in KINDS:
        if needle in text:
            return needle
    return process.name()


def cpu_seconds(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (kind, user + system CPU seconds) of ``root`` and every process under it."""
    found = {}
    parent = psutil.Process(root)
    for process in [parent, *parent.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            found[process.pid] = (kind(process), times.user + times.system)
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine since boot."""
    with open("/proc/stat") as stat:
        fields = [float(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--settle", type=float, default=30)
    args = parser.parse_args()
    with running_server() as server:
        print(f"healthy after {server.ready_s:.0f} s; settling {args.settle:.0f} s")
        time.sleep(args.settle)
        before, (busy0, total0) = cpu_seconds(server.pid), machine_busy()
        started = time.monotonic()
        time.sleep(args.seconds)
        after, (busy1, total1) = cpu_seconds(server.pid), machine_busy()
        span = time.monotonic() - started
    cores: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for pid, (name, seconds) in after.items():
        if pid in before:
            cores[name] += (seconds - before[pid][1]) / span
            counts[name] += 1
    print(f"idle CPU over {span:.0f} s, in cores:")
    for name, value in sorted(cores.items(), key=lambda kv: -kv[1]):
        print(f"  {value:7.4f}  {name} (x{counts[name]})")
    print(f"  {sum(cores.values()):7.4f}  all processes of the app")
    machine = (busy1 - busy0) / (total1 - total0) * psutil.cpu_count()
    print(f"  {machine:7.4f}  whole machine (/proc/stat)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
