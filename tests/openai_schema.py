"""OpenAI's published response schemas (../shared/openai-spec/schemas.json) as a validator.

The file is OpenAPI 3.0 flavoured JSON Schema: ``nullable: true`` is turned into
``anyOf [..., null]`` so plain ``jsonschema`` understands it.
"""

import copy
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

ROOT = Path(__file__).resolve().parents[1]


def spec_path() -> Path:
    env = os.environ.get("OPENAI_SPEC_SCHEMAS")
    return Path(env) if env else ROOT.parent / "shared" / "openai-spec" / "schemas.json"


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


@cache
def _document() -> dict[str, Any]:
    return _nullable(json.loads(spec_path().read_text()))


def validate(instance: Any, name: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` matches schema ``name``."""
    doc = _document()
    schema = copy.copy(doc["components"]["schemas"][name])
    schema["components"] = doc["components"]
    jsonschema.validate(instance, schema)


def fields_of(name: str) -> set[str]:
    """Every property name of schema ``name``, through its ``$ref``s and ``allOf``s."""
    schemas = _document()["components"]["schemas"]
    fields: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "$ref" in node:
            walk(schemas[node["$ref"].split("/")[-1]])
        for sub in node.get("allOf", []):
            walk(sub)
        fields.update(node.get("properties", {}))

    walk(schemas[name])
    return fields
