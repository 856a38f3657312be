"""The process pool on its own, with fake sessions and conversations (no CLI): slots,
eviction, spares, and the process-slot/turn-slot deadlock fix. The real-CLI behaviour of the
same code is in tests/test_engine.py and tests/test_engine_spares.py."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.engine.pool import ProcessPool, SpareKey
from gateway.errors import ErrorKind, GatewayError

PLAIN: SpareKey = ("sonnet", "", "", "")
PIRATE: SpareKey = ("sonnet", "pirate", "", "")
_pids = itertools.count(1000)


@dataclass(eq=False)
class FakeSession:
    spare_key: SpareKey = PLAIN
    pid: int | None = field(default_factory=lambda: next(_pids))
    dead: bool = False
    closing: bool = False
    closes: int = 0  # how often close() really ended it
    killed: bool = False

    def alive(self) -> bool:
        return not self.dead

    async def close(self, *, kill: bool) -> bool:
        if self.closing:
            return False
        self.closing = True
        await asyncio.sleep(0.01)  # a real close awaits its host task
        self.closes += 1
        self.killed = kill
        return True


@dataclass(eq=False)
class FakeTenant:
    key: str
    last_used: float = 0.0
    session: FakeSession | None = None
    busy: bool = False
    withdrawn: bool = False

    def idle_with_process(self) -> bool:
        return self.session is not None and not self.busy

    def check_withdrawn(self) -> None:
        if self.withdrawn:
            raise GatewayError(ErrorKind.INTERRUPTED, "withdrawn")


@dataclass
class Rig:
    pool: ProcessPool[FakeSession, FakeTenant]
    turns: asyncio.Semaphore
    tenants: list[FakeTenant]
    evicted: list[str]

    async def occupy(self, tenant: FakeTenant, key: SpareKey = PLAIN) -> FakeSession:
        """``tenant`` starts a process in the pool (as a conversation's first turn does)."""
        tenant.session = await self.pool.start(_launcher(key), for_tenant=tenant)
        if tenant not in self.tenants:
            self.tenants.append(tenant)
        return tenant.session


def _launcher(key: SpareKey = PLAIN) -> Callable[[], Awaitable[FakeSession]]:
    async def launch() -> FakeSession:
        await asyncio.sleep(0)
        return FakeSession(key)
    return launch


def rig(max_live: int, *, spares: int = 0, turns: int = 4) -> Rig:
    tenants: list[FakeTenant] = []
    evicted: list[str] = []
    sem = asyncio.Semaphore(turns)
    holder: list[ProcessPool[FakeSession, FakeTenant]] = []

    async def evict(tenant: FakeTenant) -> None:  # the engine ends the worker, which closes
        evicted.append(tenant.key)
        session, tenant.session = tenant.session, None
        if session is not None:
            await holder[0].close(session, kill=False)

    pool: ProcessPool[FakeSession, FakeTenant] = ProcessPool(
        max_live=max_live, spares=spares, turn_slots=sem, tenants=lambda: tenants, evict=evict)
    holder.append(pool)
    return Rig(pool, sem, tenants, evicted)


async def test_a_full_pool_evicts_the_least_recently_used_idle_conversation() -> None:
    r = rig(2)
    old, recent = FakeTenant("old", last_used=1.0), FakeTenant("recent", last_used=2.0)
    await r.occupy(old)
    await r.occupy(recent)
    assert r.pool.used == 2
    await r.occupy(FakeTenant("new"))
    assert r.evicted == ["old"] and r.pool.used == 2
    assert recent.session is not None and recent.session.closes == 0


async def test_a_busy_conversation_is_never_evicted() -> None:
    r = rig(2)
    busy = FakeTenant("busy", last_used=0.0)
    idle = FakeTenant("idle", last_used=5.0)
    await r.occupy(busy)
    await r.occupy(idle)
    busy.busy = True
    await r.occupy(FakeTenant("new"))
    assert r.evicted == ["idle"]


async def test_a_spare_is_closed_before_any_conversation_is_evicted() -> None:
    r = rig(2, spares=1)
    await r.occupy(FakeTenant("a"))
    r.pool.schedule_refill(PIRATE, _launcher(PIRATE))
    while not r.pool.spares:
        await asyncio.sleep(0.01)
    spare = r.pool.spares[0]
    await r.occupy(FakeTenant("b"))
    assert r.evicted == [] and spare.closes == 1 and r.pool.used == 2


async def test_waiting_for_a_process_gives_the_turn_slot_back() -> None:
    """The deadlock fix: the owner of the only process must be able to run its queued turn
    (it needs a turn slot) while a new conversation, holding the only turn slot, waits."""
    r = rig(1, turns=1)
    owner = FakeTenant("owner")
    await r.occupy(owner)
    owner.busy = True  # a turn of it is queued: not idle, not evictable
    await r.turns.acquire()  # the newcomer holds the only parallel-turn slot
    newcomer = FakeTenant("newcomer")
    r.tenants.append(newcomer)
    waiting = asyncio.ensure_future(r.pool.start(_launcher(), for_tenant=newcomer))
    # the owner gets a turn slot although the newcomer "holds" the only one
    await asyncio.wait_for(r.turns.acquire(), timeout=1)
    assert not waiting.done()
    owner.busy = False  # its turn ran; it is idle now
    r.turns.release()
    await r.pool.notify()
    session = await asyncio.wait_for(waiting, timeout=1)
    assert r.evicted == ["owner"] and session.closes == 0
    assert r.turns.locked(), "the newcomer holds its turn slot again"
    assert r.pool.used == 1


async def test_a_withdrawn_turn_stops_waiting_and_takes_no_slot() -> None:
    r = rig(1, turns=1)
    owner = FakeTenant("owner", busy=True)
    await r.occupy(owner)
    await r.turns.acquire()
    leaver = FakeTenant("leaver")
    waiting = asyncio.ensure_future(r.pool.start(_launcher(), for_tenant=leaver))
    await asyncio.sleep(0.05)
    leaver.withdrawn = True  # its client left
    await r.pool.notify()
    with pytest.raises(GatewayError) as err:
        await asyncio.wait_for(waiting, timeout=1)
    assert err.value.kind is ErrorKind.INTERRUPTED
    assert r.pool.used == 1 and r.turns.locked()


async def test_a_failed_start_gives_its_slot_back() -> None:
    r = rig(1)

    async def broken() -> FakeSession:
        raise GatewayError(ErrorKind.CRASHED, "Claude Code failed to start")

    with pytest.raises(GatewayError):
        await r.pool.start(broken, for_tenant=FakeTenant("t"))
    assert r.pool.used == 0
    await r.occupy(FakeTenant("next"))
    assert r.pool.used == 1


async def test_no_spare_without_a_free_slot_and_closing_twice_frees_one_slot() -> None:
    r = rig(1, spares=1)
    tenant = FakeTenant("t")
    session = await r.occupy(tenant)
    with pytest.raises(GatewayError) as err:
        await r.pool.start(_launcher(), for_tenant=None)
    assert err.value.kind is ErrorKind.BUSY
    await asyncio.gather(r.pool.close(session, kill=False), r.pool.close(session, kill=True))
    assert r.pool.used == 0 and session.closes == 1


async def _refilled(r: Rig, key: SpareKey) -> None:
    starting = r.pool.refilling(key)
    assert starting is not None, "a spare of this kind is on its way"
    await starting


async def test_a_refill_after_a_turn_waits_unless_a_new_conversation_needs_it() -> None:
    """schedule_refill(after=...): nothing starts (no slot, no process) while the turn that
    took the spare ends; the spare starts when the time is up, or at once for a caller
    about to wait for it (hurry_refill, even in the same step as the scheduling);
    stopping the pool cancels a waiting one."""
    r = rig(4, spares=1)
    r.pool.schedule_refill(PLAIN, _launcher(PLAIN), after=0.2)
    await asyncio.sleep(0.05)
    assert r.pool.used == 0 and not r.pool.spares, "started before its time"
    await _refilled(r, PLAIN)  # the time runs out on its own
    assert [s.spare_key for s in r.pool.spares] == [PLAIN]
    assert r.pool.take_spare(PLAIN) is not None
    r.pool.schedule_refill(PLAIN, _launcher(PLAIN), after=60)
    starting = r.pool.hurry_refill(PLAIN)  # before the refill's task has even run
    assert starting is not None
    await asyncio.wait_for(starting, 5)  # not a minute
    assert [s.spare_key for s in r.pool.spares] == [PLAIN]
    assert r.pool.hurry_refill(PIRATE) is None, "no spare of this kind on its way"
    r.pool.schedule_refill(PIRATE, _launcher(PIRATE), after=60)
    waiting = r.pool.refilling(PIRATE)
    assert waiting is not None
    await r.pool.stop()
    assert waiting.cancelled() and not r.pool.spares


async def test_spares_one_per_kind_dead_ones_discarded_the_oldest_replaced() -> None:
    r = rig(4, spares=1)
    r.pool.schedule_refill(PLAIN, _launcher(PLAIN))
    r.pool.schedule_refill(PLAIN, _launcher(PLAIN))  # one on its way already: no second
    starting = r.pool.refilling(PLAIN)
    assert starting is not None
    await starting
    assert [s.spare_key for s in r.pool.spares] == [PLAIN] and r.pool.used == 1
    r.pool.schedule_refill(PIRATE, _launcher(PIRATE))  # at most one spare: PLAIN goes
    await _refilled(r, PIRATE)
    assert [s.spare_key for s in r.pool.spares] == [PIRATE] and r.pool.used == 1
    assert r.pool.take_spare(PLAIN) is None
    r.pool.spares[0].dead = True
    assert r.pool.take_spare(PIRATE) is None, "a dead spare is never handed out"
    while r.pool.used:
        await asyncio.sleep(0.01)
    r.pool.schedule_refill(PLAIN, _launcher(PLAIN))
    await _refilled(r, PLAIN)
    spare = r.pool.take_spare(PLAIN)
    assert spare is not None and spare.closes == 0 and not r.pool.spares
    await r.pool.stop()
    r.pool.schedule_refill(PLAIN, _launcher(PLAIN))
    assert r.pool.refilling(PLAIN) is None, "no new spares once stopping"
