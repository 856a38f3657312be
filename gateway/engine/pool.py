"""The process pool: slots for live Claude Code processes, pre-started spares, eviction.

At most ``max_live`` processes live at once (spares and ones starting included). A
conversation that needs a process and finds no free slot closes a spare, or evicts the
least recently used idle conversation's process, or waits. The pool knows a process only
through the small :class:`Session` protocol and a conversation only through
:class:`Tenant`, so it is unit-tested with fakes (tests/test_engine_pool.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from gateway.errors import ErrorKind, GatewayError

log = logging.getLogger(__name__)

#: what makes processes interchangeable: model, system text hash, file-sink profile, client tools
SpareKey = tuple[str | None, str, str, str]


class Session(Protocol):
    """What the pool needs of one live CLI process."""

    @property
    def pid(self) -> int | None: ...

    @property
    def spare_key(self) -> SpareKey: ...

    def alive(self) -> bool: ...

    async def close(self, *, kill: bool) -> bool:
        """End the process (SIGKILL its tree first if ``kill``); True if this call ended it,
        False if it was closed already."""
        ...


class Tenant(Protocol):
    """What the pool needs of a conversation that asks for a process."""

    @property
    def key(self) -> str: ...

    @property
    def last_used(self) -> float: ...

    def idle_with_process(self) -> bool:
        """It owns a process and runs and queues nothing: it may be evicted."""
        ...

    def check_withdrawn(self) -> None:
        """Raise GatewayError(INTERRUPTED) if the turn it asks for lost its client."""
        ...


S = TypeVar("S", bound=Session)
T = TypeVar("T", bound=Tenant)


class ProcessPool(Generic[S, T]):
    """Live-process slots, spares and eviction, for sessions ``S`` of tenants ``T``."""

    def __init__(
        self,
        *,
        max_live: int,
        spares: int,
        turn_slots: asyncio.Semaphore,
        tenants: Callable[[], Iterable[T]],
        evict: Callable[[T], Awaitable[None]],
    ) -> None:
        self.max_live = max_live
        self.spare_count = spares
        #: the engine's parallel-turn slots; a waiter for a process gives its one back
        self._turn_slots = turn_slots
        self._tenants = tenants
        self._evict = evict
        self._cond = asyncio.Condition()
        self.used = 0  # live CLI processes, spares and ones starting included
        self.spares: list[S] = []
        self._refilling: dict[SpareKey, asyncio.Task[None]] = {}
        #: set to start a refill that still waits out its ``after`` now
        self._now: dict[SpareKey, asyncio.Event] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.stopping = False

    # ------------------------------------------------------------------ slots

    async def acquire(self, requester: T) -> None:
        """Wait for a live-process slot, closing a spare or the least recently used idle
        conversation's process to make room.

        The caller holds a parallel-turn slot. It is given back while waiting here: the
        conversations owning the processes must be able to run the turns they have queued,
        or they never become idle and every turn slot waits (a deadlock).
        """
        while True:
            requester.check_withdrawn()
            victim: T | None = None
            spare: S | None = None
            released = False
            try:
                async with self._cond:
                    if self.used < self.max_live:
                        self.used += 1
                        return
                    if self.spares:
                        spare = self.spares.pop(0)
                    else:
                        idle = [t for t in self._tenants()
                                if t is not requester and t.idle_with_process()]
                        if not idle:
                            self._turn_slots.release()
                            released = True
                            await self._cond.wait()
                            continue
                        victim = min(idle, key=lambda t: t.last_used)
                if spare is not None:
                    await self.close(spare, kill=False)
                elif victim is not None:
                    log.info("evicting %s to make room for %s", victim.key, requester.key)
                    self._turn_slots.release()  # the victim may have to finish a new turn
                    released = True
                    await self._evict(victim)
            finally:
                if released:
                    await self._turn_slots.acquire()

    async def try_acquire(self) -> bool:
        async with self._cond:
            if self.used < self.max_live:
                self.used += 1
                return True
            return False

    def release(self) -> None:
        self.used -= 1
        self.spawn(self.notify())

    async def notify(self) -> None:
        """Wake the waiters for a slot (a process or a turn ended, a client left)."""
        async with self._cond:
            self._cond.notify_all()

    async def start(
        self, launch: Callable[[], Awaitable[S]], *, for_tenant: T | None
    ) -> S:
        """Take a slot (waiting for one for ``for_tenant``; none free is BUSY for a spare)
        and start a process in it; the slot is given back if the start fails."""
        if for_tenant is not None:
            await self.acquire(for_tenant)
            try:
                for_tenant.check_withdrawn()
            except GatewayError:
                self.release()
                raise
        elif not await self.try_acquire():
            raise GatewayError(ErrorKind.BUSY, "no free process slot for a spare")
        try:
            return await launch()
        except BaseException:
            self.release()
            raise

    async def close(self, session: S, *, kill: bool) -> None:
        """End a process and free its slot (once, however often it is called)."""
        if await session.close(kill=kill):
            self.release()

    # ------------------------------------------------------------------ spares

    def take_spare(self, key: SpareKey) -> S | None:
        for session in list(self.spares):
            if session.spare_key != key:
                continue
            self.spares.remove(session)
            if session.alive():
                return session
            self.spawn(self.close(session, kill=True))
        return None

    def refilling(self, key: SpareKey) -> asyncio.Task[None] | None:
        """The start of a spare of this kind under way, if any."""
        return self._refilling.get(key)

    def hurry_refill(self, key: SpareKey) -> asyncio.Task[None] | None:
        """:meth:`refilling`, for a caller about to wait for it: a start still waiting out
        its ``after`` begins at once."""
        now = self._now.get(key)
        if now is not None:
            now.set()
        return self.refilling(key)

    def schedule_refill(self, key: SpareKey, launch: Callable[[], Awaitable[S]], *,
                        after: float = 0.0) -> None:
        """Keep a pre-started process ready for the next new conversation of this kind,
        starting it ``after`` seconds from now (unless a new conversation needs it first)."""
        if self.spare_count <= 0 or self.stopping or key in self._refilling:
            return
        if any(s.spare_key == key for s in self.spares):
            return
        if after > 0:  # made now: a caller may hurry it before the task first runs
            self._now[key] = asyncio.Event()
        task = asyncio.ensure_future(self._refill(key, launch, after))
        self._refilling[key] = task
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refill(self, key: SpareKey, launch: Callable[[], Awaitable[S]],
                      after: float) -> None:
        try:
            now = self._now.get(key)
            if now is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(now.wait(), after)
            while len(self.spares) >= self.spare_count:
                await self.close(self.spares.pop(0), kill=False)
            session = await self.start(launch, for_tenant=None)
            if self.stopping:
                await self.close(session, kill=False)
                return
            self.spares.append(session)
            log.info("pre-started Claude Code (pid %s) for the next new conversation",
                     session.pid)
            await self.notify()  # a waiter may take it, or close it for room
        except GatewayError as exc:
            log.info("no spare Claude Code process: %s", exc.message)
        finally:
            self._refilling.pop(key, None)
            self._now.pop(key, None)

    # ------------------------------------------------------------------ lifecycle

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run pool housekeeping in the background (cancelled by :meth:`stop`)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        """No new spares; cancel the housekeeping; close the spares."""
        self.stopping = True
        for task in list(self._background):
            task.cancel()
        spares, self.spares = self.spares, []
        await asyncio.gather(*(self.close(s, kill=False) for s in spares))
