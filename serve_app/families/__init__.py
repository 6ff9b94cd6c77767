"""The model families this server knows. Importing a family module registers it."""

from typing import Annotated, Union

from pydantic import Field

from serve_app.families import embedding, llm, upstream, whisper  # noqa: F401 - registration
from serve_app.families.base import FAMILIES, Capability, Family, capabilities_of, family_of

# A configured model: the config model of the family its `family:` field names.
ModelConfig = Annotated[
    Union[tuple(f.config for f in FAMILIES.values())],  # noqa: UP007
    Field(discriminator="family"),
]

__all__ = ["FAMILIES", "Capability", "Family", "ModelConfig", "capabilities_of", "family_of"]
