"""What a replica asks of the vLLM engine it runs, the same for chat and embeddings."""

from typing import Any


class HeldEngine:
    """A holder of one vLLM ``AsyncLLM`` in ``engine``: its health, load and shutdown."""

    engine: Any  # vllm.v1.engine.async_llm.AsyncLLM; not imported here (vLLM-free module)

    async def check_health(self) -> None:
        """Raise if the engine core is dead."""
        await self.engine.check_health()

    def num_unfinished_requests(self) -> int:
        return self.engine.get_num_unfinished_requests()

    def shutdown(self) -> None:
        self.engine.shutdown()
