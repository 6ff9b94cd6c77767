"""The one module that runs vLLM's pooling runner: ``AsyncLLM`` plus vLLM's own embedding
serving class (``ServingEmbedding``), as ``deployments/llm/engine.py`` does for chat.

Tokenisation, truncation, pooling (from the model's sentence-transformers ``modules.json``),
normalisation and the float/base64 encodings are therefore exactly vLLM's. This module
checks what only the loaded model knows (its output size, Matryoshka support, context
length), refuses with a 400 naming the field, and passes vLLM's JSON body on as it is, with
OpenAI's ``usage`` object.
"""

import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.openai.models.protocol import BaseModelPath
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.pooling.embed.protocol import EmbeddingCompletionRequest
from vllm.entrypoints.pooling.embed.serving import ServingEmbedding
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.renderers.chat_utils import ChatTemplateConfig
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM

from deployments.common.contracts import ErrorFrame, Frame, TextFrame
from deployments.common.engine import HeldEngine
from deployments.common.errors import error_frame, validation_error

# vLLM's `param` -> the request field it is about (None: told from the message).
PARAMS = {"input_tokens": "input"}
_USAGE = b'"usage":'


def engine_args(model_id: str, source: str, options: dict[str, Any]) -> AsyncEngineArgs:
    """``AsyncEngineArgs`` for the pooling runner from the config's engine options."""
    opts = dict(options)
    extra = dict(opts.pop("extra", {}) or {})
    opts.pop("cpu_threads", None)  # the replica's OMP_NUM_THREADS (families/embedding.py)
    kwargs = {k: v for k, v in opts.items() if v is not None}
    return AsyncEngineArgs(
        model=source,
        served_model_name=[model_id],
        runner="pooling",
        disable_log_stats=True,
        **kwargs,
        **extra,
    )


class EmbeddingEngine(HeldEngine):
    """One vLLM pooling engine and the embedding serving object bound to it."""

    def __init__(self, model_id: str, source: str, options: dict[str, Any]) -> None:
        self.model_id = model_id
        self.engine = AsyncLLM.from_engine_args(
            engine_args(model_id, source, options),
            usage_context=UsageContext.OPENAI_API_SERVER,
        )
        config = self.engine.model_config
        self.max_model_len = config.max_model_len
        self.matryoshka = bool(config.is_matryoshka)
        self.dimensions: int | None = None  # of the vectors it makes, set by ``check_output``
        models = OpenAIServingModels(
            engine_client=self.engine,
            base_model_paths=[BaseModelPath(name=model_id, model_path=source)],
        )
        self.serving = ServingEmbedding(
            self.engine, models, request_logger=None, chat_template_config=ChatTemplateConfig()
        )

    async def check_output(self, dimensions: int) -> None:
        """Embed one sentence and raise unless its vector has ``dimensions`` values (what the
        config says and ``/v1/models`` shows)."""
        frame = await self.embed({"input": "warm up"}, "warm-up")
        if isinstance(frame, ErrorFrame):
            raise RuntimeError(f"embedding {self.model_id}: warm-up failed: {frame.message}")
        made = len(json.loads(frame.text)["data"][0]["embedding"])
        if made != dimensions:
            raise ValueError(
                f"embedding {self.model_id}: the config says dimensions: {dimensions} but the "
                f"model makes vectors of {made}; set dimensions: {made}"
            )
        self.dimensions = made

    def _refuse(self, body: dict[str, Any]) -> ErrorFrame | None:
        """A 400 for what this model cannot do; drops a ``dimensions`` equal to its own."""
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions == self.dimensions:
            del body["dimensions"]
        elif dimensions is not None and not self.matryoshka:
            return ErrorFrame(
                400,
                f"The model '{self.model_id}' makes vectors of {self.dimensions} dimensions "
                f"and cannot shorten them (it is not a Matryoshka model); leave 'dimensions' "
                f"unset or set it to {self.dimensions}.",
                param="dimensions",
            )
        truncate = body.get("truncate_prompt_tokens")
        if truncate is not None and truncate > self.max_model_len:
            return ErrorFrame(
                400,
                f"'truncate_prompt_tokens' is {truncate}, more than the model's context of "
                f"{self.max_model_len} tokens; use -1 to truncate to the context.",
                param="truncate_prompt_tokens",
            )
        return None

    async def embed(self, body: dict[str, Any], request_id: str) -> ErrorFrame | TextFrame:
        """Embed ``body`` (OpenAI's fields plus ``truncate_prompt_tokens``): the whole JSON
        response as text, or the error."""
        body = dict(body)
        if refused := self._refuse(body):
            return refused
        fields = {
            **body,
            "model": self.model_id,
            "request_id": request_id,
            # OpenAI's base64 is little-endian float32, whatever the host's byte order.
            "embed_dtype": "float32",
            "endianness": "little",
        }
        try:
            response = await self.serving(EmbeddingCompletionRequest.model_validate(fields))
        except ValidationError as exc:
            return validation_error(exc)
        except Exception as exc:  # vLLM raises its own errors for bad inputs
            response = self.serving.create_error_response(exc)
        if isinstance(response, ErrorResponse):
            error = response.error.model_dump()
            about = "dimensions" if "dimensions" in str(error.get("message")) else "input"
            return error_frame(error, {**PARAMS, None: about})
        return _openai_body(bytes(response.body))

    async def generate(
        self, endpoint: str, body: dict[str, Any], request_id: str
    ) -> AsyncIterator[Frame]:
        """The deployments' common call (``endpoint`` is ``embeddings``): one frame."""
        yield await self.embed(body, request_id)


def _openai_body(body: bytes) -> TextFrame:
    """vLLM's JSON body with OpenAI's ``usage`` (prompt and total tokens), as text. The
    vectors are not parsed again: ``usage`` is the body's last member."""
    at = body.rindex(_USAGE)
    tokens = int(json.loads(body[at + len(_USAGE) : -1])["prompt_tokens"])
    usage = f'"usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}'
    text = body[:at].decode() + usage
    return TextFrame(text, "application/json", usage={"prompt_tokens": float(tokens)})
