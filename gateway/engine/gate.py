"""The engine's permission gate: which mode a turn runs in, and the answer to each of the
CLI's permission requests (the SDK's ``can_use_tool`` callback of every process).

A request of a turn in ``plan`` mode is denied; one an "always allow" rule of the
conversation covers goes ahead; any other goes to the :class:`Approver` of the frontend
that owns the conversation's key prefix (``register``), through the
:class:`~gateway.engine.approvals.ApprovalBroker`. A prefix registered without an approver
(scheduled jobs) or none registered at all: nobody can be asked, so the request is denied at
once and Claude is told why (its answer then says so). While a person decides, the turn's
activity timeout is held and the turn's listeners get ``Notice("approval")`` (the status
line says "waiting for your approval"), then ``Notice("approval_settled")``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_agent_sdk import (
    PermissionResult,
    PermissionResultAllow,
    PermissionResultDeny,
    ToolPermissionContext,
)
from claude_agent_sdk.types import CanUseToolShadowedWarning

from gateway.engine.approvals import (
    ActivityClock,
    ApprovalBroker,
    ApprovalRequest,
    Approver,
    Cause,
    Decision,
    Settled,
    Verdict,
)
from gateway.engine.events import Notice, TurnOptions
from gateway.engine.permissions import (
    PermissionMode,
    PermissionStore,
    describe_tool,
    suggest_rule,
)
from gateway.store import Store

log = logging.getLogger(__name__)

# Every process gets the callback; in bypassPermissions it is simply never called.
warnings.filterwarnings("ignore", category=CanUseToolShadowedWarning)

PLAN_DENIAL = (
    "This conversation is in plan mode: nothing may be run or changed. Describe what you"
    " would do instead; the person can switch the mode (/mode) to let you act."
)


@dataclass(frozen=True)
class Frontend:
    """What a frontend registered for its key prefix."""

    default: PermissionMode | None
    approver: Approver | None


class TurnGate:
    """One turn's view of the gate: its mode, where its notices go, its activity clock."""

    def __init__(self, mode: PermissionMode, emit: Callable[[Notice], None]) -> None:
        self.mode = mode
        self.emit = emit
        self.clock: ActivityClock | None = None


class PermissionGate:
    def __init__(self, store: Store, *, default: PermissionMode, timeout: float,
                 workspace: Path) -> None:
        self.store = PermissionStore(store)
        self.default = default
        self.broker = ApprovalBroker(timeout)
        self.workspace = workspace
        self._frontends: dict[str, Frontend] = {}
        #: the default mode of the conversation's project, if its project sets one
        self.project_default: Callable[[str], PermissionMode | None] = lambda key: None

    # ------------------------------------------------------------------ configuration

    def register(self, prefix: str, *, default: PermissionMode | None = None,
                 approver: Approver | None = None) -> None:
        """Conversations whose key starts with ``prefix`` run in ``default`` mode unless they
        chose one, and their approval requests go to ``approver`` (None: denied at once)."""
        self._frontends[prefix] = Frontend(default, approver)

    def frontend(self, key: str) -> Frontend | None:
        matches = [p for p in self._frontends if key.startswith(p)]
        return self._frontends[max(matches, key=len)] if matches else None

    # ------------------------------------------------------------------ modes

    async def mode(self, key: str) -> PermissionMode:
        """The conversation's mode: its own choice, else its project's default, else its
        frontend's default, else ``claude.permission_mode``."""
        chosen = await self.store.mode(key) or self.project_default(key)
        if chosen is not None:
            return chosen
        frontend = self.frontend(key)
        return frontend.default if frontend and frontend.default else self.default

    async def set_mode(self, key: str, mode: PermissionMode | None) -> PermissionMode:
        await self.store.set_mode(key, mode)
        return await self.mode(key)

    async def turn_mode(self, key: str, options: TurnOptions) -> PermissionMode:
        """A turn's mode: the conversation's, or the stricter one the turn asked for."""
        return (await self.mode(key)).stricter(options.permission_mode)

    # ------------------------------------------------------------------ decisions

    def decide(self, request_id: str, decision: Decision) -> Settled:
        return self.broker.decide(request_id, decision)

    def cancel(self, key: str, reason: str = "The turn was stopped.") -> int:
        return self.broker.cancel(key, reason)

    async def check(self, key: str, origin: str, turn: TurnGate | None, tool: str,
                    tool_input: dict[str, Any], context: ToolPermissionContext | None = None,
                    ) -> PermissionResult:
        """The answer to one permission request of the CLI."""
        summary = describe_tool(tool, tool_input, self.workspace)
        if turn is None:
            return PermissionResultDeny(message="No turn is running in this conversation.")
        if turn.mode is PermissionMode.PLAN:
            return PermissionResultDeny(message=PLAN_DENIAL)
        if turn.mode is PermissionMode.AUTO:
            return PermissionResultAllow()
        for row in await self.store.rules(key):
            if row.rule.matches(tool, tool_input):
                log.info("%s: %s allowed by the rule %s", key, tool, row.rule)
                return PermissionResultAllow()
        frontend = self.frontend(key)
        if frontend is None or frontend.approver is None:
            reason = (f"“{summary}” needs a person's approval, and nobody can be asked for"
                      f" this conversation ({origin or key}), so it was denied.")
            turn.emit(Notice("approval_denied", reason, {"summary": summary,
                                                         "cause": Cause.UNATTENDED.value}))
            return PermissionResultDeny(message=reason)
        request = self.broker.new_request(key, origin, tool, tool_input, summary,
                                          suggest_rule(tool, tool_input))
        turn.emit(Notice("approval", f"waiting for your approval: {summary}",
                         {"id": request.id, "summary": summary, "tool": tool}))
        hold = turn.clock.hold() if turn.clock is not None else contextlib.nullcontext()
        with hold:
            decision = await self.broker.ask(request, frontend.approver)
        turn.emit(Notice("approval_settled", _settled_line(request, decision),
                         {"id": request.id, "summary": summary,
                          "verdict": decision.verdict.value, "cause": decision.cause.value}))
        if decision.verdict is Verdict.ALWAYS and request.rule is not None:
            await self.store.add_rule(key, request.rule)
        if decision.allowed:
            return PermissionResultAllow()
        message = decision.reason or "The person denied this."
        if decision.cause is Cause.PERSON and decision.reason:
            message = f"The person denied this: {decision.reason}"
        return PermissionResultDeny(message=message, interrupt=decision.cause is Cause.STOPPED)

    def pending(self, key: str | None = None) -> list[ApprovalRequest]:
        return self.broker.pending(key)


def _settled_line(request: ApprovalRequest, decision: Decision) -> str:
    if decision.allowed:
        return f"allowed: {request.summary}"
    return f"denied: {request.summary}"
