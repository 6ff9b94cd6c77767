"""What a stored history costs: a Responses request chained to a 20-turn history, against a
plain chat request carrying the same messages, on each store backend.

Starts the embedded default (as `make serve`) once per backend: SQLite (the default), then
PostgreSQL (a throwaway server from Debian's package, as the tests start it). On each it
builds a chain of 20 stored responses, then times, interleaved, a request continuing that
chain (`previous_response_id`, not stored) and a chat completion whose `messages` are the
same history written out, both for one token at temperature 0. The difference of the medians
is what the store read, the history expansion and the event bridge add. Figures, not
assertions.

    .venv/bin/python -m bench.responses_bench [--runs 20] [--turns 20]
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from openai import OpenAI

from bench.server import ROOT, running_server
from serve_app.protocol.items import to_messages
from tests import postgres_server

MODEL = "smollm2-135m-instruct"


def build_chain(client: OpenAI, turns: int) -> tuple[str, list[dict]]:
    """The id of the last of ``turns`` chained responses, and the chat messages of it all."""
    previous, items = None, []
    for turn in range(turns):
        text = f"Turn {turn}: name a fruit."
        response = client.responses.create(
            model=MODEL, input=text, previous_response_id=previous, max_output_tokens=8,
            temperature=0,
        )  # fmt: skip
        items.append({"type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": text}]})  # fmt: skip
        items += [o.model_dump(exclude_none=True) for o in response.output]
        previous = response.id
    return previous, to_messages(items)


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def measure(url: str, runs: int, turns: int) -> tuple[float, float]:
    client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    last, messages = build_chain(client, turns)
    question = {"role": "user", "content": "Which was the first fruit?"}

    def chained():
        client.responses.create(
            model=MODEL, input=question["content"], previous_response_id=last,
            max_output_tokens=1, temperature=0, store=False,
        )  # fmt: skip

    def plain():
        client.chat.completions.create(
            model=MODEL, messages=[*messages, question], max_tokens=1, temperature=0
        )

    chained(), plain()  # warm-up (and the prefix cache)
    figures: dict[str, list[float]] = {"chained": [], "plain": []}
    for _ in range(runs):
        figures["chained"].append(timed(chained))
        figures["plain"].append(timed(plain))
    return statistics.median(figures["chained"]), statistics.median(figures["plain"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    results = {}
    for backend in ("sqlite", "postgres"):
        with contextlib.ExitStack() as stack:
            config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
            config["applications"][0]["args"]["store"] = {"backend": backend}
            path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "config.yaml"
            path.write_text(yaml.safe_dump(config))
            os.environ["SERVE_APP_DATA_DIR"] = str(path.parent)
            if backend == "postgres":
                os.environ["SERVE_APP_STORE_DSN"] = stack.enter_context(postgres_server.server())
            server = stack.enter_context(running_server(config=str(path)))
            results[backend] = measure(server.url, args.runs, args.turns)
    print(f"{args.turns}-turn history, 1 output token, median of {args.runs} interleaved runs:")
    print("| store | chained response ms | plain chat ms | added ms |")
    print("|---|---|---|---|")
    for backend, (chained, plain) in results.items():
        print(f"| {backend} | {chained:.1f} | {plain:.1f} | {chained - plain:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
