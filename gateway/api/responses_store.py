"""The Responses API's table group (``api_responses``, migrations 3 and 7), opened through
:meth:`gateway.engine.api.EngineAPI.tables`.

A row maps a response made with ``store: true`` to the conversation (engine key and
conversation id), the turn it answered and the CLI session's mark at its end, for
``previous_response_id`` (an older response forks the session there), and keeps the
response object for ``GET /v1/responses/{id}``. Each row has an ``owner`` (a hash of the API key
that made it, empty without keys): another key neither reads nor continues it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.engine.events import TurnMark
from gateway.store import Tables


@dataclass(frozen=True)
class ResponseRow:
    id: str
    owner: str
    conversation_key: str
    conversation_id: str
    turn: int  # 1 for a conversation's first stored response
    #: the conversation's reply fingerprint when this response ended (if the conversation's
    #: current one differs, a later turn happened: this response is not its latest)
    reply: str
    body: str  # the response object as JSON
    created_at: float
    #: the CLI session's mark at the end of the response's turn (None: not known)
    session_id: str | None = None
    message_id: str | None = None

    @property
    def mark(self) -> TurnMark | None:
        return TurnMark.of(self.session_id, self.message_id)


class ResponseStore(Tables):
    """Response ids -> conversations (and stored response bodies)."""

    #: rows kept; the oldest are deleted as new ones are added
    keep_rows = 20_000

    async def add(
        self, *, id: str, owner: str, conversation_key: str, conversation_id: str,
        reply: str, body: str, mark: TurnMark | None = None,
    ) -> int:
        """Record a finished response; returns its turn number in the conversation."""

        def run() -> int:
            db = self._db()
            db.execute("BEGIN")
            (turn,) = db.execute(
                "SELECT COALESCE(MAX(turn), 0) + 1 FROM api_responses"
                " WHERE conversation_key = ?", (conversation_key,),
            ).fetchone()
            cursor = db.execute(
                "INSERT INTO api_responses (id, owner, conversation_key, conversation_id, turn,"
                " reply, body, created_at, session_id, message_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (id, owner, conversation_key, conversation_id, turn, reply, body, time.time(),
                 None if mark is None else mark.session_id,
                 None if mark is None else mark.message_id),
            )
            db.execute("DELETE FROM api_responses WHERE rowid <= ?",
                       ((cursor.lastrowid or 0) - self.keep_rows,))
            db.execute("COMMIT")
            return int(turn)

        return await self._run(run)

    async def get(self, id: str, owner: str) -> ResponseRow | None:
        """The row of ``id`` if ``owner`` made it."""

        def run() -> ResponseRow | None:
            row = self._db().execute(
                "SELECT id, owner, conversation_key, conversation_id, turn, reply, body,"
                " created_at, session_id, message_id FROM api_responses"
                " WHERE id = ? AND owner = ?", (id, owner),
            ).fetchone()
            return None if row is None else ResponseRow(*row)

        return await self._run(run)
