"""The Conversations API: ``/v1/conversations`` and its items.

A conversation is a stored, ordered list of items (messages, function calls and their
outputs, reasoning) owned by the API key that made it. A response created with
``conversation`` continues it and, once completed (or incomplete), appends its input and
output to it (``routes/responses.py``). Conversations last until deleted.
"""

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from serve_app.auth import APIKey, require
from serve_app.protocol.items import InputItem, check_items, new_id, public_items, stored_items
from serve_app.protocol.openai import MetaKey, MetaValue
from serve_app.protocol.strict import Strict
from serve_app.routes.stored import Listing, not_found, owner_of, page, store_call

router = APIRouter()
Key = Annotated[APIKey | None, Depends(require("conversations"))]
Metadata = Annotated[dict[MetaKey, MetaValue], Field(max_length=16)]
MAX_ITEMS = 20  # OpenAI's limit of items per call


class CreateConversation(Strict):
    items: Annotated[list[InputItem], Field(max_length=MAX_ITEMS)] | None = None
    metadata: Metadata | None = None


class UpdateConversation(Strict):
    metadata: Metadata


class AddItems(Strict):
    items: Annotated[list[InputItem], Field(min_length=1, max_length=MAX_ITEMS)]


def _missing(conversation_id: str):
    return not_found("Conversation", conversation_id, "conversation_id")


@router.post("/v1/conversations")
async def create_conversation(body: CreateConversation, request: Request, key: Key):
    check_items(body.items or [], "items")
    conversation = {
        "id": new_id("conv"),
        "object": "conversation",
        "created_at": int(time.time()),
        "metadata": body.metadata or {},
    }
    items = stored_items(body.items or [])
    await store_call(request, "create_conversation", owner_of(key), conversation, items)
    return JSONResponse(conversation)


@router.get("/v1/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, request: Request, key: Key):
    found = await store_call(request, "get_conversation", owner_of(key), conversation_id)
    if found is None:
        raise _missing(conversation_id)
    return JSONResponse(found)


@router.post("/v1/conversations/{conversation_id}")
async def update_conversation(
    conversation_id: str, body: UpdateConversation, request: Request, key: Key
):
    owner = owner_of(key)
    found = await store_call(request, "update_conversation", owner, conversation_id, body.metadata)
    if found is None:
        raise _missing(conversation_id)
    return JSONResponse(found)


@router.delete("/v1/conversations/{conversation_id}")
async def delete_conversation(conversation_id: str, request: Request, key: Key):
    if not await store_call(request, "delete_conversation", owner_of(key), conversation_id):
        raise _missing(conversation_id)
    return JSONResponse({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


@router.get("/v1/conversations/{conversation_id}/items")
async def list_items(conversation_id: str, request: Request, key: Key, query: Listing):
    """The conversation's items, as given, newest first unless ``order=asc`` (``ListQuery``)."""
    items = await store_call(request, "conversation_items", owner_of(key), conversation_id)
    if items is None:
        raise _missing(conversation_id)
    return JSONResponse(query.page(public_items(items)))


@router.post("/v1/conversations/{conversation_id}/items")
async def add_items(conversation_id: str, body: AddItems, request: Request, key: Key):
    check_items(body.items, "items")
    items = stored_items(body.items)
    if not await store_call(request, "add_items", owner_of(key), conversation_id, items):
        raise _missing(conversation_id)
    return JSONResponse(page(items, None, len(items), "asc"))


@router.get("/v1/conversations/{conversation_id}/items/{item_id}")
async def get_item(conversation_id: str, item_id: str, request: Request, key: Key):
    found = await store_call(request, "get_item", owner_of(key), conversation_id, item_id)
    if found is None:
        raise not_found("Item", item_id, "item_id")
    return JSONResponse(public_items([found])[0])


@router.delete("/v1/conversations/{conversation_id}/items/{item_id}")
async def delete_item(conversation_id: str, item_id: str, request: Request, key: Key):
    """Deletes the item; answers with the conversation, as OpenAI does."""
    owner = owner_of(key)
    if not await store_call(request, "delete_item", owner, conversation_id, item_id):
        raise not_found("Item", item_id, "item_id")
    return JSONResponse(await store_call(request, "get_conversation", owner, conversation_id))
