"""Hold many concurrent chat streams against the embedded default for a set time.

Starts `serve run serve_config.yaml`, warms it up, measures the app's memory (PSS of every
process), then keeps ``--streams`` streams open for ``--duration`` seconds (each worker
opens a new stream as soon as its last one ends), measures memory again after the load has
drained, and prints: requests completed, errors by kind (any non-200 or SSE error event is
an error), TTFT and whole-stream latency percentiles, aggregate tokens/s, memory before and
after. Not a test: a report. Traffic goes to 127.0.0.1 only and stops by itself.

    .venv/bin/python -m bench.load [--streams 200] [--duration 60] [--max-tokens 32]
"""

import argparse
import asyncio
import collections
import json
import statistics
import sys
import time

import httpx

from bench.server import running_server

MODEL = "smollm2-135m-instruct"


class Stats:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.latency: list[float] = []
        self.tokens = 0
        self.errors: collections.Counter[str] = collections.Counter()


async def one_stream(client: httpx.AsyncClient, body: dict, stats: Stats) -> None:
    start = time.perf_counter()
    first = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                stats.errors[f"HTTP {response.status_code}"] += 1
                await response.aread()
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line.removeprefix("data: "))
                if "error" in event:
                    stats.errors["stream error event"] += 1
                    return
                if first is None and event.get("choices"):
                    first = time.perf_counter() - start
                if event.get("usage"):
                    stats.tokens += event["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        stats.errors[type(exc).__name__] += 1
        return
    stats.ttft.append(first if first is not None else float("nan"))
    stats.latency.append(time.perf_counter() - start)


async def worker(client: httpx.AsyncClient, body: dict, deadline: float, stats: Stats) -> None:
    while time.monotonic() < deadline:
        await one_stream(client, body, stats)


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {q[49]:.2f}s  p95 {q[94]:.2f}s  p99 {q[98]:.2f}s  max {max(values):.2f}s"


async def run(url: str, streams: int, duration: float, max_tokens: int) -> Stats:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me something about the sea."}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    stats = Stats()
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams)
    timeout = httpx.Timeout(600, connect=30)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        deadline = time.monotonic() + duration
        await asyncio.gather(*(worker(client, body, deadline, stats) for _ in range(streams)))
    return stats


def report(stats: Stats, elapsed: float) -> None:
    print(f"  completed streams   {len(stats.latency)}")
    print(f"  errors              {sum(stats.errors.values())} {dict(stats.errors)}")
    print(f"  TTFT                {percentiles(stats.ttft)}")
    print(f"  stream latency      {percentiles(stats.latency)}")
    print(f"  tokens/s (all)      {stats.tokens / elapsed:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="repeat: warm-up vs growth")
    args = parser.parse_args()
    errors = 0
    with running_server() as server:
        asyncio.run(run(server.url, 4, 1, 8))  # warm-up
        memory = [server.memory_mib()]
        for round_no in range(1, args.rounds + 1):
            started = time.monotonic()
            stats = asyncio.run(run(server.url, args.streams, args.duration, args.max_tokens))
            elapsed = time.monotonic() - started
            time.sleep(5)
            memory.append(server.memory_mib())
            healthy = httpx.get(f"{server.url}/health", timeout=30).status_code
            errors += sum(stats.errors.values())
            print(f"round {round_no}: {args.streams} streams for {args.duration:.0f} s "
                  f"({elapsed:.0f} s with drain), /health after: {healthy}")  # fmt: skip
            report(stats, elapsed)
            print(f"  memory (PSS)        {memory[-2]:.0f} -> {memory[-1]:.0f} MiB")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
