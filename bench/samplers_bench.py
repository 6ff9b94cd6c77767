"""Sampler cost: tokens/s with no sampler vs each llama.cpp sampler, and ingress validation.

Prints, on the embedded default's LLM called directly (no Ray, one engine at a time):
- decode tokens/s of plain requests on an engine *without* our logits processors and on one
  *with* them (what a request that asks for no sampler pays for their being loaded);
- tokens/s with each sampler on (repeat_penalty, DRY, XTC, all three), one stream and 8
  concurrent streams, with the ratio to no sampler;
- the ingress's strict validation per request (parse + checks + vLLM body), in microseconds.
Figures, not assertions.

    .venv/bin/python -m bench.samplers_bench [--runs 3] [--max-tokens 128]
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
import timeit

from bench.server import ROOT, STORY, engine_options

MODEL = "smollm2-135m-instruct"
SAMPLERS = {
    "none": {},
    "repeat_penalty": {"repeat_penalty": 1.3, "repeat_last_n": 64},
    "dry": {"dry_multiplier": 0.8},
    "xtc": {"xtc_probability": 0.5, "xtc_threshold": 0.1},
    "all three": {
        "repeat_penalty": 1.3,
        "dry_multiplier": 0.8,
        "xtc_probability": 0.5,
    },
}


def validation_cost(rounds: int = 2000) -> dict[str, float]:
    """Microseconds per request of the ingress's parse + check + vLLM body."""
    from serve_app.protocol.openai import ChatCompletionRequest

    small = {"model": MODEL, "messages": STORY, "temperature": 0.7, "max_tokens": 64}
    chatty = {
        **small,
        "messages": [
            {"role": "system", "content": "You are helpful."},
            *[{"role": r, "content": "word " * 50} for r in ("user", "assistant") * 10],
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        **SAMPLERS["all three"],
    }

    def once(body: dict) -> None:
        request = ChatCompletionRequest.model_validate(body)
        request.check()
        request.to_backend(None)

    return {
        name: min(timeit.repeat(lambda b=body: once(b), number=rounds, repeat=3)) / rounds * 1e6
        for name, body in (("one message", small), ("20 messages + samplers", chatty))
    }


async def one(engine, xargs_body: dict, max_tokens: int, tag: str) -> tuple[int, float]:
    """(tokens, decode seconds) of one streamed request: the first token is not counted."""
    body = {
        "messages": STORY,
        "temperature": 0,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        **xargs_body,
    }
    first = None
    chunks = 0
    async for _ in engine.generate("chat", body, tag):
        chunks += 1
        if first is None:
            first = time.perf_counter()
    return chunks - 3, time.perf_counter() - first  # role chunk, first token, finish chunk


async def rate(engine, xargs_body: dict, max_tokens: int, streams: int, runs: int) -> float:
    """Median over ``runs`` of total decode tokens/s across ``streams`` concurrent requests."""
    rates = []
    for run in range(runs):
        start = time.perf_counter()
        tags = [f"{run}-{i}-{time.time()}" for i in range(streams)]
        results = await asyncio.gather(*(one(engine, xargs_body, max_tokens, t) for t in tags))
        if streams == 1:
            rates.append(results[0][0] / results[0][1])
        else:
            rates.append(sum(t for t, _ in results) / (time.perf_counter() - start))
    return statistics.median(rates)


def vllm_body(fields: dict) -> dict:
    from serve_app.protocol.openai import ChatCompletionRequest

    return ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": STORY, **fields}
    ).sampling_payload(None)


async def engine_figures(with_processors: bool, samplers: dict, runs: int, max_tokens: int):
    import deployments.llm.engine as engine_module

    build = engine_module.engine_args

    def args(*a, **k):
        built = build(*a, **k)
        if not with_processors:
            built.logits_processors = None
        return built

    engine_module.engine_args = args
    engine = engine_module.VLLMEngine(MODEL, str(ROOT / "models" / MODEL), engine_options(MODEL))
    engine_module.engine_args = build
    try:
        await rate(engine, {}, 16, 1, 1)  # warm-up
        out = {}
        for name, fields in samplers.items():
            body = vllm_body(fields)
            out[name] = (
                await rate(engine, body, max_tokens, 1, runs),
                await rate(engine, body, max_tokens, 8, runs),
            )
        return out
    finally:
        engine.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as Ray sets it for a 1-CPU replica
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")

    print("ingress validation (strict parse + checks + vLLM body), per request:")
    for name, micros in validation_cost().items():
        print(f"  {name:24} {micros:8.1f} us")

    bare = asyncio.run(engine_figures(False, {"none": {}}, args.runs, args.max_tokens))
    loaded = asyncio.run(engine_figures(True, SAMPLERS, args.runs, args.max_tokens))
    base1, base8 = loaded["none"]
    print(f"decode tokens/s, {args.max_tokens} tokens, median of {args.runs} runs")
    print("(ratios against the engine with our processors loaded and no sampler asked for):")
    print(f"  {'':28}{'1 stream':>10}{'ratio':>7}{'8 streams':>11}{'ratio':>7}")
    rows = {"no processors loaded": bare["none"]}
    rows.update({f"loaded, {name}": figures for name, figures in loaded.items()})
    for label, (r1, r8) in rows.items():
        print(f"  {label:28}{r1:10.1f}{r1 / base1:7.2f}{r8:11.1f}{r8 / base8:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
