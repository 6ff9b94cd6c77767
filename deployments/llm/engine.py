"""The one module that runs vLLM: ``AsyncLLM`` plus vLLM's own OpenAI serving layer.

Chat templates, sampling parameters, tool and reasoning parsing, logprobs and structured
outputs therefore behave exactly as in vLLM's server. Our llama.cpp-style samplers
(``samplers.py``) and the ``think_tags`` reasoning parser (``reasoning.py``) plug into it.
This module turns what that layer returns into the plain frames of
``deployments.common.contracts``, with our usage extras added.
"""

import contextvars
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ray
from pydantic import ValidationError
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.entrypoints.openai.models.protocol import BaseModelPath
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest
from vllm.renderers.chat_utils import load_chat_template
from vllm.renderers.online_renderer import OnlineRenderer
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

from deployments.common.contracts import (
    ChunkFrame,
    Frame,
    JSONFrame,
    UsageFrame,
    token_usage,
)
from deployments.common.engine import HeldEngine
from deployments.common.errors import error_frame, validation_error
from deployments.llm import reasoning
from deployments.llm.adapters import AdapterError
from deployments.llm.samplers import DRY, XTC, RepeatPenaltyWindow
from deployments.llm.schema import (
    RequestStats,
    add_logprobs_refusal,
    add_usage_extras,
    drop_nulls,
)

_SSE_PREFIX = "data: "
_SSE_DONE = "[DONE]"
TEMPLATES = Path(__file__).resolve().parent / "templates"
# Options of the serving layer, not of the engine.
SERVING_OPTIONS = (
    "chat_template",
    "tool_call_parser",
    "enable_auto_tool_choice",
    "tool_strict_level",
)
# The request being served in this task: the engine tap reports into it. Set, never reset:
# Serve runs each call in a task of its own, whose context dies with it (and a generator
# closed from another task could not reset it there).
_stats: contextvars.ContextVar[RequestStats | None] = contextvars.ContextVar(
    "request_stats", default=None
)


def template_path(value: str | None) -> str | None:
    """A chat template: inline Jinja, an absolute path, or a file name under ``templates/``."""
    if not value or "{" in value or Path(value).is_absolute():
        return value
    return str(TEMPLATES / value)


def engine_args(
    model_id: str, source: str, options: dict[str, Any], lora: dict[str, Any] | None = None
) -> AsyncEngineArgs:
    """Build ``AsyncEngineArgs`` from the config's engine options (and ``lora`` options)."""
    opts = dict(options)
    extra = dict(opts.pop("extra", {}) or {})
    for key in SERVING_OPTIONS:
        opts.pop(key, None)
    reasoning_parser = opts.pop("reasoning_parser", None)
    if reasoning_parser:
        extra.setdefault("reasoning_parser", reasoning_parser)
        extra.setdefault("reasoning_parser_plugin", reasoning.__file__)
    # Sampling defaults come from our config (`sampling_defaults`), not generation_config.json.
    extra.setdefault("generation_config", "vllm")
    kwargs = {k: v for k, v in opts.items() if v is not None}
    if lora is not None:
        kwargs.update(
            enable_lora=True,
            max_loras=lora["max_loras"],
            max_lora_rank=lora["max_rank"],
            # Room for adapters Serve evicted that still finish their requests: the engine
            # itself evicts none that Serve holds (Adapters unloads the evicted).
            max_cpu_loras=lora["max_adapters_per_replica"] + lora["max_loras"],
        )
    return AsyncEngineArgs(
        model=source,
        served_model_name=[model_id],
        disable_log_stats=False,  # fills RequestOutput.metrics (tokens_per_second)
        logits_processors=[RepeatPenaltyWindow, DRY, XTC],
        **kwargs,
        **extra,
    )


class VLLMEngine(HeldEngine):
    """One vLLM engine and the OpenAI serving objects bound to it."""

    def __init__(
        self,
        model_id: str,
        source: str,
        options: dict[str, Any],
        lora: dict[str, Any] | None = None,
    ) -> None:
        self.model_id = model_id
        self.engine = AsyncLLM.from_engine_args(
            engine_args(model_id, source, options, lora),
            usage_context=UsageContext.OPENAI_API_SERVER,
            # vLLM's Prometheus metrics (vllm:*), exported through Ray's metrics agent.
            stat_loggers=[RayPrometheusStatLogger] if ray.is_initialized() else None,
        )
        self._generate = self.engine.generate
        self.engine.generate = self._tapped_generate  # the serving layer calls this
        processor = self.engine.output_processor
        add_request = processor.add_request

        def tapped_add_request(request: Any, *args: Any, **kwargs: Any) -> None:
            """Keep the engine's record of each sequence of the request being served (its
            counts of what was done outlive an abort: ``RequestStats.used``)."""
            add_request(request, *args, **kwargs)
            stats = _stats.get()
            state = processor.request_states.get(request.request_id)
            if stats is not None and state is not None:
                stats.states.append(state)

        processor.add_request = tapped_add_request  # AsyncLLM.generate calls it in our task
        chat_template = load_chat_template(template_path(options.get("chat_template")))
        tool_parser = options.get("tool_call_parser")
        auto_tools = bool(options.get("enable_auto_tool_choice"))
        reasoning_parser = options.get("reasoning_parser") or ""
        self.models = OpenAIServingModels(
            engine_client=self.engine,
            base_model_paths=[BaseModelPath(name=model_id, model_path=source)],
        )
        self.renderer = OnlineRenderer(
            model_config=self.engine.model_config,
            renderer=self.engine.renderer,
            request_logger=None,
            chat_template=chat_template,
            chat_template_content_format="auto",
            trust_request_chat_template=False,
            trust_request_mm_kwargs=False,
            enable_auto_tools=auto_tools,
            exclude_tools_when_tool_choice_none=False,
            tool_parser=tool_parser,
            tool_strict_level=options.get("tool_strict_level", "auto"),
            reasoning_parser=reasoning_parser,
            default_chat_template_kwargs=None,
            log_error_stack=False,
        )
        self.renderer.warmup()
        self.chat = OpenAIServingChat(
            self.engine,
            self.models,
            "assistant",
            online_renderer=self.renderer,
            request_logger=None,
            chat_template=chat_template,
            chat_template_content_format="auto",
            enable_auto_tools=auto_tools,
            tool_parser=tool_parser,
            reasoning_parser=reasoning_parser,
        )
        self.completion = OpenAIServingCompletion(
            self.engine,
            self.models,
            online_renderer=self.renderer,
            request_logger=None,
        )

    async def add_adapter(self, name: str, folder: Path) -> int:
        """Load the LoRA adapter in ``folder`` into the engine as model ``name``; its
        LoRA id (``AdapterError`` if vLLM refuses it). A registration left under ``name``
        is an evicted adapter's (``forget_adapter``): its requests keep its LoRA id."""
        self.models.lora_requests.pop(name, None)
        request = LoadLoRAAdapterRequest(lora_name=name, lora_path=str(folder))
        result = await self.models.load_lora_adapter(request)
        if isinstance(result, ErrorResponse):
            raise AdapterError(f"vLLM could not load it: {result.error.message}")
        return self.models.lora_requests[name].lora_int_id

    def forget_adapter(self, name: str, lora_id: int) -> None:
        """New requests for ``name`` no longer get the adapter of ``lora_id``."""
        loaded = self.models.lora_requests.get(name)
        if loaded is not None and loaded.lora_int_id == lora_id:
            del self.models.lora_requests[name]

    async def remove_adapter(self, lora_id: int) -> None:
        """Give the memory of the adapter of ``lora_id`` back (vLLM's own unload does not)."""
        await self.engine.remove_lora(lora_id)

    async def lora_ids(self) -> set[int]:
        """The LoRA ids of the adapters the engine holds in memory."""
        return await self.engine.list_loras()

    async def _tapped_generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """``AsyncLLM.generate``, reporting the prompt and each finished sequence to the
        request being served."""
        stats = _stats.get()
        generated = 0  # streams get deltas (count every output), the rest one final output
        async for output in self._generate(*args, **kwargs):
            if stats is not None:
                if stats.want_prompt and stats.prompt is None:
                    stats.prompt = output.prompt
                    if stats.prompt is None and output.prompt_token_ids:
                        stats.prompt = self.renderer.tokenizer.decode(output.prompt_token_ids)
                generated += sum(len(o.token_ids) for o in output.outputs)
                if output.finished:
                    metrics = output.metrics
                    stats.observe(
                        generated,
                        getattr(metrics, "scheduled_ts", 0.0),
                        getattr(metrics, "last_token_ts", 0.0),
                    )
            yield output

    async def generate(
        self,
        endpoint: str,
        body: dict[str, Any],
        request_id: str,
        stats: RequestStats,
        model: str | None = None,
    ) -> AsyncIterator[Frame]:
        """Run one OpenAI request (``endpoint`` is ``chat`` or ``completions``) and yield frames.

        ``body`` is a vLLM request body plus ``return_prompt`` (ours: add the rendered prompt).
        A stream always ends with a ``UsageFrame`` (token counts); the usage chunk itself is
        only sent on when the client asked for it (``stream_options.include_usage``).
        ``stats`` gets what the engine reports of the request (``RequestStats.used``: what it
        did so far, when the request is cut short). ``model``: a loaded adapter's name, to
        run the request with it.
        """
        body = {**body, "model": model or self.model_id, "request_id": request_id}
        return_prompt = bool(body.pop("return_prompt", False))
        chat = endpoint == "chat"
        options = body.get("stream_options") or {}
        client_wants_usage = bool(options.get("include_usage"))
        if body.get("stream"):
            body["stream_options"] = {**options, "include_usage": True}
        stats.want_prompt = return_prompt
        _stats.set(stats)
        async for frame in self._frames(chat, body, stats, client_wants_usage, return_prompt):
            yield frame

    async def _frames(
        self,
        chat: bool,
        body: dict[str, Any],
        stats: RequestStats,
        client_wants_usage: bool,
        return_prompt: bool,
    ) -> AsyncIterator[Frame]:
        try:
            if chat:
                result = await self.chat.create_chat_completion(
                    ChatCompletionRequest.model_validate(body)
                )
            else:
                result = await self.completion.create_completion(
                    CompletionRequest.model_validate(body)
                )
        except ValidationError as exc:
            yield validation_error(exc)
            return
        except Exception as exc:  # vLLM raises its own errors for bad parameters
            result = self.chat.create_error_response(exc)
        if isinstance(result, ErrorResponse):
            yield error_frame(result.error.model_dump())
            return
        if not hasattr(result, "__aiter__"):
            response = drop_nulls(result.model_dump(mode="json"))
            _finish(response, stats, chat, return_prompt)
            yield JSONFrame(response, usage=token_usage(response.get("usage")))
            return
        first = True
        async for event in result:
            payload = event.strip()
            if not payload.startswith(_SSE_PREFIX):
                continue
            payload = payload[len(_SSE_PREFIX) :]
            if payload == _SSE_DONE:
                return
            data = json.loads(payload)
            if "error" in data:
                yield error_frame(data["error"])
                return
            usage_chunk = not data.get("choices") and data.get("usage")
            if usage_chunk:
                add_usage_extras(data["usage"], stats, chat)
            elif chat:
                add_logprobs_refusal(data)
            if first and return_prompt:
                data["prompt"] = stats.prompt
            if client_wants_usage or not usage_chunk:
                chunk = json.dumps(drop_nulls(data), separators=(",", ":"))
                yield ChunkFrame(chunk, stats.prompt_tokens) if first else ChunkFrame(chunk)
            first = False
            if usage_chunk:
                yield UsageFrame(token_usage(data["usage"]))


def _finish(response: dict[str, Any], stats: RequestStats, chat: bool, prompt: bool) -> None:
    """Our additions to a whole (non-streamed) response."""
    if "usage" in response:
        add_usage_extras(response["usage"], stats, chat)
    if chat:
        add_logprobs_refusal(response)
    if prompt:
        response["prompt"] = stats.prompt
