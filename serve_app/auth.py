"""Bearer API keys: constant-time comparison, OpenAI's 401 envelope."""

import hmac
import logging

from fastapi import Request

from serve_app.errors import APIError

logger = logging.getLogger("serve_app")


class KeyChecker:
    """FastAPI dependency: with keys configured, every request must carry one of them."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]
        if not self._keys:
            logger.warning(
                "No API keys configured (SERVE_APP_API_KEYS): the API is open to anyone who "
                "can reach it. Set keys before exposing it beyond localhost."
            )

    def __call__(self, request: Request) -> None:
        if not self._keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        presented = token.strip().encode()
        # Compare against every key so timing does not reveal which one (or whether any) matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        if not matched:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
