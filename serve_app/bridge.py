"""Chat completion chunks -> a Response object and its stream of events.

The Responses routes run every response as a streamed chat request (whatever the model's
family) and feed its chunks to ``ResponseBuilder``: reasoning deltas become a ``reasoning``
item (its text as ``reasoning_text`` content), content deltas a ``message`` item with one
``output_text`` part, and each tool call a ``function_call`` item. Every item is announced
(``output_item.added``), filled by deltas and closed (``output_item.done``) in order, with
one ``sequence_number`` across the stream, as OpenAI's SDK stream accumulator expects. The
end is ``response.completed``, ``response.incomplete`` (``max_output_tokens`` or the model's
context, or a content filter) or ``response.failed`` (an engine error mid-stream).
"""

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from deployments.common.contracts import ChunkFrame, ErrorFrame, Frame
from serve_app.log import LOGGER
from serve_app.protocol.items import new_id
from serve_app.protocol.responses import ECHOED, FunctionChoice, ResponseRequest

logger = logging.getLogger(LOGGER)
Event = dict[str, Any]


def _error_code(frame: ErrorFrame) -> str:
    """OpenAI's Response ``error.code`` for an error frame."""
    if frame.status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if frame.status < 500 else "server_error"


def base_response(
    response_id: str, request: ResponseRequest, model_id: str, created_at: int
) -> dict[str, Any]:
    """The Response object before any output: the request's settings echoed."""
    tools = [
        {"parameters": None, "strict": None, **t.model_dump(exclude_none=True)}
        for t in request.tools or ()
    ]
    choice = request.tool_choice
    if isinstance(choice, FunctionChoice):
        choice = choice.model_dump()
    text = request.text.model_dump(by_alias=True, exclude_none=True) if request.text else {}
    text.setdefault("format", {"type": "text"})
    text.setdefault("verbosity", "medium")
    effort = request.reasoning.effort if request.reasoning else None
    response = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": bool(request.background),
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "model": model_id,
        "output": [],
        "metadata": request.metadata or {},
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "temperature": 1.0 if request.temperature is None else request.temperature,
        "top_p": 1.0 if request.top_p is None else request.top_p,
        "tool_choice": choice or "auto",
        "tools": tools,
        "text": text,
        "reasoning": {"effort": effort, "summary": None},
        "truncation": request.truncation or "disabled",
        "store": request.store is not False,
        "service_tier": request.service_tier or "default",
    }
    for name in ECHOED:
        response[name] = getattr(request, name)
    if request.conversation_id is not None:
        response["conversation"] = {"id": request.conversation_id}
    if request.user is None:
        del response["user"]  # the one echoed field that may not be null
    return response


class ResponseBuilder:
    """Builds one Response from chat chunks; each method returns the events it makes."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.output: list[dict[str, Any]] = response["output"]
        self.sequence = 0
        self.current: dict[str, Any] | None = None  # the open reasoning or message item
        self.calls: dict[int, int] = {}  # chat tool call index -> output index
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.ended = False

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _snapshot(self, kind: str) -> Event:
        return self._event(kind, response=_copy(self.response))

    def start(self) -> list[Event]:
        """``response.created`` (``queued`` for a background response), then
        ``response.in_progress``."""
        created = self._snapshot("response.created")
        self.response["status"] = "in_progress"
        return [created, self._snapshot("response.in_progress")]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        """The events of one chat completion chunk."""
        events: list[Event] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("reasoning"):
                events += self._text("reasoning", delta["reasoning"], None)
            if delta.get("content"):
                logprobs = (choice.get("logprobs") or {}).get("content") or []
                events += self._text("message", delta["content"], logprobs)
            for call in delta.get("tool_calls") or ():
                events += self._tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _add(self, item: dict[str, Any]) -> list[Event]:
        self.output.append(item)
        return [
            self._event(
                "response.output_item.added", output_index=len(self.output) - 1, item=_copy(item)
            )
        ]

    def _text(self, kind: str, delta: str, logprobs: list | None) -> list[Event]:
        events: list[Event] = []
        if self.current is None or self.current["type"] != kind:
            events += self._close_current()
            if kind == "reasoning":
                item = {
                    "id": new_id("rs"),
                    "type": "reasoning",
                    "summary": [],
                    "content": [],
                    "status": "in_progress",
                }
                part = {"type": "reasoning_text", "text": ""}
            else:
                item = {
                    "id": new_id("msg"),
                    "type": "message",
                    "role": "assistant",
                    "status": "in_progress",
                    "content": [],
                }
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events += self._add(item)
            if kind == "message":
                events.append(
                    self._event(
                        "response.content_part.added",
                        item_id=item["id"],
                        output_index=len(self.output) - 1,
                        content_index=0,
                        part=dict(part),
                    )
                )
            item["content"].append(part)
            self.current = item
        item = self.current
        part = item["content"][0]
        part["text"] += delta
        where = {"item_id": item["id"], "output_index": len(self.output) - 1, "content_index": 0}
        if kind == "reasoning":
            events.append(self._event("response.reasoning_text.delta", delta=delta, **where))
        else:
            part["logprobs"] += logprobs or []
            events.append(
                self._event(
                    "response.output_text.delta", delta=delta, logprobs=logprobs or [], **where
                )
            )
        return events

    def _close_current(self, status: str = "completed") -> list[Event]:
        item, self.current = self.current, None
        if item is None:
            return []
        index = self.output.index(item)
        part = item["content"][0]
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        item["status"] = status
        if item["type"] == "reasoning":
            events = [self._event("response.reasoning_text.done", text=part["text"], **where)]
        else:
            events = [
                self._event(
                    "response.output_text.done",
                    text=part["text"],
                    logprobs=part["logprobs"],
                    **where,
                ),
                self._event("response.content_part.done", part=dict(part), **where),
            ]
        events.append(
            self._event("response.output_item.done", output_index=index, item=_copy(item))
        )
        return events

    def _tool_call(self, call: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        function = call.get("function") or {}
        index = self.calls.get(call.get("index", 0))
        if index is None:
            events += self._close_current()
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": call.get("id") or new_id("call"),
                "name": function.get("name") or "",
                "arguments": "",
            }
            events += self._add(item)
            index = self.calls[call.get("index", 0)] = len(self.output) - 1
        item = self.output[index]
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=function["arguments"],
                )
            )
        return events

    def _close_calls(self, status: str) -> list[Event]:
        events = []
        for index in self.calls.values():
            item = self.output[index]
            item["status"] = status
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            events.append(
                self._event("response.output_item.done", output_index=index, item=_copy(item))
            )
        self.calls = {}
        return events

    def _set_usage(self) -> None:
        usage = self.usage or {}
        details = usage.get("completion_tokens_details") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        reasoning = details.get("reasoning_tokens") or usage.get("reasoning_tokens") or 0
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        self.response["usage"] = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion,
        }

    def finish(self) -> list[Event]:
        """The events that end a stream that ran to its end."""
        cut = self.finish_reason in ("length", "content_filter")
        status = "incomplete" if cut else "completed"
        events = self._close_current(status) + self._close_calls(status)
        self._set_usage()
        self.response["status"] = status
        if cut:
            reason = "max_output_tokens" if self.finish_reason == "length" else "content_filter"
            self.response["incomplete_details"] = {"reason": reason}
        else:
            self.response["completed_at"] = int(time.time())
        self.ended = True
        return events + [self._snapshot(f"response.{status}")]

    def fail(self, frame: ErrorFrame) -> list[Event]:
        """The events that end a stream the model failed in the middle of."""
        events = self._close_current("incomplete") + self._close_calls("incomplete")
        self._set_usage()
        self.response["status"] = "failed"
        self.response["error"] = {"code": _error_code(frame), "message": frame.message}
        self.ended = True
        return events + [self._snapshot("response.failed")]

    def cancel(self) -> None:
        """The client went away before the end: what was made so far, cancelled."""
        self._close_current("incomplete")
        self._close_calls("incomplete")
        self._set_usage()
        self.response["status"] = "cancelled"
        self.ended = True


async def chain_frames(first: Frame, rest: AsyncIterator[Frame]) -> AsyncIterator[Frame]:
    yield first
    async for frame in rest:
        yield frame


async def response_events(
    builder: ResponseBuilder, frames: AsyncIterator[Frame], rid: str
) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
    """The events of each chat frame, as ``(events, False)``, then the events that end the
    response (completed, incomplete or failed) as ``(events, True)``."""
    try:
        async for frame in frames:
            if isinstance(frame, ChunkFrame):
                yield builder.feed(json.loads(frame.data)), False
            elif isinstance(frame, ErrorFrame):
                yield builder.fail(frame), True
                return
    except Exception:
        logger.exception("stream failed mid-way [request_id=%s]", rid)
        message = f"The model backend failed mid-stream (request id: {rid})."
        yield builder.fail(ErrorFrame(500, message)), True
        return
    yield builder.finish(), True


def _copy(value: Any) -> Any:
    """A deep copy of JSON data (events must not change as the response grows)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
