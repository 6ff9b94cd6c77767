"""The ``think_tags`` reasoning parser: ``<think>...</think>`` written as plain text.

Small models have no dedicated think tokens, so vLLM's token-based parsers (qwen3,
deepseek_r1) refuse them. This parser follows the request instead: when the chat template
was rendered with ``enable_thinking`` (which ``reasoning_effort`` sets), the template opens a
``<think>`` block and vLLM's text-based Olmo3 parser splits reasoning from content; otherwise
vLLM's identity parser leaves everything in ``content``. Loaded into the engine and its core
process through ``reasoning_parser_plugin``.
"""

from collections.abc import Sequence

from vllm.reasoning import ReasoningParser, ReasoningParserManager
from vllm.reasoning.deepseek_v3_reasoning_parser import DeepSeekV3ReasoningParser
from vllm.reasoning.identity_reasoning_parser import IdentityReasoningParser
from vllm.reasoning.olmo3_reasoning_parser import Olmo3ReasoningParser

NAME = "think_tags"
THINK_START = "<think>"
THINK_END = "</think>"


@ReasoningParserManager.register_module(NAME)
class ThinkTagsReasoningParser(DeepSeekV3ReasoningParser):
    """Delegates to Olmo3 (thinking on) or identity (off), as DeepSeek V3's parser does."""

    def __init__(self, tokenizer, *args, **kwargs) -> None:
        ReasoningParser.__init__(self, tokenizer, *args, **kwargs)
        template_kwargs = kwargs.get("chat_template_kwargs") or {}
        self.thinking = bool(template_kwargs.get("enable_thinking"))
        parser = Olmo3ReasoningParser if self.thinking else IdentityReasoningParser
        self._parser = parser(tokenizer, *args, **kwargs)

    def extract_reasoning(self, model_output: str, request) -> tuple[str | None, str | None]:
        """As in streams: with thinking on, the output is reasoning until ``</think>``."""
        if not self.thinking:
            return None, model_output
        reasoning, closed, content = model_output.removeprefix(THINK_START).partition(THINK_END)
        return reasoning or None, (content or None) if closed else None

    def count_reasoning_tokens(self, token_ids: Sequence[int]) -> int:
        """Generated tokens up to and including the one that completes ``</think>``."""
        if not self.thinking:
            return 0
        text = ""
        for count, token_id in enumerate(token_ids, start=1):
            text += self.model_tokenizer.decode([token_id])
            if THINK_END in text:
                return count
        return len(token_ids)
