"""Start the embedded default with `serve run`, then measure it through the API.

Prints: seconds from `serve run` to the first 200 on /health, single-stream TTFT and
tokens/s (streamed chat, median of several runs, via the official openai SDK), the same
measured directly on the engine's output count, and the resident memory of the whole app
(every process under `serve run`). Not a test: figures, not assertions.

    .venv/bin/python bench/serve_bench.py [--runs 5] [--max-tokens 128] [--port 8000]
"""

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def wait_healthy(url: str, deadline_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError("server did not become healthy")


def tree_rss_mib(pid: int) -> float:
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    # Ray's raylet/GCS started by `serve run` are children too; sum unique RSS.
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


def stream_once(client: OpenAI, max_tokens: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model=MODEL,
        messages=PROMPT,
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    assert first is not None
    return first, (tokens - 1) / (total - first), tokens


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "SERVE_APP_API_KEYS": ""}
    started = time.monotonic()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "serve"), "run", "serve_config.yaml"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_healthy(url, 600)
        ready_s = time.monotonic() - started
        print(f"serve run -> first 200 on /health: {ready_s:.1f} s")
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        stream_once(client, 8)  # warm-up
        results = [stream_once(client, args.max_tokens) for _ in range(args.runs)]
        ttft = statistics.median(r[0] for r in results)
        rate = statistics.median(r[1] for r in results)
        print(f"single stream, {args.runs} runs of {args.max_tokens} tokens:")
        print(f"  TTFT median      {ttft * 1000:.0f} ms")
        print(f"  decode tokens/s  {rate:.1f}")
        rss = tree_rss_mib(server.pid)
        print(f"resident memory of the app (serve run + Ray + replicas): {rss:.0f} MiB")
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
