"""The upstream deployment: one per remote OpenAI-compatible provider (CPU only)."""

import logging
from collections.abc import AsyncIterator
from typing import Any

from deployments.common.contracts import Frame
from deployments.common.usage import Account, metered
from deployments.upstream.client import Estimate, UpstreamClient

logger = logging.getLogger("ray.serve.deployments.upstream")


class UpstreamDeployment:
    """Forwards chat and completions for the provider's models over a pooled HTTP client."""

    def __init__(
        self, provider: str, settings: dict[str, Any], models: dict[str, dict[str, Any]]
    ) -> None:
        self.client = UpstreamClient(provider, settings, models)
        logger.info("upstream %s ready: %s", provider, sorted(models))

    async def generate(
        self,
        endpoint: str,
        body: dict[str, Any],
        request_id: str,
        account: Account | None = None,
    ) -> AsyncIterator[Frame]:
        """Run a chat (``endpoint="chat"``) or completions request at the provider; yields
        frames as the LLM deployment does (first frame: error, JSON body or first chunk).
        Cancelling the call closes the upstream request, and charges ``account`` an estimate
        of what was done (the provider's usage never came)."""
        estimate = Estimate(body)
        frames = self.client.generate(endpoint, body, request_id, estimate)
        async for frame in metered(frames, account, body["model"], estimate.used, True):
            yield frame

    async def ready(self) -> str:
        """Return the provider name once its ``/models`` answers (raises otherwise)."""
        await self.client.ready()
        return self.client.provider

    async def check_health(self) -> None:
        """The replica itself is healthy; the provider's state shows in /health (ready)."""
