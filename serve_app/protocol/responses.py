"""OpenAI Responses requests (``POST /v1/responses``), strictly (their items: ``items.py``).

A request becomes a chat request (``ResponseRequest.chat_body``): the stored history (items
of earlier responses) plus this request's items turn into chat messages, and the fields map
onto chat's (``max_output_tokens`` -> ``max_completion_tokens``, ``text.format`` ->
``response_format``, ``reasoning.effort`` -> ``reasoning_effort``, flat function tools ->
chat's nested ones). Chat's own validation then runs on it, so samplers, tools and limits
behave exactly as in chat. Fields for what we do not have (built-in tools, prompt templates,
reasoning summaries, encrypted reasoning, ...) are refused with a 400 naming them.
"""

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from serve_app.errors import APIError
from serve_app.protocol.items import (
    InputItem,
    MessageItem,
    check_items,
    stored_items,
    to_messages,
)
from serve_app.protocol.openai import (
    NAME,
    JSONObjectFormat,
    MetaKey,
    MetaValue,
    TextFormat,
    check_stream_options,
)
from serve_app.protocol.sampling import SamplingFields
from serve_app.protocol.strict import Strict, tagged


class FunctionTool(Strict):
    type: Literal["function"]
    name: NAME
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class BuiltinTool(Strict):
    """Any other tool type: refused in ``check`` (we run no built-in tools)."""

    model_config = {**Strict.model_config, "extra": "allow"}
    type: str


def _tool_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "function" if kind == "function" else "other"


Tool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[BuiltinTool, Tag("other")],
    Discriminator(_tool_kind),
]


class FunctionChoice(Strict):
    type: Literal["function"]
    name: str


class JSONSchemaFormat(Strict):
    """Chat's ``json_schema`` format with its fields flat (``text.format`` in Responses)."""

    type: Literal["json_schema"]
    name: NAME
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextOptions(Strict):
    format: tagged("type", TextFormat, JSONObjectFormat, JSONSchemaFormat) | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningOptions(Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None
    mode: str | None = None
    context: Literal["auto", "current_turn", "all_turns"] | None = None


class ConversationRef(Strict):
    id: str = Field(min_length=1, max_length=128)


class StreamOptions(Strict):
    include_obfuscation: bool | None = Field(None, description="Advisory: we never pad.")


INCLUDE = Literal[
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
]
# Fields refused unless null: what they ask for, for the 400.
NOT_SUPPORTED = {
    "prompt": "Reusable prompts",
    "moderation": "Moderation",
    "context_management": "Context management",
}
# Fields echoed on the Response object as given (OpenAI's defaults when unset).
ECHOED = (
    "instructions",
    "max_output_tokens",
    "max_tool_calls",
    "previous_response_id",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "top_logprobs",
    "user",
)


class ResponseRequest(SamplingFields):
    """``POST /v1/responses``: OpenAI's fields, plus chat's llama.cpp and vLLM samplers."""

    model: str = Field(min_length=1, max_length=256)
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=128)
    store: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    max_tool_calls: int | None = Field(None, ge=0, description="Built-in tools only: none here.")
    metadata: dict[MetaKey, MetaValue] | None = Field(None, max_length=16)
    parallel_tool_calls: bool | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | dict[str, Any] | None = None
    text: TextOptions | None = None
    reasoning: ReasoningOptions | None = None
    include: list[INCLUDE] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    truncation: Literal["auto", "disabled"] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="vLLM: sampling seed.")
    # Advisory: echoed, change nothing.
    user: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=64)
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    conversation: Annotated[str, Field(min_length=1, max_length=128)] | ConversationRef | None = (
        None
    )
    background: bool | None = None
    # Refused unless null (NOT_SUPPORTED).
    prompt: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    context_management: list[dict[str, Any]] | dict[str, Any] | None = None

    @property
    def conversation_id(self) -> str | None:
        if isinstance(self.conversation, ConversationRef):
            return self.conversation.id
        return self.conversation

    def check(self, max_items: int) -> None:
        """Rules that span fields, and what we refuse; 400 naming the field."""
        if self.background and self.store is False:
            raise APIError(
                400, "A background response must be stored ('store' must not be false).",
                param="store",
            )  # fmt: skip
        if self.conversation is not None and self.previous_response_id is not None:
            raise APIError(
                400,
                "'conversation' and 'previous_response_id' cannot be used together.",
                param="conversation",
            )
        for name, what in NOT_SUPPORTED.items():
            if getattr(self, name) is not None:
                raise APIError(400, f"{what} is not supported by this server.", param=name)
        if isinstance(self.input, list) and len(self.input) > max_items:
            raise APIError(
                400,
                f"'input' has {len(self.input)} items; at most {max_items} are allowed.",
                param="input",
                code="too_many_items",
            )
        check_stream_options(self.stream_options, self.stream)  # the samplers: chat's check
        reasoning = self.reasoning or ReasoningOptions()
        if reasoning.summary or reasoning.generate_summary:
            raise APIError(
                400,
                "Reasoning summaries are not supported: reasoning comes as the reasoning "
                "item's text (content of type reasoning_text).",
                param="reasoning.summary",
            )
        if reasoning.mode is not None or reasoning.context not in (None, "auto"):
            name = "mode" if reasoning.mode is not None else "context"
            raise APIError(400, f"reasoning.{name} is not supported.", param=f"reasoning.{name}")
        if "reasoning.encrypted_content" in (self.include or ()):
            raise APIError(
                400,
                "Encrypted reasoning is not supported; chain with previous_response_id to "
                "keep reasoning.",
                param="include",
            )
        for value in self.include or ():
            if value != "message.output_text.logprobs":
                raise APIError(
                    400,
                    f"include '{value}' needs a built-in tool this server does not run.",
                    param="include",
                )
        if self.top_logprobs and "message.output_text.logprobs" not in (self.include or ()):
            raise APIError(
                400,
                "'top_logprobs' requires include ['message.output_text.logprobs'].",
                param="top_logprobs",
            )
        if (self.text and self.text.verbosity) not in (None, "medium"):
            raise APIError(
                400, "Only the default verbosity ('medium') is supported.", param="text.verbosity"
            )
        self._check_tools()
        self._check_items()

    def _check_tools(self) -> None:
        names = set()
        for i, tool in enumerate(self.tools or ()):
            if isinstance(tool, BuiltinTool):
                raise APIError(
                    400,
                    f"Tools of type '{tool.type}' are not supported; use function tools.",
                    param=f"tools[{i}]",
                )
            names.add(tool.name)
        choice = self.tool_choice
        if isinstance(choice, dict):
            raise APIError(
                400,
                f"tool_choice of type '{choice.get('type')}' is not supported.",
                param="tool_choice",
            )
        if choice not in (None, "none") and not self.tools:
            raise APIError(
                400,
                "'tool_choice' is only allowed when 'tools' are specified.",
                param="tool_choice",
            )
        if isinstance(choice, FunctionChoice) and choice.name not in names:
            raise APIError(
                400,
                f"tool_choice names the function '{choice.name}', which is not in 'tools'.",
                param="tool_choice",
            )

    def _check_items(self) -> None:
        if not isinstance(self.input, str):
            check_items(self.input, "input")

    def input_items(self) -> list[dict[str, Any]]:
        """This request's input as stored items (``stored_items``)."""
        if isinstance(self.input, str):
            return stored_items([MessageItem(type="message", role="user", content=self.input)])
        return stored_items(self.input)

    def chat_body(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The chat request this response runs: ``items`` (history, then this input) as
        messages after this request's ``instructions``."""
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        messages += to_messages(items)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        body.update(self.model_dump(include=set(SamplingFields.model_fields), exclude_none=True))
        for ours, chat in (
            ("max_output_tokens", "max_completion_tokens"),
            ("parallel_tool_calls", "parallel_tool_calls"),
            ("seed", "seed"),
            ("top_logprobs", "top_logprobs"),
        ):
            if getattr(self, ours) is not None:
                body[chat] = getattr(self, ours)
        if "message.output_text.logprobs" in (self.include or ()):
            body["logprobs"] = True
        if self.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": t.model_dump(exclude_none=True, exclude={"type"}),
                }
                for t in self.tools
            ]
        if isinstance(self.tool_choice, FunctionChoice):
            body["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        effort = self.reasoning.effort if self.reasoning else None
        if effort is not None:
            body["reasoning_effort"] = effort
        fmt = self.text.format if self.text else None
        if isinstance(fmt, JSONSchemaFormat):
            schema = fmt.model_dump(by_alias=True, exclude_none=True, exclude={"type"})
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt is not None:
            body["response_format"] = {"type": fmt.type}
        return body


CHAT_PARAMS = {
    "messages": "input",
    "input_tokens": "input",  # vLLM's name for a prompt longer than the model's context
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
    "reasoning_effort": "reasoning.effort",
    "enable_thinking": "reasoning.effort",
}


def response_param(param: str | None) -> str | None:
    """A chat request's ``param`` as the Responses request names it."""
    if param is None:
        return None
    head = param.split("[", 1)[0].split(".", 1)[0]
    return CHAT_PARAMS.get(head, param)
