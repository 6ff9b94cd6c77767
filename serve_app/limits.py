"""Body-size limit for JSON routes, enforced while the body is read (413 before parsing)."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import APIError, error_response


def body_too_large(limit: int, seen: int) -> APIError:
    return APIError(
        413,
        f"Request body too large: the limit is {limit} bytes ({seen} bytes received).",
        code="request_too_large",
    )


class BodyLimit:
    """Pure ASGI middleware: refuse bodies over ``max_bytes`` (audio routes have their own)."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt_prefix: str = "/v1/audio/") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_prefix = exempt_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt_prefix):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(body_too_large(self.max_bytes, int(declared)).frame)
            await response(scope, receive, send)
            return
        seen = 0

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the route's body read; FastAPI re-raises it as a 400
                    # HTTPException whose cause the error handler turns back into this 413.
                    raise body_too_large(self.max_bytes, seen)
            return message

        await self.app(scope, bounded_receive, send)
