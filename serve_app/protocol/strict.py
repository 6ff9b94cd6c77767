"""The base of every request model: strict types, unknown fields refused, tagged unions."""

from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag

from deployments.common.errors import TAG_ERROR


class Strict(BaseModel):
    """No coercion (a string is not an int, a bool is not a number), no NaN/Infinity, and
    unknown fields are errors ("Unrecognized request argument supplied")."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def tagged(field: str, *members: type[BaseModel]) -> Any:
    """A union of models told apart by the literal value of ``field`` (``type``, ``role``).

    Tags are spelled ``field=value`` so error locations can drop them; an unknown value is
    reported on ``field`` itself with the values allowed.
    """
    values = {m.model_fields[field].annotation.__args__[0]: m for m in members}

    def tag_of(value: Any) -> str | None:
        found = value.get(field) if isinstance(value, dict) else getattr(value, field, None)
        return f"{field}={found}" if found in values else None

    choices = ", ".join(repr(v) for v in values)
    return Annotated[
        Union[tuple(Annotated[m, Tag(f"{field}={v}")] for v, m in values.items())],  # noqa: UP007
        Discriminator(
            tag_of,
            custom_error_type=f"{TAG_ERROR}{field}",  # read back by describe_validation_errors
            custom_error_message=f"expected one of {choices}",
        ),
    ]
