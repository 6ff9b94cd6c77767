"""API keys with scopes: who may call which endpoint with which model, at what rate.

Keys come from ``SERVE_APP_API_KEYS`` (comma-separated secrets with full access) and/or a
keys file (``SERVE_APP_KEYS_FILE``, YAML or JSON). Presented keys are hashed with SHA-256
and compared against every stored digest in constant time. Logs name keys, never secrets.
"""

import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Annotated, Literal

import yaml
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from serve_app.errors import APIError
from serve_app.log import LOGGER

logger = logging.getLogger(LOGGER)

Endpoint = Literal[
    "models",
    "chat-completions",
    "completions",
    "embeddings",
    "responses",
    "conversations",
    "audio-transcriptions",
    "audio-translations",
    "usage",
]
ALL = "*"
NAMED = frozenset({"usage"})  # scopes ``*`` does not give: reading every key's usage


class KeyLimits(BaseModel):
    """Per-key rate limits over a sliding minute, and budgets per UTC calendar day and month
    (None: unlimited). Tokens are prompt + completion (LLMs, embeddings, upstream models);
    audio seconds are speech input (transcriptions, translations, ``input_audio`` parts)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    audio_seconds_per_minute: float | None = Field(None, gt=0)
    tokens_per_day: int | None = Field(None, ge=1)
    tokens_per_month: int | None = Field(None, ge=1)
    audio_seconds_per_day: float | None = Field(None, gt=0)
    audio_seconds_per_month: float | None = Field(None, gt=0)

    @property
    def any(self) -> bool:
        return any(getattr(self, name) is not None for name in type(self).model_fields)


class APIKey(BaseModel):
    """One key: its name (for logs), its secret or the secret's SHA-256, and its scopes."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
    secret: SecretStr | None = None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    endpoints: list[Endpoint | Literal["*"]] = Field(default_factory=lambda: [ALL])
    models: list[str] = Field(default_factory=lambda: [ALL])
    limits: KeyLimits = Field(default_factory=KeyLimits)

    @model_validator(mode="after")
    def _one_secret(self) -> "APIKey":
        if (self.secret is None) == (self.sha256 is None):
            raise ValueError(f"key {self.name!r}: give exactly one of `secret` and `sha256`")
        return self

    @property
    def digest(self) -> bytes:
        if self.sha256 is not None:
            return bytes.fromhex(self.sha256)
        return hashlib.sha256(self.secret.get_secret_value().encode()).digest()

    def allows_endpoint(self, endpoint: str) -> bool:
        """``*`` is every endpoint but those that must be named (``usage``: every key's)."""
        return endpoint in self.endpoints or (ALL in self.endpoints and endpoint not in NAMED)

    def allows_model(self, model_id: str, aliases: list[str]) -> bool:
        return ALL in self.models or any(n in self.models for n in (model_id, *aliases))


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[APIKey]


def load_keys(plain: list[str], keys_file: str | None) -> list[APIKey]:
    """The configured keys; names must be unique."""
    keys = [  # full access, the usage of every key included
        APIKey(name=f"env-{i}", secret=secret, endpoints=[ALL, "usage"])
        for i, secret in enumerate(plain, start=1)
    ]
    if keys_file:
        text = Path(keys_file).read_text()
        data = json.loads(text) if keys_file.endswith(".json") else yaml.safe_load(text)
        keys += KeysFile.model_validate(data).keys
    names = [key.name for key in keys]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate key names: {duplicates}")
    return keys


class KeyStore:
    """Authenticates the ``Authorization`` header against the configured keys."""

    def __init__(self, keys: list[APIKey]) -> None:
        self.keys = keys
        self._digests = [(key.digest, key) for key in keys]
        if not keys:
            logger.warning(
                "No API keys configured (SERVE_APP_API_KEYS / SERVE_APP_KEYS_FILE): the API is "
                "open to anyone who can reach it. Set keys before exposing it beyond localhost."
            )

    @property
    def open(self) -> bool:
        return not self._digests

    def authenticate(self, authorization: str) -> APIKey:
        """The key for an ``Authorization: Bearer`` header; 401 ``invalid_api_key`` otherwise."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise APIError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for digest, key in self._digests:  # compare with every key: timing reveals nothing
            if hmac.compare_digest(presented, digest):
                found = key
        if found is None:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        return found


def require(endpoint: Endpoint):
    """FastAPI dependency: a key allowed on ``endpoint`` (None when the API runs open).

    ``async`` although it never awaits: FastAPI runs a plain ``def`` dependency on a worker
    thread, and that hop (the GIL handed back and forth with Ray's threads) cost the ingress
    about 0.9 ms of every request (py-spy; README, Architecture)."""

    async def dependency(request: Request) -> APIKey | None:
        store: KeyStore = request.app.state.keys
        if store.open:
            return None
        key = store.authenticate(request.headers.get("authorization", ""))
        request.state.api_key = key
        if not key.allows_endpoint(endpoint):
            raise APIError(
                403,
                f"The API key '{key.name}' is not allowed to use the {endpoint} endpoint.",
                code="permission_denied",
            )
        return key

    return dependency


def authorize_model(key: APIKey | None, model_id: str, aliases: list[str]) -> None:
    """403 unless ``key`` (None: open API) may use the model."""
    if key is not None and not key.allows_model(model_id, aliases):
        raise APIError(
            403,
            f"The API key '{key.name}' is not allowed to use the model '{model_id}'.",
            param="model",
            code="permission_denied",
        )
