"""Shared route dependencies: the registry and the request id."""

from fastapi import Request

from serve_app.errors import request_id_of
from serve_app.registry import ModelRegistry


def registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def request_id(request: Request) -> str:
    return request_id_of(request)
