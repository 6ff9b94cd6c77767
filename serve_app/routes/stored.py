"""What the routes over stored objects (responses, conversations) share: whose a record is,
calls to the store, 404s, and list pages with their query."""

import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request

from serve_app.auth import APIKey
from serve_app.errors import APIError
from serve_app.log import LOGGER
from serve_app.pipeline import registry

logger = logging.getLogger(LOGGER)

Order = Literal["asc", "desc"]


def owner_of(key: APIKey | None) -> str:
    """Whose a stored record is: the key's name ("" when the API runs without keys)."""
    return key.name if key is not None else ""


def not_found(what: str, object_id: str, param: str) -> APIError:
    shown = object_id if len(object_id) <= 100 else object_id[:100] + "..."
    return APIError(404, f"{what} with id '{shown}' not found.", param=param, code="not_found")


async def store_call(request: Request, operation: str, *args: Any) -> Any:
    """One store operation (``SQLStore.OPERATIONS``); 503 if the store cannot answer."""
    try:
        return await getattr(request.app.state.store, operation)(*args)
    except Exception:
        logger.exception("response store failed: %s", operation)
        raise APIError(
            503,
            "The response store is unavailable. Please retry.",
            code="store_unavailable",
            headers={"Retry-After": str(registry(request).config.limits.retry_after_s)},
        ) from None


def page(items: list[dict], after: str | None, limit: int, order: Order) -> dict[str, Any]:
    """OpenAI's list object over ``items`` (oldest first): ``order``, then the ``limit`` items
    after the item ``after``."""
    if order == "desc":
        items = items[::-1]
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise APIError(400, f"No item with id '{after[:100]}'.", param="after")
        items = items[ids.index(after) + 1 :]
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }


@dataclass
class ListQuery:
    """The query of a list of stored items (a response's input items, a conversation's
    items), as OpenAI's: ``after`` an item id, ``limit`` 1 to 100, ``order`` newest first by
    default; ``include`` is accepted and changes nothing. Routes take it as ``Listing``."""

    after: str | None = None
    limit: Annotated[int, Query(ge=1, le=100)] = 20
    order: Order = "desc"
    include: Annotated[list[str] | None, Query()] = None

    def page(self, items: list[dict]) -> dict[str, Any]:
        """The page of ``items`` (oldest first) this query asks for (``page``)."""
        return page(items, self.after, self.limit, self.order)


Listing = Annotated[ListQuery, Depends()]
