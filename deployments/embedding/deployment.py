"""The embedding deployment: one per configured embedding model, a vLLM pooling engine per
replica. vLLM is imported in ``__init__`` (through ``deployments.embedding.engine``).

It is the LLM deployment with another engine: the same ``generate`` call (here one frame,
the whole JSON body or an ``ErrorFrame``; cancelling the call aborts the engine work), the
same readiness, health check and shutdown."""

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from deployments.common.contracts import Frame
from deployments.common.usage import Account
from deployments.llm.deployment import ENGINE_ENV_DEFAULTS, LLMDeployment

logger = logging.getLogger("ray.serve.deployments.embedding")


class EmbeddingDeployment(LLMDeployment):
    """Serves OpenAI embeddings for one model with vLLM's pooling runner."""

    async def __init__(
        self, model_id: str, source: str, engine_options: dict[str, Any], dimensions: int
    ) -> None:
        """Load the engine, then fail the replica unless the model makes vectors of the
        configured ``dimensions`` (what ``/v1/models`` shows)."""
        for key, value in ENGINE_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from deployments.embedding.engine import EmbeddingEngine  # noqa: PLC0415 - replicas only

        self.model_id = model_id
        self.engine = EmbeddingEngine(model_id, source, engine_options)
        await self.engine.check_output(dimensions)
        logger.info("embedding %s ready (%d dimensions, source %s)", model_id, dimensions, source)

    def _frames(
        self, endpoint: str, body: dict[str, Any], request_id: str, account: Account | None
    ) -> AsyncIterator[Frame]:
        """One frame: the whole body, or an error (the family charges nothing cut short, so
        ``account`` is never given)."""
        return self.engine.generate(endpoint, body, request_id)
