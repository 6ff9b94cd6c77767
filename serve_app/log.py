"""The ingress logger's name: a child of ``ray.serve``, so inside a replica our lines land in
Serve's replica log with its request id, and outside Serve (tests) they behave as usual; and
the request id itself."""

import uuid

from fastapi import Request

LOGGER = "ray.serve.serve_app"


def request_id_of(request: Request) -> str:
    """The request id Serve assigned (or the client sent as ``x-request-id``).

    Serve's HTTP server in the ingress replica (behind HAProxy; or Serve's Python proxy) sets
    the header on every request and echoes it on every response; outside
    Serve (unit tests) a fresh id is made once per request.
    """
    request_id = request.headers.get("x-request-id") or getattr(request.state, "request_id", "")
    if not request_id:
        request_id = request.state.request_id = uuid.uuid4().hex
    return request_id
