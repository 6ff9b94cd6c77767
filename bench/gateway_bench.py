"""Gateway overhead: the same model through an upstream id and through its local id.

Runs `serve run examples/loopback-gateway.yaml`, where `gpt-4o-mini` is an upstream model whose
provider is the app itself (real HTTP on loopback) forwarding to smollm2-135m-instruct, and
prints single-stream TTFT and decode tokens/s through each id (median of several runs of the
same request at temperature 0), with their ratios. What the ratio shows is one more HTTP hop,
the upstream deployment and a second pass through the ingress. Figures, not assertions.

    .venv/bin/python -m bench.gateway_bench [--runs 5] [--max-tokens 64]
"""

import argparse
import statistics
import sys

from openai import OpenAI

from bench.server import running_server, stream_once


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    with running_server(config="examples/loopback-gateway.yaml") as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        results = {}
        runs: dict[str, list] = {"smollm2-135m-instruct": [], "gpt-4o-mini": []}
        for model in runs:
            stream_once(client, model, 8, {"ignore_eos": True})  # warm-up
        for _ in range(args.runs):  # interleaved, so drift hits both alike
            for model in runs:
                runs[model].append(
                    stream_once(client, model, args.max_tokens, {"ignore_eos": True})
                )
        for model, figures in runs.items():
            results[model] = tuple(statistics.median(r[i] for r in figures) for i in (0, 1))
    (local_ttft, local_rate), (up_ttft, up_rate) = results.values()
    print(f"single stream, {args.max_tokens} tokens, median of {args.runs} interleaved runs:")
    print(f"  {'':18}{'local id':>10}{'upstream':>10}{'ratio':>8}")
    ttft = (local_ttft * 1e3, up_ttft * 1e3, up_ttft / local_ttft)
    print(f"  {'TTFT (ms)':18}{ttft[0]:10.0f}{ttft[1]:10.0f}{ttft[2]:8.2f}")
    print(f"  {'decode tokens/s':18}{local_rate:10.1f}{up_rate:10.1f}{up_rate / local_rate:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
