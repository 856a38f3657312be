"""Approval requests: Claude wants to run a tool and a person decides.

The engine's permission callback (the SDK's ``can_use_tool``) turns each request of the CLI
into an :class:`ApprovalRequest` and asks the :class:`ApprovalBroker`, which hands it to the
frontend's :class:`Approver` (a chat shows it with buttons) and waits for the first
:meth:`ApprovalBroker.decide` of its id. Whatever comes later, a second press, a press on the
button of a request that is over (the turn ended, the gateway restarted: the ids are in
memory only), gets its own :class:`Settled` answer and changes nothing. Nobody deciding
within the approval timeout is a denial; ``/stop`` (:meth:`ApprovalBroker.cancel`) denies
what waits in that conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from gateway.engine.permissions import Rule

log = logging.getLogger(__name__)


class Verdict(StrEnum):
    ALLOW = "allow"  # this once
    ALWAYS = "always"  # and add the request's rule to the conversation
    DENY = "deny"


class Cause(StrEnum):
    """Who or what decided."""

    PERSON = "person"
    TIMEOUT = "timeout"
    STOPPED = "stopped"  # /stop, the turn interrupted, the gateway stopping
    UNATTENDED = "unattended"  # nobody could be asked


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    cause: Cause = Cause.PERSON
    #: who decided ("Owner"), for the request's message
    by: str = ""
    #: a denial's reason, told to Claude
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.verdict is not Verdict.DENY


class Settled(StrEnum):
    """The answer to :meth:`ApprovalBroker.decide`."""

    ACCEPTED = "accepted"
    ALREADY = "already"  # decided before (a double press)
    UNKNOWN = "unknown"  # not waiting: over, or from before a restart


@dataclass(frozen=True)
class ApprovalRequest:
    id: str
    key: str  # the conversation whose turn asks
    origin: str  # the turn's origin ("telegram", "api", "cron")
    tool: str
    input: dict[str, Any]
    summary: str  # one line: "Run: npm test"
    #: what "always allow" adds to the conversation (None: not offered)
    rule: Rule | None
    timeout: float
    created_at: float = field(default_factory=time.time)


class Approver(Protocol):
    """A frontend that shows approval requests to a person (a chat bridge)."""

    async def present(self, request: ApprovalRequest) -> None:
        """Show the request with its choices; raise if it could not be shown (it is then
        denied at once)."""
        ...

    async def settled(self, request: ApprovalRequest, decision: Decision) -> None:
        """The request is over: show how (the buttons go)."""
        ...


@dataclass(eq=False)
class _Pending:
    request: ApprovalRequest
    future: asyncio.Future[Decision]


class ApprovalBroker:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pending: dict[str, _Pending] = {}
        self._done: dict[str, Decision] = {}  # recent decisions, for a double press
        #: the updates of decided requests' messages still under way
        self._updates: set[asyncio.Task[None]] = set()

    def new_request(self, key: str, origin: str, tool: str, tool_input: dict[str, Any],
                    summary: str, rule: Rule | None) -> ApprovalRequest:
        return ApprovalRequest(secrets.token_hex(6), key, origin, tool, dict(tool_input),
                               summary, rule, self.timeout)

    async def ask(self, request: ApprovalRequest, approver: Approver) -> Decision:
        """Present ``request`` and wait for the first decision (or the timeout)."""
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = _Pending(request, future)
        try:
            try:
                await approver.present(request)
            except Exception as exc:
                log.warning("approval request %s of %s could not be shown: %s", request.id,
                            request.key, exc)
                self._resolve(request.id, Decision(
                    Verdict.DENY, Cause.UNATTENDED,
                    reason="The approval request could not be shown to anyone, so it was"
                    " denied."))
            try:
                decision = await asyncio.wait_for(asyncio.shield(future), request.timeout)
            except TimeoutError:
                minutes = request.timeout / 60
                span = f"{minutes:g} minute(s)" if minutes >= 1 else f"{request.timeout:g} s"
                self._resolve(request.id, Decision(
                    Verdict.DENY, Cause.TIMEOUT,
                    reason=f"Nobody answered the approval request within {span}, so it was"
                    " denied."))
                decision = future.result()
        except asyncio.CancelledError:
            self._resolve(request.id, Decision(Verdict.DENY, Cause.STOPPED,
                                               reason="The turn was stopped."))
            raise
        finally:
            self._pending.pop(request.id, None)
            if future.done() and not future.cancelled():
                # in a task of its own: a /stop ends the turn and with it this request's
                # task, which must not cut the message's update off half-way (seen in CI:
                # the edit's call to Telegram was dropped and "⏹ Not run" never shown)
                update = asyncio.ensure_future(approver.settled(request, future.result()))
                self._updates.add(update)
                update.add_done_callback(self._updates.discard)
                with contextlib.suppress(Exception):
                    await asyncio.shield(update)
        log.info("approval %s of %s (%s): %s by %s", request.id, request.key, request.tool,
                 decision.verdict, decision.cause)
        return decision

    def decide(self, request_id: str, decision: Decision) -> Settled:
        """A person's answer; the first one counts."""
        if request_id in self._done:
            return Settled.ALREADY
        if request_id not in self._pending:
            return Settled.UNKNOWN
        self._resolve(request_id, decision)
        return Settled.ACCEPTED

    def cancel(self, key: str, reason: str = "The turn was stopped.") -> int:
        """Deny every request waiting in ``key``; how many there were."""
        ids = [i for i, p in self._pending.items() if p.request.key == key]
        for request_id in ids:
            self._resolve(request_id, Decision(Verdict.DENY, Cause.STOPPED, reason=reason))
        return len(ids)

    def pending(self, key: str | None = None) -> list[ApprovalRequest]:
        return [p.request for p in self._pending.values()
                if key is None or p.request.key == key]

    def get(self, request_id: str) -> ApprovalRequest | None:
        pending = self._pending.get(request_id)
        return pending.request if pending else None

    def _resolve(self, request_id: str, decision: Decision) -> None:
        pending = self._pending.get(request_id)
        if pending is None or pending.future.done():
            return
        pending.future.set_result(decision)
        self._done[request_id] = decision
        while len(self._done) > 1000:
            self._done.pop(next(iter(self._done)))


class ActivityClock:
    """The activity timeout of one turn: pushed back by every CLI event, held while a
    person decides (nothing comes from the CLI then)."""

    def __init__(self, timeout: float, deadline: asyncio.Timeout,
                 now: Callable[[], float] | None = None) -> None:
        self.timeout = timeout
        self._deadline = deadline
        self._now = now or asyncio.get_running_loop().time
        self._holds = 0

    def touch(self) -> None:
        if not self._holds:
            self._deadline.reschedule(self._now() + self.timeout)

    def pause(self) -> None:
        """Off until :meth:`resume` (the turn waits for a client's tool results)."""
        self._deadline.reschedule(None)

    def resume(self) -> None:
        self.touch()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self._holds += 1
        self._deadline.reschedule(None)
        try:
            yield
        finally:
            self._holds -= 1
            self.touch()
