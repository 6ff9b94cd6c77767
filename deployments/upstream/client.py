"""A remote OpenAI-compatible provider as a stream of our frames (httpx, pooled, async).

What the provider answers becomes ``deployments.common.contracts`` frames:

- 2xx: the JSON body (``JSONFrame``) or each SSE ``data:`` event as it arrives (``ChunkFrame``,
  no buffering), ``model`` showing the id the client asked for; the stream's usage chunk
  is passed on only if the client asked for it, and always ends the stream as ``UsageFrame``.
  A provider that sends no usage is charged an ``Estimate``, marked as one.
- 400/404/409/413/422 and other 4xx: the same status with the provider's message.
- 401/403: 502, the provider refused our credentials. 429: 429 with ``Retry-After``.
  5xx and connection errors: 502. No first byte within the model's ``timeout_s``: 504.
- Connection errors and 429/503 are retried with backoff, only before any byte has been
  passed on. Cancelling the generator (the client went away) closes the upstream request.

The API key is read from the environment once; it is sent only in ``Authorization`` and
removed from anything the provider says back.
"""

import asyncio
import contextlib
import json
import logging
import math
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

from deployments.common.contracts import (
    ChunkFrame,
    ErrorFrame,
    Frame,
    JSONFrame,
    Usage,
    UsageFrame,
    token_usage,
)

logger = logging.getLogger("ray.serve.deployments.upstream")

# Keys of a message or choice that are not text the model read or wrote.
_NOT_TEXT = frozenset({"role", "type", "id", "index", "finish_reason", "logprobs", "model"})


class Estimate:
    """Tokens guessed from text (4 characters a token, OpenAI's rule of thumb for English),
    for a provider that sends no usage, or a request cut short before its usage came."""

    CHARS_PER_TOKEN = 4

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body  # its prompt is read only if the estimate is charged
        self.output_chars = 0

    def add(self, choices: Any) -> None:
        self.output_chars += _text_chars(choices)

    def used(self) -> Usage:
        """What a request cut short is charged: nothing until the provider has answered."""
        return self.usage() if self.output_chars else {}

    def usage(self) -> Usage:
        body = self.body
        prompt_chars = _text_chars(body.get("messages", body.get("prompt", body.get("input"))))
        return {
            "prompt_tokens": float(math.ceil(prompt_chars / self.CHARS_PER_TOKEN)),
            "completion_tokens": float(math.ceil(self.output_chars / self.CHARS_PER_TOKEN)),
        }


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(item) for item in value)
    if isinstance(value, dict):
        return sum(_text_chars(item) for key, item in value.items() if key not in _NOT_TEXT)
    return 0


PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
RETRY_STATUSES = (429, 503)
MAX_BACKOFF_S = 8.0
PASS_STATUSES = range(400, 500)


class UpstreamClient:
    """One provider: its base URL, credentials, headers and a connection pool."""

    def __init__(
        self,
        provider: str,
        settings: dict[str, Any],
        models: dict[str, dict[str, Any]],
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_s: float = 0.5,
    ) -> None:
        self.provider = provider
        self.models = models
        self.backoff_s = backoff_s
        env = settings.get("api_key_env")
        self._secret = os.environ.get(env, "") if env else ""
        if env and not self._secret:
            logger.error("upstream %s: environment variable %s is not set", provider, env)
        headers = dict(settings.get("headers") or {})
        if self._secret:
            headers["Authorization"] = f"Bearer {self._secret}"
        limit = int(settings.get("max_concurrency") or 64)
        self.http = httpx.AsyncClient(
            base_url=settings["base_url"],
            headers=headers,
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            timeout=httpx.Timeout(30.0, read=None, pool=None),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def ready(self, timeout_s: float = 5.0) -> None:
        """Raise unless the provider's ``/models`` answers 200."""
        response = await self.http.get("/models", timeout=timeout_s)
        if response.status_code != 200:
            raise RuntimeError(f"upstream {self.provider}: /models answered {response.status_code}")

    def _clean(self, text: str) -> str:
        """Never echo our secret, whatever the provider says."""
        return text.replace(self._secret, "[redacted]") if self._secret else text

    async def generate(
        self,
        endpoint: str,
        body: dict[str, Any],
        request_id: str,
        estimate: Estimate | None = None,
    ) -> AsyncIterator[Frame]:
        """Run one chat or completions request at the provider; yields frames. ``estimate``
        follows the text (what is charged if the provider says nothing of its usage)."""
        estimate = estimate or Estimate(body)
        our_id = body["model"]
        model = self.models[our_id]
        payload = {**body, "model": model["upstream_model"]}
        stream = bool(payload.get("stream"))
        client_wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        if payload.pop("include_usage", None) and stream:
            client_wants_usage = True
        if stream:  # always ask for usage: per-key token budgets need it
            payload["stream_options"] = {
                **(payload.get("stream_options") or {}),
                "include_usage": True,
            }  # noqa: E501
        request = self.http.build_request(
            "POST", PATHS[endpoint], json=payload, headers={"X-Request-Id": request_id}
        )
        response = await self._send(request, model, request_id)
        if isinstance(response, ErrorFrame):
            yield response
            return
        try:
            if response.status_code >= 300:
                yield await self._error(response)
            elif stream:
                frames = self._events(response, our_id, model, client_wants_usage, estimate)
                async for frame in frames:
                    yield frame
            else:
                try:
                    data = await asyncio.wait_for(response.aread(), model["timeout_s"])
                except TimeoutError:
                    yield self._timeout(model)
                    return
                result = json.loads(data)
                result["model"] = our_id
                if usage := token_usage(result.get("usage")):
                    yield JSONFrame(result, usage=usage)
                else:
                    estimate.add(result.get("choices"))
                    yield JSONFrame(result, usage=estimate.usage(), estimated=True)
        finally:
            await response.aclose()  # also when cancelled: the provider sees the disconnect

    async def _send(
        self, request: httpx.Request, model: dict[str, Any], request_id: str
    ) -> httpx.Response | ErrorFrame:
        """Send with retries of connection errors and 429/503 (nothing has reached the
        client yet); the response's headers must come within the model's timeout."""
        retries = int(model["max_retries"])
        for attempt in range(retries + 1):
            wait = self.backoff_s * 2**attempt
            try:
                response = await asyncio.wait_for(
                    self.http.send(request, stream=True), model["timeout_s"]
                )
            except TimeoutError:
                return self._timeout(model)
            except httpx.TransportError as exc:
                logger.warning(
                    "upstream %s: %s (attempt %d) [request_id=%s]",
                    self.provider, type(exc).__name__, attempt + 1, request_id,
                )  # fmt: skip
                if attempt == retries:
                    return ErrorFrame(
                        502, f"The upstream provider '{self.provider}' could not be reached."
                    )
            else:
                if response.status_code not in RETRY_STATUSES or attempt == retries:
                    return response
                wait = max(wait, _retry_after(response) or 0)
                await response.aclose()
            await asyncio.sleep(min(wait, MAX_BACKOFF_S))
        raise AssertionError("unreachable")

    def _timeout(self, model: dict[str, Any]) -> ErrorFrame:
        return ErrorFrame(
            504,
            f"The upstream provider '{self.provider}' did not answer within "
            f"{model['timeout_s']:g} seconds.",
            code="timeout",
        )

    async def _error(self, response: httpx.Response) -> ErrorFrame:
        """Our envelope for a provider's error answer."""
        status = response.status_code
        if status in (401, 403):
            return ErrorFrame(
                502, f"The upstream provider '{self.provider}' refused our credentials."
            )
        text = (await response.aread()).decode(errors="replace")
        error: dict[str, Any] = {}
        with contextlib.suppress(ValueError, AttributeError):
            error = json.loads(text).get("error") or {}
        message = self._clean(str(error.get("message") or text[:500] or response.reason_phrase))
        if status == 429:
            seconds = _retry_after(response) or 1
            return ErrorFrame(
                429,
                f"The upstream provider '{self.provider}' is rate limiting: {message}",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(int(seconds))},
            )
        if status in PASS_STATUSES:
            param = error.get("param") if isinstance(error.get("param"), str) else None
            code = error.get("code") if isinstance(error.get("code"), str) else None
            return ErrorFrame(status, message, param=param, code=code)
        logger.error("upstream %s answered %d: %s", self.provider, status, message[:200])
        return ErrorFrame(502, f"The upstream provider '{self.provider}' failed ({status}).")

    async def _events(
        self,
        response: httpx.Response,
        our_id: str,
        model: dict[str, Any],
        client_wants_usage: bool,
        estimate: Estimate,
    ) -> AsyncIterator[Frame]:
        """Each SSE event as it arrives; the first must come within the timeout. A stream
        that ends without a usage chunk ends with the ``estimate``."""
        lines = response.aiter_lines()
        first = True
        reported: Usage = {}
        while True:
            try:
                if first:
                    line = await asyncio.wait_for(anext(lines), model["timeout_s"])
                else:
                    line = await anext(lines)
            except StopAsyncIteration:
                if not first:
                    yield _usage(reported, estimate)
                return
            except TimeoutError:
                yield self._timeout(model)
                return
            except httpx.TransportError:
                yield ErrorFrame(502, f"The upstream provider '{self.provider}' broke the stream.")
                return
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                yield _usage(reported, estimate)
                return
            first = False
            event = json.loads(data)
            if "error" in event:
                message = self._clean(str((event["error"] or {}).get("message", "failed")))
                yield ErrorFrame(502, f"The upstream provider '{self.provider}': {message}")
                return
            usage_chunk = not event.get("choices") and event.get("usage")
            event["model"] = our_id
            estimate.add(event.get("choices"))
            if event.get("usage"):  # its own chunk, or (some providers) on the last one
                reported = token_usage(event["usage"])
            if client_wants_usage or not usage_chunk:
                yield ChunkFrame(json.dumps(event, separators=(",", ":")))


def _usage(reported: Usage, estimate: Estimate) -> UsageFrame:
    """What the provider said the stream used, else the estimate."""
    return UsageFrame(reported) if reported else UsageFrame(estimate.usage(), estimated=True)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None
