"""LoRA adapter requests on our API next to vLLM's own server (`--enable-lora`, the same
adapters as `--lora-modules`), on the embedded default's LLM and its two trained adapters.

Rounds alternate the two servers, each freshly started, never both at once. Per round:
the cold load (TTFT of each adapter's first request: ours lists the source, fetches, checks
and loads it; vLLM loads it at its first use), TTFT p50 at concurrency 1 (20 short streams,
the adapters in turn), and total tokens/s at concurrency 16 (32 streams of ``--tokens``,
the adapters in turn, ``ignore_eos``). Prints each round, the medians and ours/vLLM.

    .venv/bin/python -m bench.lora_bench [--rounds 2] [--tokens 64]
"""

import argparse
import asyncio
import statistics
import time

from openai import AsyncOpenAI

from bench.server import ROOT, lora_options, running_server
from bench.vs_vllm import MODEL, VLLM_PORT, load, one_stream, vllm_server

ADAPTERS = (f"{MODEL}:pirate", f"{MODEL}:robot")
CONCURRENCY, STREAMS, TTFT_SAMPLES = 16, 32, 20


async def measure(url: str, tokens: int) -> dict[str, float]:
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    await one_stream(client, 2)  # the base model: warm
    figures = {}
    for adapter in ADAPTERS:  # never asked for since the server started
        ttft = (await one_stream(client, 2, adapter))[0]
        figures[f"cold TTFT ms, {adapter.split(':')[1]}"] = 1000 * ttft
    ttfts = [(await one_stream(client, 2, ADAPTERS[i % 2]))[0] for i in range(TTFT_SAMPLES)]
    figures["TTFT p50 ms, c=1"] = 1000 * statistics.median(ttfts)
    start = time.perf_counter()
    received = await load(client, tokens, CONCURRENCY, STREAMS, ADAPTERS)
    figures[f"total tokens/s, c={CONCURRENCY}"] = received / (time.perf_counter() - start)
    await client.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    source = ROOT / "models" / lora_options(MODEL)["source"]
    folders = {adapter: source / adapter.split(":")[1] for adapter in ADAPTERS}
    servers = {"vllm": lambda: vllm_server(adapters=folders), "ours": running_server}
    measured: dict[str, list[dict[str, float]]] = {}
    for i in range(args.rounds):
        for name, server in servers.items():
            with server() as started:
                url = started.url if name == "ours" else f"http://127.0.0.1:{VLLM_PORT}"
                figures = asyncio.run(measure(url, args.tokens))
            print(f"  {name} round {i + 1}: {figures}", flush=True)
            measured.setdefault(name, []).append(figures)
    print(f"\nmedian of {args.rounds} rounds, {args.tokens} tokens per stream:")
    print(f"  {'':28}{'vllm':>9}{'ours':>9}{'ours/vllm':>11}")
    for key in measured["ours"][0]:
        ours, theirs = (statistics.median(r[key] for r in measured[n]) for n in ("ours", "vllm"))
        print(f"  {key:28}{theirs:9.1f}{ours:9.1f}{ours / theirs:11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
