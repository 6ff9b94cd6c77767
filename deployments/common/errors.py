"""Error helpers shared by the ingress and the model deployments."""

import logging
import re
from typing import Any

from deployments.common.contracts import ErrorFrame

logger = logging.getLogger("ray.serve.deployments")

# pydantic puts union members into error locations ("str", "list[str]", "Model", "role=user");
# they are not request fields.
_FIELD = re.compile(r"^[a-z_][a-z0-9_]*$")
TAG_ERROR = "tag:"  # error type of a tagged union's unknown tag: "tag:<field>"
_TYPE_WORDS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "literal"})


def param_of(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """OpenAI's spelling of an error location: ``messages[0].content``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "body" and _FIELD.match(part) and part not in _TYPE_WORDS:
            out += f".{part}" if out else part
    return out or None


_EXPECTED = {
    "float_type": "a number",
    "int_type": "an integer",
    "bool_type": "a boolean",
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if value is None:
        return "null"
    return "an object"


def _message(error: dict[str, Any]) -> str:
    ctx = error.get("ctx") or {}
    if error.get("type", "") in _EXPECTED:
        return f"expected {_EXPECTED[error['type']]}, but got {_json_type(error.get('input'))}"
    if error.get("type", "") == "literal_error" and "expected" in ctx:
        return f"expected {ctx['expected']}"
    return str(error.get("msg", "invalid value"))


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """Turn pydantic's error list into an OpenAI-style (message, param) pair.

    Unknown fields come first ("Unrecognized request argument supplied"), then missing ones,
    then wrong values; the alternatives of a union failing at one place are named together.
    """
    if not errors:
        return "Invalid request.", None

    def rank(error: dict[str, Any]) -> tuple[int, int]:
        # unknown fields, then missing ones, then the deepest (most specific) failure
        kind = {"extra_forbidden": 0, "missing": 1}.get(error.get("type", ""), 2)
        return kind, -len(param_of(error.get("loc", ())) or "")

    errors = sorted(errors, key=rank)  # stable: among equals, pydantic's order
    first = errors[0]
    param = param_of(first.get("loc", ()))
    if first.get("type", "") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if first.get("type", "") == "missing":
        return f"Missing required parameter: '{param}'.", param
    if first.get("type", "").startswith(TAG_ERROR):
        field = first.get("type", "").removeprefix(TAG_ERROR)
        param = f"{param}.{field}" if param else field
    same = [_message(e) for e in errors if param_of(e.get("loc", ())) == param_of(first["loc"])]
    reasons = list(dict.fromkeys(same))  # the union's alternatives, once each
    reason = reasons[0] + "".join(f"; or {r}" for r in reasons[1:])
    if param is None:
        return f"Invalid request: {reason}", None
    kind = "type" if first.get("type", "") in _EXPECTED else "value"
    return f"Invalid {kind} for '{param}': {reason}.", param


def error_frame(error: dict[str, Any], params: dict[str, str] | None = None) -> ErrorFrame:
    """Map a vLLM error (``code`` holds the HTTP status) to our frame. A 5xx is logged and
    its message replaced (engine internals stay in the log); ``params`` renames vLLM's
    ``param`` to the request field it is about."""
    status = error.get("code")
    status = status if isinstance(status, int) and 400 <= status < 600 else 500
    message = error.get("message") or "request failed"
    if status >= 500:
        logger.error("engine error: %s", message)
        message = "The model backend failed to process the request."
    param = error.get("param")
    if params is not None:
        param = params.get(param, param)
    return ErrorFrame(status, message, param=param)


def validation_error(exc: Any) -> ErrorFrame:
    """A 400 frame for a request body vLLM's protocol models rejected (a pydantic
    ``ValidationError``)."""
    message, param = describe_validation_errors(exc.errors(include_url=False))
    return ErrorFrame(400, message, param=param)
