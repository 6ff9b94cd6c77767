"""The response store's tables and queries, shared by the SQLite and PostgreSQL backends.

A stored response is one row of ``responses`` (its whole Response object as JSON, its owner:
the name of the API key that made it, and the response it continues) plus its input items,
one row each, in order. History for ``previous_response_id`` is one recursive query up the
chain. Queries are written with ``%s`` placeholders (psycopg's); SQLite's ``?`` replaces them.
Every read is scoped to the owner and skips expired rows, whether or not the cleanup task
has deleted them yet. A conversation is one row of ``conversations`` plus its items in order;
conversations do not expire (as OpenAI's): they last until deleted.
"""

import json
import time
from abc import ABC, abstractmethod
from typing import Any

import serve_app.store.ledger as ledger

# Applied in order at start; the store records how many it has applied (``schema_version``).
MIGRATIONS = [
    [
        """CREATE TABLE IF NOT EXISTS responses (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            previous_id TEXT,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS responses_expires_at ON responses (expires_at)",
        """CREATE TABLE IF NOT EXISTS input_items (
            response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (response_id, seq)
        )""",
    ],
    [
        """CREATE TABLE IF NOT EXISTS conversations (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            metadata TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS conversation_items (
            conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            item_id TEXT NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (conversation_id, seq)
        )""",
        """CREATE INDEX IF NOT EXISTS conversation_items_id
            ON conversation_items (conversation_id, item_id)""",
    ],
    [  # background responses: a lease held by the ingress replica running one, a cancel
        # request, and the events it streamed (for replay)
        "ALTER TABLE responses ADD COLUMN lease_until BIGINT",
        "ALTER TABLE responses ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE IF NOT EXISTS response_events (
            response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (response_id, seq)
        )""",
    ],
    ledger.MIGRATION,
]
RUNNING = ("queued", "in_progress")  # a background response's statuses before its end
LEASE_LOST = {
    "code": "server_error",
    "message": "The server running this background response stopped before it finished.",
}

UPSERT_RESPONSE = """INSERT INTO responses
    (id, owner, previous_id, created_at, expires_at, body, lease_until)
    VALUES (%s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (id) DO UPDATE SET body = excluded.body, lease_until = excluded.lease_until
    WHERE responses.owner = excluded.owner"""
GET_RESPONSE = """SELECT body, lease_until, cancel_requested FROM responses
    WHERE id = %s AND owner = %s AND expires_at > %s"""
ADD_EVENT = """INSERT INTO response_events (response_id, seq, body)
    SELECT id, %s, %s FROM responses WHERE id = %s AND owner = %s"""
DELETE_RESPONSE = "DELETE FROM responses WHERE id = %s AND owner = %s AND expires_at > %s"
CHAIN = """WITH RECURSIVE chain (id, previous_id, depth) AS (
        SELECT id, previous_id, 0 FROM responses
        WHERE id = %s AND owner = %s AND expires_at > %s
        UNION ALL
        SELECT r.id, r.previous_id, c.depth + 1 FROM responses r JOIN chain c
        ON r.id = c.previous_id
        WHERE r.owner = %s AND r.expires_at > %s AND c.depth < %s
    )
    SELECT chain.depth, responses.body, items.body
    FROM chain JOIN responses ON responses.id = chain.id
    LEFT JOIN input_items items ON items.response_id = chain.id
    ORDER BY chain.depth DESC, items.seq"""
INPUT_ITEMS = """SELECT items.body FROM input_items items JOIN responses r
    ON r.id = items.response_id
    WHERE r.id = %s AND r.owner = %s AND r.expires_at > %s ORDER BY items.seq"""
EXPIRED = "DELETE FROM responses WHERE expires_at <= %s"
# Appending to a conversation: the first statement locks its row (PostgreSQL; SQLite's
# writers are serial anyway) and says whether it is the owner's; each item then takes the
# next position, in a conversation of that owner only.
LOCK_CONVERSATION = "UPDATE conversations SET id = id WHERE id = %s AND owner = %s"
APPEND_ITEM = """INSERT INTO conversation_items (conversation_id, seq, item_id, body)
    SELECT c.id, COALESCE((SELECT MAX(seq) FROM conversation_items
                           WHERE conversation_id = c.id), -1) + 1, %s, %s
    FROM conversations c WHERE c.id = %s AND c.owner = %s"""
# An item's new body, only where it is still as it was read (and the conversation the owner's).
UPDATE_ITEM = """UPDATE conversation_items SET body = %s
    WHERE conversation_id = %s AND item_id = %s AND body = %s
    AND EXISTS (SELECT 1 FROM conversations WHERE id = %s AND owner = %s)"""
CONVERSATION_ITEMS = """SELECT items.body FROM conversation_items items JOIN conversations c
    ON c.id = items.conversation_id
    WHERE c.id = %s AND c.owner = %s ORDER BY items.seq"""


TOO_LONG = "too_long"  # what ``history`` answers for a chain longer than asked to expand


class SQLStore(ledger.UsageLedger, ABC):
    """The store's operations (``OPERATIONS``) over a backend's ``_query`` and
    ``_transaction``."""

    OPERATIONS = frozenset(
        {
            "put_response",
            "add_events",
            "get_response",
            "renew",
            "request_cancel",
            "events_after",
            "delete_response",
            "history",
            "input_items",
            "create_conversation",
            "get_conversation",
            "update_conversation",
            "delete_conversation",
            "add_items",
            "update_items",
            "conversation_items",
            "get_item",
            "delete_item",
            "add_usage",
            "usage_totals",
            "usage_buckets",
        }
    )

    def __init__(self, retention_s: float, usage_retention_s: float = 400 * 86400) -> None:
        self.retention_s = retention_s
        self.usage_retention_s = usage_retention_s

    @abstractmethod
    async def start(self) -> None:
        """Connect and bring the schema up to date (``MIGRATIONS``)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def _query(self, sql: str, params: tuple) -> list[tuple]:
        """The rows of one statement."""

    @abstractmethod
    async def _transaction(self, statements: list[tuple[str, tuple]]) -> list[int]:
        """Run statements in one transaction; the rows each changed."""

    async def put_response(
        self,
        owner: str,
        response: dict[str, Any],
        items: list[dict],
        events: list[dict] | None = None,
        lease_until: int | None = None,
    ) -> None:
        """Store (or update, same owner only) a response and its input items, committed
        when this returns; with the ``events`` it streamed since the last call (background
        responses), and the lease of the replica running it (None once it has ended)."""
        created = int(response["created_at"])
        row = (
            response["id"],
            owner,
            response.get("previous_response_id"),
            created,
            int(created + self.retention_s),
            json.dumps(response),
            lease_until,
        )
        statements = [(UPSERT_RESPONSE, row)]
        statements.append(("DELETE FROM input_items WHERE response_id = %s", (response["id"],)))
        statements += [
            (
                "INSERT INTO input_items (response_id, seq, body) VALUES (%s, %s, %s)",
                (response["id"], seq, json.dumps(item)),
            )
            for seq, item in enumerate(items)
        ]
        statements += _events(owner, response["id"], events or [])
        await self._transaction(statements)

    async def add_events(self, owner: str, response_id: str, events: list[dict]) -> None:
        await self._transaction(_events(owner, response_id, events))

    async def get_response(self, owner: str, response_id: str) -> dict[str, Any] | None:
        """The response; a background one whose runner's lease ran out is ended as
        ``failed`` here (and for good)."""
        rows = await self._query(GET_RESPONSE, (response_id, owner, _now()))
        if not rows:
            return None
        body, lease_until, _ = rows[0]
        response = json.loads(body)
        if response["status"] in RUNNING and lease_until is not None and lease_until < _now():
            response["status"], response["error"] = "failed", dict(LEASE_LOST)
            update = """UPDATE responses SET body = %s, lease_until = NULL
                WHERE id = %s AND owner = %s AND lease_until = %s"""
            await self._transaction([(update, (json.dumps(response), response_id, owner,
                                              lease_until))])  # fmt: skip
            return await self.get_response(owner, response_id)
        return response

    async def renew(self, owner: str, response_id: str, lease_until: int) -> bool:
        """Extend a running background response's lease; whether a cancel was asked."""
        update = "UPDATE responses SET lease_until = %s WHERE id = %s AND owner = %s"
        await self._transaction([(update, (lease_until, response_id, owner))])
        rows = await self._query(GET_RESPONSE, (response_id, owner, _now()))
        return bool(rows and rows[0][2])

    async def request_cancel(self, owner: str, response_id: str) -> bool:
        """Ask the runner of a background response to stop; False if not there."""
        update = "UPDATE responses SET cancel_requested = 1 WHERE id = %s AND owner = %s"
        (changed,) = await self._transaction([(update, (response_id, owner))])
        return changed > 0

    async def events_after(self, owner: str, response_id: str, after: int) -> dict[str, Any] | None:
        """A background response's stored events after sequence number ``after``, and the
        response as it stands (``get_response``); None if it is not there."""
        response = await self.get_response(owner, response_id)
        if response is None:
            return None
        rows = await self._query(
            "SELECT body FROM response_events WHERE response_id = %s AND seq > %s ORDER BY seq",
            (response_id, after),
        )
        return {"response": response, "events": [json.loads(body) for (body,) in rows]}

    async def delete_response(self, owner: str, response_id: str) -> bool:
        (deleted,) = await self._transaction([(DELETE_RESPONSE, (response_id, owner, _now()))])
        return deleted > 0

    async def history(
        self, owner: str, response_id: str, max_chain: int
    ) -> list[dict] | str | None:
        """The items of the chain ending at ``response_id``, oldest first: each response's
        input items, then its output. None if the response is not there for ``owner``;
        ``TOO_LONG`` beyond ``max_chain`` responses. A chain whose older part was deleted
        (or expired) starts where what is left starts."""
        now = _now()
        rows = await self._query(CHAIN, (response_id, owner, now, owner, now, max_chain))
        if not rows:
            return None
        if rows[0][0] >= max_chain:  # the query goes one response further than allowed
            return TOO_LONG
        items: list[dict] = []
        for i, (depth, body, item) in enumerate(rows):
            if item is not None:
                items.append(json.loads(item))
            if i + 1 == len(rows) or rows[i + 1][0] != depth:  # the response's last row
                items.extend(json.loads(body)["output"])
        return items

    async def input_items(self, owner: str, response_id: str) -> list[dict] | None:
        """A response's own input items in order; None if it is not there for ``owner``."""
        if await self.get_response(owner, response_id) is None:
            return None
        rows = await self._query(INPUT_ITEMS, (response_id, owner, _now()))
        return [json.loads(body) for (body,) in rows]

    async def create_conversation(
        self, owner: str, conversation: dict[str, Any], items: list[dict]
    ) -> None:
        row = (conversation["id"], owner, conversation["created_at"])
        insert = (
            "INSERT INTO conversations (id, owner, created_at, metadata) VALUES (%s, %s, %s, %s)"
        )
        statements = [(insert, (*row, json.dumps(conversation["metadata"])))]
        statements += _appends(owner, conversation["id"], items)
        await self._transaction(statements)

    async def get_conversation(self, owner: str, conversation_id: str) -> dict[str, Any] | None:
        rows = await self._query(
            "SELECT created_at, metadata FROM conversations WHERE id = %s AND owner = %s",
            (conversation_id, owner),
        )
        if not rows:
            return None
        created, metadata = rows[0]
        return _conversation(conversation_id, created, json.loads(metadata))

    async def update_conversation(
        self, owner: str, conversation_id: str, metadata: dict[str, str]
    ) -> dict[str, Any] | None:
        update = "UPDATE conversations SET metadata = %s WHERE id = %s AND owner = %s"
        await self._transaction([(update, (json.dumps(metadata), conversation_id, owner))])
        return await self.get_conversation(owner, conversation_id)

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        delete = "DELETE FROM conversations WHERE id = %s AND owner = %s"
        (deleted,) = await self._transaction([(delete, (conversation_id, owner))])
        return deleted > 0

    async def add_items(self, owner: str, conversation_id: str, items: list[dict]) -> bool:
        """Append ``items`` in order; False if the conversation is not the owner's."""
        statements = [(LOCK_CONVERSATION, (conversation_id, owner))]
        statements += _appends(owner, conversation_id, items)
        counts = await self._transaction(statements)
        return counts[0] > 0

    async def update_items(
        self, owner: str, conversation_id: str, changes: list[tuple[dict, dict]]
    ) -> None:
        """Replace items by newer versions of themselves (``(as read, new)`` pairs, as when
        the ingress keeps a transcript on an item's audio part); an item changed or deleted
        since it was read, or another item with the same id, is left as it is."""
        await self._transaction(
            [
                (UPDATE_ITEM, (json.dumps(new), conversation_id, old["id"], json.dumps(old),
                               conversation_id, owner))
                for old, new in changes
            ]
        )  # fmt: skip

    async def conversation_items(self, owner: str, conversation_id: str) -> list[dict] | None:
        """Every item of the conversation in order; None if it is not the owner's."""
        if await self.get_conversation(owner, conversation_id) is None:
            return None
        rows = await self._query(CONVERSATION_ITEMS, (conversation_id, owner))
        return [json.loads(body) for (body,) in rows]

    async def get_item(self, owner: str, conversation_id: str, item_id: str) -> dict | None:
        rows = await self._query(
            CONVERSATION_ITEMS.replace("ORDER BY", "AND items.item_id = %s ORDER BY"),
            (conversation_id, owner, item_id),
        )
        return json.loads(rows[0][0]) if rows else None

    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> bool:
        delete = """DELETE FROM conversation_items WHERE conversation_id = %s AND item_id = %s
            AND EXISTS (SELECT 1 FROM conversations WHERE id = %s AND owner = %s)"""
        params = (conversation_id, item_id, conversation_id, owner)
        (deleted,) = await self._transaction([(delete, params)])
        return deleted > 0

    async def cleanup(self) -> int:
        """Delete what is past its retention; how many responses went."""
        now = _now()
        old_usage = (ledger.EXPIRED, (int(now - self.usage_retention_s),))
        old_ids = (ledger.EXPIRED_IDS, (int(now - ledger.IDS_KEPT_S),))
        deleted, *_ = await self._transaction([(EXPIRED, (now,)), old_usage, old_ids])
        return deleted


def _events(owner: str, response_id: str, events: list[dict]) -> list[tuple[str, tuple]]:
    return [
        (ADD_EVENT, (event["sequence_number"], json.dumps(event), response_id, owner))
        for event in events
    ]


def _appends(owner: str, conversation_id: str, items: list[dict]) -> list[tuple[str, tuple]]:
    return [(APPEND_ITEM, (item["id"], json.dumps(item), conversation_id, owner)) for item in items]


def _conversation(conversation_id: str, created_at: int, metadata: dict) -> dict[str, Any]:
    return {
        "id": conversation_id,
        "object": "conversation",
        "created_at": created_at,
        "metadata": metadata,
    }


def _now() -> int:
    return int(time.time())
