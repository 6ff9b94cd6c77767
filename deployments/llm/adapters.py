"""LoRA adapters in an LLM replica: fetched from the source, checked, loaded into vLLM on
their first request (Serve's model multiplexing picks the replica), unloaded when evicted.

The ingress side (ids, listing the source) is ``serve_app/adapters.py``.
"""

import asyncio
import contextlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from deployments.common.tasks import detached

logger = logging.getLogger("ray.serve.deployments.llm")

# An adapter's name: one path segment, no dots at its start ('..'), no URL or path syntax.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the LoRA ranks vLLM's kernels take
FAILED_S = 30.0  # an adapter that failed to load fails its requests this long, unretried
LOAD_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
# Exported name -> (type, labels, meaning), in serve_app/metrics.py's METRICS (the README).
METRICS = {
    "ray_openai_api_adapter_loads_total": (
        "counter",
        "model, adapter, outcome",
        "LoRA adapter loads into an LLM replica's engine (`outcome`: loaded, failed).",
    ),
    "ray_openai_api_adapter_load_seconds": (
        "histogram",
        "model, adapter",
        "Time to fetch, check and load an adapter (its first request on a replica waits it).",
    ),
    "ray_openai_api_adapter_requests_total": (
        "counter",
        "model, adapter, replica",
        "Requests each LLM replica ran with an adapter (`replica`: Serve's replica id).",
    ),
    "ray_openai_api_adapter_evictions_total": (
        "counter",
        "model, adapter",
        "Adapters evicted from a replica (least recently used) and unloaded from its engine.",
    ),
}


class AdapterError(ValueError):
    """An adapter that cannot be served; the message says why (shown to the client)."""


def fetch_adapter(url: str, adapter: str, cache: Path) -> Path:
    """A local folder holding ``adapter`` of the source ``url``: the folder itself for a
    local source, else a copy in ``cache`` (fetched again each load)."""
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    remote = f"{root}/{adapter}"
    if "file" in fs.protocol:
        return Path(remote)
    local = cache / adapter
    local.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not fs.exists(f"{remote}/{name}"):
            raise AdapterError(f"the adapter has no {name}")
        fs.get(f"{remote}/{name}", str(local / name))
    return local


def check_adapter(folder: Path, max_rank: int, base_modules: set[str]) -> dict[str, Any]:
    """``adapter_config.json`` of the adapter in ``folder`` once it is one vLLM serves as
    trained (``AdapterError`` otherwise): a LoRA of rank at most ``max_rank`` with no
    ``modules_to_save`` nor DoRA, whose weights all apply to modules of the base model
    (``base_modules``: the base's weight names without ``.weight``). vLLM would refuse the
    first ones, and silently serve the base model for an adapter that matches nothing."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise AdapterError(f"the adapter has no {CONFIG_FILE}") from None
    except (OSError, ValueError) as exc:
        raise AdapterError(f"its {CONFIG_FILE} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"its {CONFIG_FILE} is not a PEFT LoRA config")
    rank = config.get("r")
    if not isinstance(rank, int) or rank not in RANKS or rank > max_rank:
        allowed = ", ".join(str(r) for r in RANKS if r <= max_rank)
        raise AdapterError(f"its rank r={rank!r} is not served here (one of {allowed})")
    if config.get("modules_to_save"):
        raise AdapterError("it has modules_to_save, which vLLM cannot serve")
    if config.get("use_dora"):
        raise AdapterError("it is a DoRA adapter, which vLLM cannot serve")
    targets = lora_modules(folder / WEIGHTS_FILE)
    if not targets:
        raise AdapterError("its weights hold no LoRA matrices")
    unknown = sorted(targets - base_modules)
    if unknown:
        raise AdapterError(
            f"its weights apply to modules the base model does not have: {unknown[:3]}"
        )
    return config


def _tensor_names(path: Path) -> list[str]:
    from safetensors import safe_open  # noqa: PLC0415 - only where adapters are loaded

    with safe_open(str(path), "np") as tensors:
        return list(tensors.keys())


def lora_modules(weights: Path) -> set[str]:
    """The base-model modules the LoRA matrices in ``weights`` apply to (PEFT's tensor
    names ``base_model.model.<module>.lora_A.weight``), read from the file's header."""
    try:
        names = _tensor_names(weights)
    except FileNotFoundError:
        raise AdapterError(f"the adapter has no {WEIGHTS_FILE}") from None
    except Exception as exc:
        raise AdapterError(f"its {WEIGHTS_FILE} cannot be read ({exc})") from None
    modules = set()
    for name in names:
        match = re.fullmatch(r"base_model\.model\.(.+)\.lora_[AB](?:\.[^.]+)?\.weight", name)
        if match:
            modules.add(match.group(1))
    return modules


def base_modules(source: str) -> set[str]:
    """The modules of the base model in ``source`` that hold weights (their names, as its
    safetensors files name them, without ``.weight``)."""
    modules = set()
    for path in Path(source).glob("*.safetensors"):
        names = _tensor_names(path)
        modules.update(n.removesuffix(".weight") for n in names if n.endswith(".weight"))
    return modules


class Adapter:
    """An adapter loaded in this replica's engine: what Serve's multiplexing holds."""

    def __init__(self, adapters: "Adapters", name: str, lora_id: int) -> None:
        self.adapters, self.name, self.lora_id = adapters, name, lora_id
        self.running = 0  # requests using it
        self.evicted = False  # by Serve: no new request gets it
        self.unloaded = False  # from the engine
        self._deleted = False

    @contextlib.contextmanager
    def using(self) -> Iterator[None]:
        """Count a request that uses the adapter; the last one out of an evicted adapter
        unloads it from the engine."""
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            if self.evicted and not self.running:
                self.adapters.unload(self)

    def __del__(self) -> None:
        """Serve's multiplexing calls this when it evicts the adapter (in a thread; the
        garbage collector, later, again)."""
        if self._deleted:
            return
        self._deleted = True
        with contextlib.suppress(RuntimeError):  # a closed loop: the replica is stopping
            self.adapters.loop.call_soon_threadsafe(self.adapters.evict, self)


class Adapters:
    """This replica's adapters: loaded on first use through Serve's model multiplexing
    (``max_adapters_per_replica`` held, the least recently used evicted and unloaded)."""

    def __init__(self, engine: Any, model_id: str, source: str, lora: dict[str, Any]) -> None:
        from ray import serve  # noqa: PLC0415

        self.engine, self.model_id, self.lora = engine, model_id, lora
        self.loop: asyncio.AbstractEventLoop | None = None  # the replica's, at the first load
        self.base = base_modules(source)
        self.cache = Path(tempfile.mkdtemp(prefix="adapters-"))  # copies of remote adapters
        self.failed: dict[str, tuple[float, str]] = {}  # name -> (until, why)
        self.live: dict[int, Adapter] = {}  # LoRA id -> adapter loaded, not yet unloaded
        self.metrics = AdapterMetrics(model_id)

        async def load(name: str) -> Adapter:  # a function: Serve keeps its cache on it
            return await self._load(name)

        per_replica = lora["max_adapters_per_replica"]
        self.get = serve.multiplexed(max_num_models_per_replica=per_replica)(load)

    def id(self, name: str) -> str:
        return f"{self.model_id}:{name}"

    async def _load(self, name: str) -> Adapter:
        """Fetch, check and load ``name``; ``AdapterError`` (remembered ``FAILED_S``, so a
        bad adapter is not fetched again on every request) if it cannot be served."""
        self.loop = asyncio.get_running_loop()
        until, why = self.failed.get(name, (0.0, ""))
        if time.monotonic() < until:
            raise AdapterError(why)
        start = time.monotonic()
        timeout = self.lora["load_timeout_s"]
        try:
            lora_id = await asyncio.wait_for(self._add(name), timeout)
        except (AdapterError, TimeoutError) as exc:
            why = str(exc) or f"it did not load within {timeout:g}s"
            self.failed[name] = (time.monotonic() + FAILED_S, why)
            self.metrics.failed(name)
            raise AdapterError(why) from None
        seconds = time.monotonic() - start
        self.metrics.loaded(name, seconds)
        logger.info("adapter %s loaded in %.2fs", self.id(name), seconds)
        adapter = self.live[lora_id] = Adapter(self, name, lora_id)
        return adapter

    async def _add(self, name: str) -> int:
        folder = await asyncio.to_thread(fetch_adapter, self.lora["source"], name, self.cache)
        await asyncio.to_thread(check_adapter, folder, self.lora["max_rank"], self.base)
        return await self.engine.add_adapter(self.id(name), folder)

    async def held(self) -> dict[str, list[str]]:
        """The adapters loaded here (by name): those Serve holds, those the engine holds."""
        lora_ids = await self.engine.lora_ids()
        return {
            "serve": sorted(a.name for a in self.live.values() if not a.evicted),
            "engine": sorted(self.live[i].name if i in self.live else f"#{i}" for i in lora_ids),
        }

    def evict(self, adapter: Adapter) -> None:
        """Serve evicted ``adapter``: no new request gets it (the next one loads it again);
        the engine drops it once its last request has ended."""
        adapter.evicted = True
        self.engine.forget_adapter(self.id(adapter.name), adapter.lora_id)
        self.metrics.evicted(adapter.name)
        if not adapter.running:
            self.unload(adapter)

    def unload(self, adapter: Adapter) -> None:
        if adapter.unloaded:
            return
        adapter.unloaded = True
        del self.live[adapter.lora_id]
        detached(self.engine.remove_adapter(adapter.lora_id))
        logger.info("adapter %s unloaded", self.id(adapter.name))


class AdapterMetrics:
    """The per-adapter metrics of a replica (its requests and tokens are the ingress's, with
    the adapter's id as ``model``)."""

    def __init__(self, model_id: str) -> None:
        from ray.serve import metrics  # noqa: PLC0415

        self.model_id = model_id
        self.loads = metrics.Counter(
            "openai_api_adapter_loads",
            description=METRICS["ray_openai_api_adapter_loads_total"][2],
            tag_keys=("model", "adapter", "outcome"),
        )
        self.load_seconds = metrics.Histogram(
            "openai_api_adapter_load_seconds",
            description=METRICS["ray_openai_api_adapter_load_seconds"][2],
            boundaries=LOAD_BUCKETS,
            tag_keys=("model", "adapter"),
        )
        self.requests = metrics.Counter(
            "openai_api_adapter_requests",
            description=METRICS["ray_openai_api_adapter_requests_total"][2],
            tag_keys=("model", "adapter"),
        )
        self.evictions = metrics.Counter(
            "openai_api_adapter_evictions",
            description=METRICS["ray_openai_api_adapter_evictions_total"][2],
            tag_keys=("model", "adapter"),
        )

    def loaded(self, adapter: str, seconds: float) -> None:
        tags = {"model": self.model_id, "adapter": adapter}
        self.loads.inc(tags={**tags, "outcome": "loaded"})
        self.load_seconds.observe(seconds, tags=tags)

    def ran(self, adapter: str) -> None:
        self.requests.inc(tags={"model": self.model_id, "adapter": adapter})

    def failed(self, adapter: str) -> None:
        self.loads.inc(tags={"model": self.model_id, "adapter": adapter, "outcome": "failed"})

    def evicted(self, adapter: str) -> None:
        self.evictions.inc(tags={"model": self.model_id, "adapter": adapter})
