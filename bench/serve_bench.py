"""LLM through the API: startup, single-stream TTFT and tokens/s, memory; vs the engine alone.

Starts the embedded default with `serve run`, then prints: seconds from `serve run` to the
first 200 on /health, single-stream TTFT and decode tokens/s through the official openai SDK
(median of several runs), the memory (PSS) of the whole app, and, after the server
stops, the same TTFT and tokens/s on the vLLM engine called directly, with their ratios.
Figures, not assertions.

    .venv/bin/python bench/serve_bench.py [--runs 5] [--max-tokens 128]
"""

import argparse
import asyncio
import os
import statistics
import sys
import time

from openai import OpenAI

from bench.server import ROOT, STORY, engine_options, running_server, stream_once

MODEL = "smollm2-135m-instruct"


async def engine_streams(runs: int, max_tokens: int) -> list[tuple[float, float]]:
    from deployments.llm.engine import VLLMEngine

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as Ray sets it for a 1-CPU replica
    engine = VLLMEngine(MODEL, str(ROOT / "models" / MODEL), engine_options(MODEL))
    body = {"messages": STORY, "temperature": 0, "max_tokens": max_tokens, "stream": True}
    results = []
    try:
        for i in range(runs + 1):
            start = time.perf_counter()
            first = None
            chunks = 0
            async for _ in engine.generate("chat", body, f"bench-{i}"):
                first = first or time.perf_counter() - start
                chunks += 1
            total = time.perf_counter() - start
            # chunks: role chunk + one per token + finish chunk
            if i:  # the first run warms up
                results.append((first, (chunks - 3) / (total - first)))
    finally:
        engine.shutdown()
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    with running_server() as server:
        print(f"serve run -> first 200 on /health: {server.ready_s:.1f} s")
        client = OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        stream_once(client, MODEL, 8)  # warm-up
        api = [stream_once(client, MODEL, args.max_tokens) for _ in range(args.runs)]
        memory = server.memory_mib()
        print(f"memory of the whole app (PSS: Ray + all replicas): {memory:.0f} MiB")
    direct = asyncio.run(engine_streams(args.runs, args.max_tokens))
    api_ttft, api_rate = (statistics.median(r[i] for r in api) for i in (0, 1))
    eng_ttft, eng_rate = (statistics.median(r[i] for r in direct) for i in (0, 1))
    print(f"single stream, median of {args.runs} runs of {args.max_tokens} tokens:")
    print(f"  {'':18}{'API':>10}{'engine':>10}{'ratio':>8}")
    print(
        f"  {'TTFT (ms)':18}{api_ttft * 1e3:10.0f}{eng_ttft * 1e3:10.0f}{api_ttft / eng_ttft:8.2f}"
    )
    print(f"  {'decode tokens/s':18}{api_rate:10.1f}{eng_rate:10.1f}{api_rate / eng_rate:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
