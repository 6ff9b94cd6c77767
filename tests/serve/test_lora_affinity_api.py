"""Adapter-affine routing with two LLM replicas (real Serve, vLLM, HTTP and the openai SDK):
after its first request, each adapter's requests land on the replica that loaded it, shown
from the per-replica adapter metrics, with one load per adapter."""

import concurrent.futures
import shutil
from collections import defaultdict

import pytest
from openai import OpenAI

from tests.lora_adapters import make_adapter
from tests.serve.conftest import ADAPTERS, rescaled
from tests.serve.replicas import LLM_DEPLOYMENT, MODEL, redeployed, replica_pids, running
from tests.serve.test_metrics_api import scrape
from tests.waiting import wait_until

pytestmark = pytest.mark.serve

NEW = [f"affine-{i}" for i in range(4)]  # adapters no replica has loaded yet
PER_ADAPTER = 20


def by_replica(samples, name: str, **labels: str) -> dict[str, dict[str, float]]:
    """adapter -> replica -> value of the series ``name`` of the model's new adapters."""
    found: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for have, value in samples.get(name, []):
        if have.get("adapter") in NEW and all(have.get(k) == v for k, v in labels.items()):
            found[have["adapter"]][have["replica"]] += value
    return found


def test_each_adapters_requests_land_on_one_replica_with_one_load(
    client: OpenAI, base_url: str, metrics_url: str
):
    port = int(base_url.rsplit(":", 1)[1])
    for i, name in enumerate(NEW):
        shutil.rmtree(ADAPTERS / name, ignore_errors=True)
        make_adapter(ADAPTERS.parent / f"{name}.partial", seed=200 + i).rename(ADAPTERS / name)
    redeployed(port, rescaled({LLM_DEPLOYMENT: 2}))
    try:
        wait_until(lambda: running(LLM_DEPLOYMENT) == 2, 240, "two running LLM replicas")

        def ask(name: str) -> None:
            client.completions.create(model=f"{MODEL}:{name}", prompt="Hi", max_tokens=2)

        for name in NEW:  # warm-up: each loaded once, somewhere
            ask(name)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # the session's replica runs 8
            list(pool.map(ask, NEW * PER_ADAPTER))

        def exported():
            samples = scrape(metrics_url)
            ran = by_replica(samples, "ray_openai_api_adapter_requests_total")
            done = all(sum(ran[n].values()) == PER_ADAPTER + 1 for n in NEW)
            return done and samples

        samples = wait_until(exported, 60, "the adapters' requests in Prometheus")
        ran = by_replica(samples, "ray_openai_api_adapter_requests_total")
        loads = by_replica(samples, "ray_openai_api_adapter_loads_total", outcome="loaded")
        for name in NEW:
            assert sum(loads[name].values()) == 1, (name, dict(loads[name]))
            assert max(ran[name].values()) >= 0.95 * (PER_ADAPTER + 1), (name, dict(ran[name]))
    finally:
        redeployed(port, rescaled({LLM_DEPLOYMENT: 1}))
        wait_until(lambda: len(replica_pids(LLM_DEPLOYMENT)) == 1, 120, "one LLM replica left")
        for name in NEW:
            shutil.rmtree(ADAPTERS / name, ignore_errors=True)
