"""Embeddings throughput: `/v1/embeddings` on the embedded default next to
sentence-transformers' `encode` in this process, on the same model files and sentences.

sentences/s through the API at concurrency 1 and 8, with requests of 1 and of 32 sentences
(`encoding_format: base64`, as the OpenAI SDK asks), then the ratio to in-process `encode`
with the same batch size, taken twice: on a quiet machine (before the server starts and
after it stops, the median of both) and beside the idle server (which keeps a few tenths of
a core busy with Ray's loops and two vLLM engine cores: on 2 cores that noise slows any
2-thread engine, ours and sentence-transformers' alike).

`--startup` also launches the default without its embedding model, then with it, and prints
what the model costs: seconds until /health answers 200, the memory (PSS) of everything
`make serve` started, and the CPU it all uses idle. Figures, not assertions.

    .venv/bin/python -m bench.embeddings_bench [--seconds 10] [--startup]
"""

import argparse
import itertools
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

from bench.idle import cpu_seconds
from bench.server import ROOT, running_server
from serve_app.models import default_models_dir

MODEL = "all-minilm-l6-v2"
SUBJECTS = [
    "The committee",
    "A small dog",
    "Our new server",
    "The river",
    "My neighbour",
    "The old library",
    "A sudden storm",
    "The startup",
    "Every student",
    "The orchestra",
]
VERBS = [
    "postponed",
    "chased",
    "rebuilt",
    "flooded",
    "painted",
    "closed",
    "delayed",
    "funded",
    "studied",
    "rehearsed",
]
OBJECTS = ["the vote until spring", "a red ball across the park", "its index overnight",
           "the fields near the village", "the fence a pale green", "its doors for repairs",
           "every train to the coast", "three projects in Berlin", "the history of tides",
           "a symphony by Dvořák"]  # fmt: skip


def sentences(n: int) -> list[str]:
    """``n`` distinct short sentences (10 to 14 words)."""
    combos = itertools.product(SUBJECTS, VERBS, OBJECTS)
    return [f"{s} {v} {o} on day {i}." for i, (s, v, o) in zip(range(n), combos, strict=False)]


def in_process(batch: int, seconds: float) -> float:
    """sentences/s of sentence-transformers' ``encode`` on batches of ``batch``."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(default_models_dir() / MODEL), device="cpu")
    texts = sentences(1000)
    model.encode(texts[:batch], batch_size=batch)  # warm-up
    done, start = 0, time.perf_counter()
    for i in itertools.count():
        chunk = [texts[(i * batch + j) % len(texts)] for j in range(batch)]
        model.encode(chunk, batch_size=batch)
        done += batch
        if time.perf_counter() - start >= seconds:
            return done / (time.perf_counter() - start)
    raise AssertionError("unreachable")


def through_api(url: str, batch: int, concurrency: int, seconds: float) -> float:
    """sentences/s of ``concurrency`` clients each posting requests of ``batch`` sentences."""
    texts = sentences(1000)
    counts = [0] * concurrency
    start = time.perf_counter()
    stop = start + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for i in itertools.count():
                if time.perf_counter() >= stop:
                    return
                first = (k * 7919 + i * batch) % len(texts)
                chunk = [texts[(first + j) % len(texts)] for j in range(batch)]
                body = {"model": MODEL, "input": chunk, "encoding_format": "base64"}
                response = http.post("/v1/embeddings", json=body)
                response.raise_for_status()
                counts[k] += batch

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def throughput(seconds: float) -> None:
    shapes = [(1, 1), (32, 1), (1, 8), (32, 8)]  # (batch, concurrency)
    before = {b: in_process(b, seconds) for b in (1, 32)}
    with running_server() as server:
        through_api(server.url, 32, 8, 3)  # warm-up
        api = {(b, c): through_api(server.url, b, c, seconds) for b, c in shapes}
        beside = {b: in_process(b, seconds) for b in (1, 32)}
    after = {b: in_process(b, seconds) for b in (1, 32)}
    print("\n| batch | concurrency | API sentences/s | in-process, quiet machine | ratio "
          "| in-process, beside the idle server | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for b, c in shapes:
        quiet = statistics.median([before[b], after[b]])
        print(f"| {b} | {c} | {api[b, c]:.1f} | {quiet:.1f} | {api[b, c] / quiet:.2f} "
              f"| {beside[b]:.1f} | {api[b, c] / beside[b]:.2f} |")  # fmt: skip
    print(f"\nin-process before/after the server: batch 1 {before[1]:.1f}/{after[1]:.1f}, "
          f"batch 32 {before[32]:.1f}/{after[32]:.1f}")  # fmt: skip


def startup() -> None:
    """Seconds to healthy and memory of the default, without and with its embedding model."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = config["applications"][0]["args"]
    args["models"] = [m for m in args["models"] if m["family"] != "embedding"]
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        without = Path(tmp) / "without-embedding.yaml"
        without.write_text(yaml.safe_dump(config, sort_keys=False))
        for name, path in (("without", str(without)), ("with", "serve_config.yaml")):
            with running_server(config=path) as server:
                time.sleep(10)  # let start-up work settle before reading memory
                idle = idle_cores(server.pid, 30)
                rows.append((name, server.ready_s, server.memory_mib(), idle))
    print("\n| default | healthy after | memory (PSS) | idle CPU |")
    print("|---|---|---|---|")
    for name, ready_s, mib, idle in rows:
        print(f"| {name} embedding model | {ready_s:.1f} s | {mib:.0f} MiB | {idle:.3f} cores |")
    (_, r0, m0, i0), (_, r1, m1, i1) = rows
    print(f"| cost of the embedding model | {r1 - r0:+.1f} s | {m1 - m0:+.0f} MiB "
          f"| {i1 - i0:+.3f} cores |")  # fmt: skip


def idle_cores(root: int, seconds: float) -> float:
    """CPU cores every process under ``root`` used over ``seconds`` of no requests."""
    first = cpu_seconds(root)
    time.sleep(seconds)
    last = cpu_seconds(root)
    return sum(s - first.get(pid, (None, s))[1] for pid, (_, s) in last.items()) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="per figure")
    parser.add_argument("--startup", action="store_true", help="also start-up time and memory")
    args = parser.parse_args()
    throughput(args.seconds)
    if args.startup:
        startup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
