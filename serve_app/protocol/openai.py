"""OpenAI chat and legacy completion requests, strictly: every field does what it says or
the request is refused with a 400 naming it.

A request carries OpenAI's fields, llama.cpp-style samplers and options (``sampling.py``,
``enable_thinking``, ``return_prompt``, top-level ``include_usage``) and the vLLM extensions
we keep. Advisory OpenAI fields (``user``, ``metadata``, ``store``, ``service_tier``, ...) are
accepted and change nothing; fields asking for what we cannot do get a 400 saying so.
``to_backend`` turns the request into the vLLM body the LLM replica runs.
"""

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from serve_app.errors import APIError
from serve_app.protocol.messages import AssistantMessage, FilePart, ImagePart, Message
from serve_app.protocol.sampling import SamplingFields
from serve_app.protocol.strict import Strict, tagged

NAME = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
MetaKey = Annotated[str, Field(max_length=64)]
MetaValue = Annotated[str, Field(max_length=512)]
TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,9}$")]
# A stop string is matched against the text at every engine step: its length is bounded.
StopString = Annotated[str, Field(max_length=1024)]
Stop = StopString | Annotated[list[StopString], Field(min_length=1, max_length=16)]
Prompt = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    | Annotated[
        list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]], Field(min_length=1)
    ]
)
# Fields sent to vLLM as they are, when the client set them.
PASSTHROUGH = (
    "stream",
    "n",
    "stop",
    "seed",
    "logit_bias",
    "max_tokens",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "include_stop_str_in_output",
    "stop_token_ids",
)


def check_stream_options(stream_options: Any, stream: bool | None) -> None:
    if stream_options is not None and not stream:
        raise APIError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )


class StreamOptions(Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = Field(None, description="Advisory: we never pad.")


class StructuredOutputs(Strict):
    """vLLM's constrained decoding: exactly one of json, regex, choice, grammar, json_object,
    structural_tag."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1)
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_any_whitespace: bool | None = None
    disable_additional_properties: bool | None = None
    whitespace_pattern: str | None = None


class GenerationRequest(SamplingFields):
    """What chat and legacy completions share."""

    model: str = Field(min_length=1, max_length=256)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    include_usage: bool | None = Field(None, description="llama.cpp: stream_options alias.")
    n: int | None = Field(None, ge=1, le=128)
    stop: Stop | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    logit_bias: dict[TokenId, Annotated[float, Field(ge=-100, le=100)]] | None = None
    max_tokens: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)  # advisory
    return_prompt: bool | None = Field(None, description="Add the rendered prompt.")
    # vLLM extensions we keep
    ignore_eos: bool | None = None
    min_tokens: int | None = Field(None, ge=0)
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    structured_outputs: StructuredOutputs | None = None

    def check(self) -> None:
        """Rules that span fields; 400 naming the field."""
        check_stream_options(self.stream_options, self.stream)
        if self.both_repeat_penalties():
            raise APIError(
                400,
                "Set either 'repeat_penalty' (llama.cpp, windowed) or 'repetition_penalty' "
                "(vLLM, whole context), not both.",
                param="repeat_penalty",
            )

    def to_backend(self, sampling_defaults: SamplingFields | None) -> dict[str, Any]:
        """The vLLM request body (unset fields stay unset)."""
        body: dict[str, Any] = {
            n: getattr(self, n) for n in PASSTHROUGH if n in self.model_fields_set
        }
        body = {k: v for k, v in body.items() if v is not None}
        body.update(self.sampling_payload(sampling_defaults))
        include_usage = self.include_usage
        if self.stream_options is not None and self.stream_options.include_usage is not None:
            include_usage = self.stream_options.include_usage
        if self.stream and include_usage:
            body["stream_options"] = {"include_usage": True}
        if self.structured_outputs is not None:
            body["structured_outputs"] = self.structured_outputs.model_dump(
                by_alias=True, exclude_none=True
            )
        if self.return_prompt:
            body["return_prompt"] = True
        return body


class JSONSchema(Strict):
    name: NAME
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(Strict):
    type: Literal["text"]


class JSONObjectFormat(Strict):
    type: Literal["json_object"]


class JSONSchemaFormat(Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchema


class FunctionDefinition(Strict):
    name: NAME
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class CustomTool(Strict):
    type: Literal["custom"]
    custom: dict[str, Any]


class ToolName(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: ToolName


class AllowedToolsChoice(Strict):
    type: Literal["allowed_tools"]
    allowed_tools: dict[str, Any]


class CustomToolChoice(Strict):
    type: Literal["custom"]
    custom: dict[str, Any]


class Prediction(Strict):
    type: Literal["content"]
    content: str | list[dict[str, Any]]


class ChatCompletionRequest(GenerationRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: tagged("type", TextFormat, JSONObjectFormat, JSONSchemaFormat) | None = None
    tools: list[tagged("type", FunctionTool, CustomTool)] | None = Field(None, max_length=128)
    tool_choice: (
        Literal["none", "auto", "required"]
        | tagged("type", NamedToolChoice, AllowedToolsChoice, CustomToolChoice)
        | None
    ) = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    enable_thinking: bool | Literal["true", "false"] | None = Field(
        None, description="llama.cpp: turn the template's thinking on or off."
    )
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    echo: bool | None = None
    # Advisory OpenAI fields: accepted, change nothing.
    metadata: dict[MetaKey, MetaValue] | None = Field(None, max_length=16)
    store: bool | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: str | None = Field(None, max_length=64)
    prediction: Prediction | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    # Asked-for features we do not have: refused in check() unless null.
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None

    @field_validator("enable_thinking")
    @classmethod
    def _thinking_flag(cls, value: bool | str | None) -> bool | None:
        return value == "true" if isinstance(value, str) else value

    def check(self) -> None:
        super().check()
        for name, what in (
            ("audio", "Audio output"),
            ("web_search_options", "Web search"),
            ("moderation", "Moderation"),
            ("functions", "The deprecated 'functions' parameter (use 'tools')"),
            ("function_call", "The deprecated 'function_call' parameter (use 'tool_choice')"),
        ):
            if getattr(self, name) is not None:
                raise APIError(400, f"{what} is not supported by this server.", param=name)
        if self.modalities and "audio" in self.modalities:
            raise APIError(400, "Audio output is not supported.", param="modalities")
        if self.verbosity not in (None, "medium"):
            raise APIError(
                400, "Only the default verbosity ('medium') is supported.", param="verbosity"
            )
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(
                400, "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs"
            )
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise APIError(
                400,
                "Set only one of 'max_tokens' and 'max_completion_tokens'.",
                param="max_tokens",
            )
        self._check_tools()
        self._check_messages()
        thinking = (self.chat_template_kwargs or {}).get("enable_thinking")
        if self.enable_thinking is not None and thinking not in (None, self.enable_thinking):
            raise APIError(
                400,
                "'enable_thinking' contradicts chat_template_kwargs.enable_thinking.",
                param="enable_thinking",
            )

    def _check_tools(self) -> None:
        names = set()
        for i, tool in enumerate(self.tools or ()):
            if isinstance(tool, CustomTool):
                raise APIError(
                    400, "Custom tools are not supported; use function tools.", param=f"tools[{i}]"
                )
            names.add(tool.function.name)
        choice = self.tool_choice
        if choice is None:
            return
        if not self.tools and choice != "none":
            raise APIError(
                400,
                "'tool_choice' is only allowed when 'tools' are specified.",
                param="tool_choice",
            )
        if isinstance(choice, AllowedToolsChoice | CustomToolChoice):
            raise APIError(
                400, f"tool_choice of type '{choice.type}' is not supported.", param="tool_choice"
            )
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise APIError(
                400,
                f"tool_choice names the function '{choice.function.name}', which is not in "
                "'tools'.",
                param="tool_choice",
            )

    def _check_messages(self) -> None:
        for i, message in enumerate(self.messages):
            if isinstance(message, AssistantMessage) and not (
                message.content or message.tool_calls
            ):
                raise APIError(
                    400,
                    f"messages[{i}]: an assistant message needs 'content' or 'tool_calls'.",
                    param=f"messages[{i}].content",
                )
            if not isinstance(message.content, list):
                continue
            for j, part in enumerate(message.content):
                if isinstance(part, ImagePart | FilePart):
                    kind = "image" if isinstance(part, ImagePart) else "file"
                    raise APIError(
                        400,
                        f"The model '{self.model}' accepts text and audio only; {kind} content "
                        "parts are not supported.",
                        param=f"messages[{i}].content[{j}]",
                        code="unsupported_content",
                    )

    def uses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    def thinking(self) -> bool:
        """Did the request ask for reasoning?"""
        if self.enable_thinking is not None:
            return self.enable_thinking
        if (self.chat_template_kwargs or {}).get("enable_thinking") is not None:
            return bool(self.chat_template_kwargs["enable_thinking"])
        return self.reasoning_effort not in (None, "none")

    def to_backend(self, sampling_defaults: SamplingFields | None) -> dict[str, Any]:
        body = super().to_backend(sampling_defaults)
        body["messages"] = [m.model_dump(exclude_none=True) for m in self.messages]
        for name in (
            "max_completion_tokens",
            "logprobs",
            "top_logprobs",
            "tool_choice",
            "parallel_tool_calls",
            "reasoning_effort",
            "add_generation_prompt",
            "continue_final_message",
            "echo",
        ):
            value = getattr(self, name)
            if value is not None:
                body[name] = value.model_dump() if isinstance(value, Strict) else value
        if self.response_format is not None:
            body["response_format"] = self.response_format.model_dump(
                by_alias=True, exclude_none=True
            )
        if self.tools:
            body["tools"] = [t.model_dump(exclude_none=True) for t in self.tools]
            body.setdefault("tool_choice", "auto")  # OpenAI's default when tools are given
        kwargs = dict(self.chat_template_kwargs or {})
        if self.enable_thinking is not None:
            kwargs["enable_thinking"] = self.enable_thinking
        if kwargs:
            body["chat_template_kwargs"] = kwargs
        return body


class CompletionRequest(GenerationRequest):
    prompt: Prompt
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None

    def check(self) -> None:
        super().check()
        if self.best_of not in (None, self.n or 1):
            raise APIError(
                400, "'best_of' other than 'n' is not supported by this server.", param="best_of"
            )
        if self.suffix:
            raise APIError(400, "'suffix' (insertion) is not supported.", param="suffix")

    def to_backend(self, sampling_defaults: SamplingFields | None) -> dict[str, Any]:
        body = super().to_backend(sampling_defaults)
        body["prompt"] = self.prompt
        for name in ("echo", "logprobs"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        return body
