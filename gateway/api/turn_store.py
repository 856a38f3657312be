"""The API's turn record (``api_turns``, migration 6), opened through
:meth:`gateway.engine.api.EngineAPI.tables`.

One row per turn of an API conversation as its client saw it: fingerprints of the turn's
input and reply, the chained fingerprint of everything up to it, and the CLI session's mark
at its end (see :mod:`gateway.api.lineage`). Never any text. A row has an ``owner`` (the
hash of the API key that made it, empty without keys): requests made with another key never
find it. Indexes on the reply and chain fingerprints find the conversations a resent
history shares turns with, without reading any other.

The records used last are also kept in memory (:attr:`TurnStore.cache_turns`): every request
of a conversation reads its record, and a long one (a 1 MB history is ~200 turns) cost a
database round trip and a row per turn each time. This process is the table's only writer,
so what :meth:`TurnStore.commit` wrote is what the memory holds; one instance serves the
whole API (``gateway.api.exchange.RECORDS``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from gateway.api.lineage import RecordTurn
from gateway.store import Store, Tables

#: chains looked up per query (SQLite's limit on parameters is far above)
_CHUNK = 400


class TurnStore(Tables):
    """Conversation keys -> their turns."""

    #: rows kept; the conversations used longest ago are deleted whole beyond it
    keep_rows = 200_000
    #: how many commits pass between two checks of :attr:`keep_rows`
    prune_every = 500
    _commits = 0
    #: turns of the records used last kept in memory (~0.6 KB each)
    cache_turns = 10_000

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._cache: OrderedDict[str, tuple[RecordTurn, ...]] = OrderedDict()
        self._cached_turns = 0
        #: bumped by every write: a read that straddles one does not fill the cache
        self._writes = 0

    async def load(self, key: str) -> tuple[RecordTurn, ...]:
        """The record of ``key``, first turn first (empty: none)."""
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached

        def run() -> tuple[RecordTurn, ...]:
            rows = self._db().execute(
                "SELECT users, reply, chain, session_id, message_id FROM api_turns"
                " WHERE key = ? ORDER BY idx", (key,),
            ).fetchall()
            return tuple(RecordTurn(*row) for row in rows)

        writes = self._writes
        record = await self._run(run)
        if writes == self._writes:
            self._remember(key, record)
        return record

    def _remember(self, key: str, record: tuple[RecordTurn, ...]) -> None:
        self._forget(key)
        if not record or len(record) > self.cache_turns:
            return
        self._cache[key] = record
        self._cached_turns += len(record)
        while self._cached_turns > self.cache_turns:
            _, old = self._cache.popitem(last=False)
            self._cached_turns -= len(old)

    def _forget(self, key: str) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cached_turns -= len(old)

    async def candidates(
        self, owner: str, chains: Sequence[str], reply: str | None, limit: int = 8
    ) -> list[str]:
        """Keys of ``owner`` holding one of ``chains`` (a shared history prefix) or a turn
        with the reply ``reply`` (a shared recent turn), most recently used first."""

        def run() -> list[str]:
            db = self._db()
            found: dict[str, float] = {}
            queries: list[tuple[str, list[str]]] = [
                ("chain", list(chains[i:i + _CHUNK])) for i in range(0, len(chains), _CHUNK)
            ]
            if reply is not None:
                queries.append(("reply", [reply]))
            for column, values in queries:
                marks = ",".join("?" * len(values))
                for key, at in db.execute(
                    f"SELECT key, MAX(at) FROM api_turns WHERE owner = ? AND {column} IN"
                    f" ({marks}) GROUP BY key", (owner, *values),
                ):
                    found[key] = max(at, found.get(key, 0.0))
            return sorted(found, key=lambda k: found[k], reverse=True)[:limit]

        return await self._run(run)

    async def commit(
        self, key: str, owner: str, unchanged: int, turns: Sequence[RecordTurn]
    ) -> None:
        """Make ``turns`` the record of ``key``; its first ``unchanged`` rows are already
        ``turns[:unchanged]`` and stay as they are."""

        def run() -> bool:
            db = self._db()
            now = time.time()
            db.execute("BEGIN")
            db.execute("DELETE FROM api_turns WHERE key = ? AND idx > ?", (key, unchanged))
            db.executemany(
                "INSERT INTO api_turns (key, idx, owner, users, reply, chain, session_id,"
                " message_id, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(key, i + 1, owner, t.users, t.reply, t.chain, t.session_id, t.message_id, now)
                 for i, t in enumerate(turns) if i >= unchanged],
            )
            db.execute("COMMIT")
            TurnStore._commits += 1
            return TurnStore._commits % self.prune_every == 0 and self._prune()

        self._writes += 1
        self._forget(key)
        try:
            pruned = await self._run(run)
        finally:
            self._writes += 1
        if pruned:  # whole conversations went: which ones is not worth tracking here
            self._cache.clear()
            self._cached_turns = 0
        else:
            self._remember(key, tuple(turns))

    def _prune(self) -> bool:
        """Delete the conversations used longest ago beyond :attr:`keep_rows`; whether any
        went."""
        db = self._db()
        (rows,) = db.execute("SELECT COUNT(*) FROM api_turns").fetchone()
        if rows <= self.keep_rows:
            return False
        db.execute("BEGIN")
        excess = rows - self.keep_rows
        gone = 0
        for key, count in db.execute(
            "SELECT key, COUNT(*) FROM api_turns GROUP BY key ORDER BY MAX(at)"
        ).fetchall():
            if gone >= excess:
                break
            db.execute("DELETE FROM api_turns WHERE key = ?", (key,))
            gone += count
        db.execute("COMMIT")
        return True
