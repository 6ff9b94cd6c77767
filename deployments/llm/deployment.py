"""The LLM deployment: one per configured LLM, a vLLM engine per replica.

Imports of vLLM happen in ``__init__`` (through ``deployments.llm.engine``), so building the
application graph does not need vLLM in the driver or the ingress.
"""

import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from deployments.common.channel import Batch, Outbox
from deployments.common.contracts import ErrorFrame, Frame
from deployments.common.usage import Account, metered
from deployments.llm.adapters import AdapterError, Adapters
from deployments.llm.schema import RequestStats

logger = logging.getLogger("ray.serve.deployments.llm")

# Offline, no usage stats. (AsyncLLM runs its engine core in a child process whatever
# VLLM_ENABLE_V1_MULTIPROCESSING says; the flag only keeps vLLM from reseeding this process.)
ENGINE_ENV_DEFAULTS = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    # Our samplers implement the V1 runner's logits-processor interface; keep that runner.
    "VLLM_USE_V2_MODEL_RUNNER": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


class LLMDeployment:
    """Serves OpenAI chat and legacy completions for one model with vLLM."""

    adapters: Adapters | None = None  # its LoRA adapters (none for a subclass without)

    def __init__(
        self,
        model_id: str,
        source: str,
        engine_options: dict[str, Any],
        lora: dict[str, Any] | None = None,
    ) -> None:
        """``lora``: the model's ``lora`` options (``serve_app/families/llm.py``), its
        ``source`` resolved; None without adapters."""
        for key, value in ENGINE_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from deployments.llm.engine import VLLMEngine  # noqa: PLC0415 - vLLM only in replicas

        self.model_id = model_id
        self.engine = VLLMEngine(model_id, source, engine_options, lora)
        self.adapters = Adapters(self.engine, model_id, source, lora) if lora else None
        logger.info("LLM %s ready (source %s)", model_id, source)

    @functools.cached_property
    def outbox(self) -> Outbox:
        return Outbox(serve.get_replica_context().replica_id.unique_id)

    async def generate(
        self,
        endpoint: str,
        body: dict[str, Any],
        request_id: str,
        caller: str | None = None,
        account: Account | None = None,
    ) -> AsyncIterator[Any]:
        """Run a chat (``endpoint="chat"``) or completions request; yields frames.

        Call through a streaming handle. The first frame is an ``ErrorFrame``, a ``JSONFrame``
        (non-streaming request) or the first ``ChunkFrame`` of a stream. Chunks are yielded as
        soon as the engine produces them; with a ``caller`` (an ingress replica), those after
        the first go on its channel when it has one here (``Outbox.relay``). Cancelling the
        call aborts the generation; what the engine did until then is charged to ``account``
        (``deployments/common/usage.py``). A call routed for a LoRA adapter (Serve's
        multiplexed model id) runs with it, loaded first if this replica lacks it.
        """
        name = serve.get_multiplexed_model_id() if self.adapters is not None else ""
        adapter, extra = None, ()
        if name:
            try:
                adapter = await self.adapters.get(name)
            except AdapterError as exc:
                yield ErrorFrame(
                    400,
                    f"The adapter '{self.adapters.id(name)}' cannot be served: {exc}.",
                    param="model",
                    code="invalid_adapter",
                )
                return
            extra = (self.adapters.id(name),)
            self.adapters.metrics.ran(name)
        with adapter.using() if adapter else contextlib.nullcontext():
            frames = self._frames(endpoint, body, request_id, account, *extra)
            async for frame in self.outbox.relay(frames, request_id, caller):
                yield frame

    def _frames(
        self,
        endpoint: str,
        body: dict[str, Any],
        request_id: str,
        account: Account | None,
        model: str | None = None,
    ) -> AsyncIterator[Frame]:
        """The engine's frames for one request (with the adapter ``model``, if given), what
        it did charged to ``account`` if the request is cut short."""
        stats = RequestStats()
        frames = self.engine.generate(endpoint, body, request_id, stats, model)
        return metered(frames, account, model or self.model_id, stats.used)

    async def channel(self, caller: str) -> AsyncIterator[str | Batch]:
        """The per-step channel to the ingress replica ``caller`` (``Outbox.channel``)."""
        async for message in self.outbox.channel(caller):
            yield message

    async def ready(self) -> str:
        """Return the model id once the engine answers a health check (raises otherwise)."""
        await self.engine.check_health()
        return self.model_id

    async def adapters_held(self) -> dict[str, list[str]]:
        """The LoRA adapters this replica holds: in Serve's multiplexing, in the engine."""
        return await self.adapters.held() if self.adapters else {"serve": [], "engine": []}

    async def num_unfinished_requests(self) -> int:
        """Requests the engine is still working on (queued or generating)."""
        return self.engine.num_unfinished_requests()

    async def check_health(self) -> None:
        """Serve's periodic health check: raises when the engine core is dead."""
        await self.engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
