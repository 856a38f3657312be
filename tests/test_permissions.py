"""Permission modes and approvals in the engine: unit tests of the pieces, then the real CLI
(against the fake API, scripted to ask for a Bash command) with a scripted approver, through
one engine shared by the module. Deny, always-allow, timeouts, presses, plan mode and /stop
are tested through the real chat bridges (tests/test_telegram_approvals.py, test_discord.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from gateway.engine import (
    ApprovalRequest,
    Cause,
    Decision,
    Engine,
    EngineConfig,
    Notice,
    PermissionMode,
    Prompt,
    Rule,
    Settled,
    TurnOptions,
    TurnResult,
    Verdict,
)
from gateway.engine.approvals import ApprovalBroker
from gateway.engine.permissions import describe_tool, suggest_rule
from gateway.errors import GatewayError
from gateway.store import Store
from tests.fake_anthropic import FakeAnthropic, bundled_cli, cli_env

#: the real-CLI tests share one engine (and its CLI processes)
shared_loop = pytest.mark.asyncio(loop_scope="module")

# --------------------------------------------------------------------------- the pieces


def test_modes_map_to_claude_code_and_order_by_strictness() -> None:
    assert [m.cli for m in PermissionMode] == ["default", "acceptEdits", "plan",
                                                "bypassPermissions"]
    assert PermissionMode.parse("edits") is PermissionMode.EDITS
    assert PermissionMode.parse("acceptEdits") is PermissionMode.EDITS
    assert PermissionMode.from_cli("bypassPermissions") is PermissionMode.AUTO
    assert PermissionMode.AUTO.stricter(PermissionMode.ASK) is PermissionMode.ASK
    assert PermissionMode.PLAN.stricter(PermissionMode.ASK) is PermissionMode.PLAN
    assert PermissionMode.ASK.stricter(None) is PermissionMode.ASK
    with pytest.raises(GatewayError, match="choose one of: ask, edits, plan, auto"):
        PermissionMode.parse("yolo")


def test_one_line_descriptions() -> None:
    assert describe_tool("Bash", {"command": "npm test"}) == "Run: npm test"
    edit = {"file_path": "/w/src/app.py", "old_string": "a\nb\nc", "new_string": "x\n" * 12}
    assert describe_tool("Edit", edit, "/w") == "Edit src/app.py (+12 −3)"
    assert describe_tool("WebFetch", {"url": "https://example.org/x"}) == \
        "Fetch https://example.org/x"
    assert describe_tool("Write", {"file_path": "/w/a.txt", "content": "1\n2\n"}, "/w") == \
        "Write a.txt (2 lines)"
    assert describe_tool("mcp__github__create_issue", {}) == "Use create_issue (github)"
    assert describe_tool("Bash", {"command": "x" * 500}).endswith("…")


def test_rules_allow_a_tool_or_a_plain_command_prefix() -> None:
    rule = suggest_rule("Bash", {"command": "npm test -- --watch"})
    assert rule == Rule("Bash", "npm test")
    assert rule.matches("Bash", {"command": "npm test"})
    assert rule.matches("Bash", {"command": "npm test src/"})
    assert not rule.matches("Bash", {"command": "npm testify"})
    assert not rule.matches("Bash", {"command": "npm test && rm -rf ~"})  # more than one thing
    assert not rule.matches("Bash", {"command": "npm test; curl evil"})
    assert not rule.matches("Bash", {"command": "npm test $(curl evil)"})
    assert not rule.matches("Edit", {"command": "npm test"})
    assert suggest_rule("Bash", {"command": "ls -la"}) == Rule("Bash", "ls")
    assert suggest_rule("Bash", {"command": "make && make install"}) is None
    assert suggest_rule("Edit", {"file_path": "a"}) == Rule("Edit")
    assert Rule("Edit").matches("Edit", {"file_path": "anything"})


async def test_broker_first_decision_wins_and_late_presses_are_told() -> None:
    broker = ApprovalBroker(timeout=5)
    shown: list[ApprovalRequest] = []
    ended: list[Decision] = []

    class Approver:
        async def present(self, request: ApprovalRequest) -> None:
            shown.append(request)

        async def settled(self, request: ApprovalRequest, decision: Decision) -> None:
            ended.append(decision)

    request = broker.new_request("k", "test", "Bash", {"command": "ls"}, "Run: ls", None)
    asking = asyncio.ensure_future(broker.ask(request, Approver()))
    await asyncio.sleep(0)
    assert broker.pending("k") == [request] and shown == [request]
    assert broker.decide(request.id, Decision(Verdict.ALLOW, by="me")) is Settled.ACCEPTED
    assert broker.decide(request.id, Decision(Verdict.DENY)) is Settled.ALREADY
    assert broker.decide("nope", Decision(Verdict.DENY)) is Settled.UNKNOWN
    assert (await asking).verdict is Verdict.ALLOW
    assert ended == [Decision(Verdict.ALLOW, by="me")] and broker.pending() == []


async def test_broker_timeout_and_cancel_deny() -> None:
    broker = ApprovalBroker(timeout=0.2)

    class Silent:
        async def present(self, request: ApprovalRequest) -> None:
            pass

        async def settled(self, request: ApprovalRequest, decision: Decision) -> None:
            pass

    request = broker.new_request("k", "", "Bash", {}, "Run: x", None)
    decision = await broker.ask(request, Silent())
    assert decision.cause is Cause.TIMEOUT and not decision.allowed
    assert "within 0.2 s" in decision.reason
    request = broker.new_request("k", "", "Bash", {}, "Run: x", None)
    asking = asyncio.ensure_future(broker.ask(request, Silent()))
    await asyncio.sleep(0)
    assert broker.cancel("k") == 1
    assert (await asking).cause is Cause.STOPPED


async def test_a_stop_that_ends_the_turn_does_not_cut_the_message_update_off() -> None:
    """/stop denies the waiting request and ends the turn, which cancels the request's own
    task while the approval message is being updated (a slow platform call): the update
    still completes."""
    broker = ApprovalBroker(timeout=5)
    updated: list[Decision] = []
    updating = asyncio.Event()

    class SlowPlatform:
        async def present(self, request: ApprovalRequest) -> None:
            pass

        async def settled(self, request: ApprovalRequest, decision: Decision) -> None:
            updating.set()
            await asyncio.sleep(0.1)  # ~ a Telegram edit's round trip
            updated.append(decision)

    request = broker.new_request("k", "", "Bash", {}, "Run: x", None)
    asking = asyncio.ensure_future(broker.ask(request, SlowPlatform()))
    await asyncio.sleep(0)
    assert broker.cancel("k") == 1
    await updating.wait()
    asking.cancel()  # the turn ends while the message is being updated
    with pytest.raises(asyncio.CancelledError):
        await asking
    await asyncio.sleep(0.2)
    assert [d.cause for d in updated] == [Cause.STOPPED]


# --------------------------------------------------------------------------- the real CLI


class ScriptedApprover:
    """Answers each request with the next planned decision (None: leave it waiting)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.plan: list[Decision | None] = []
        self.delay = 0.0
        self.requests: list[ApprovalRequest] = []
        self.settled_with: list[Decision] = []

    async def present(self, request: ApprovalRequest) -> None:
        self.requests.append(request)
        decision = self.plan.pop(0) if self.plan else None
        if decision is not None:
            asyncio.get_running_loop().call_later(
                self.delay, self.engine.decide_approval, request.id, decision)

    async def settled(self, request: ApprovalRequest, decision: Decision) -> None:
        self.settled_with.append(decision)


@pytest.fixture(scope="module")
def module_api() -> Any:
    with FakeAnthropic() as fake:
        yield fake


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gated(tmp_path_factory: pytest.TempPathFactory, module_api: FakeAnthropic,
                ) -> AsyncIterator[tuple[Engine, ScriptedApprover]]:
    root = tmp_path_factory.mktemp("permissions")
    home = root / "home"
    home.mkdir()
    env = cli_env(module_api.base_url, str(home), inherit=False)
    env.pop("PATH", None)
    config = EngineConfig(workspace=root / "workspace", cli_path=bundled_cli(), env=env,
                          activity_timeout=2.0, bash_max_timeout=2.0, idle_timeout=300.0,
                          approval_timeout=3.5, spare_processes=0)
    engine = Engine(config, Store(root / "gateway.sqlite3"))
    await engine.start()
    approver = ScriptedApprover(engine)
    engine.register_permissions("t:", default=PermissionMode.ASK, approver=approver)
    engine.register_permissions("cron:")  # scheduled: nobody to ask
    yield engine, approver
    await engine.stop()


def _bash(command: str) -> dict[str, Any]:
    return {"tool_use": {"name": "Bash", "input": {"command": command,
                                                   "description": "a command"}}}


async def _turn(engine: Engine, key: str, text: str,
                options: TurnOptions | None = None) -> tuple[list[Any], TurnResult]:
    events = [e async for e in engine.turn(key, Prompt(text=text), options)]
    final = events[-1]
    assert isinstance(final, TurnResult), final
    return events, final


@shared_loop
async def test_allow_once_runs_the_command_and_waits_past_the_activity_timeout(
        gated: tuple[Engine, ScriptedApprover], module_api: FakeAnthropic) -> None:
    engine, approver = gated
    marker = engine.workspace / "allowed-once"
    module_api.script(_bash(f"touch {marker} && echo made it"), match="allow once")
    approver.plan = [Decision(Verdict.ALLOW, by="Owner")]
    approver.delay = 2.6  # longer than the 2 s activity timeout: the hold keeps the turn
    events, final = await _turn(engine, "t:1", "allow once please")
    assert marker.exists()
    assert "made it" in final.text  # the fake answers with the tool's output
    request = approver.requests[-1]
    assert request.summary == f"Run: touch {marker} && echo made it" and request.rule is None
    kinds = [e.kind for e in events if isinstance(e, Notice)]
    assert kinds.count("approval") == 1 and kinds.count("approval_settled") == 1


@shared_loop
async def test_stricter_mode_per_turn_and_unattended_conversations(
        gated: tuple[Engine, ScriptedApprover], module_api: FakeAnthropic) -> None:
    engine, approver = gated
    marker = engine.workspace / "unattended"
    module_api.script(_bash(f"touch {marker}"), match="scheduled job")
    events, final = await _turn(engine, "cron:nightly", "scheduled job",
                                TurnOptions(permission_mode=PermissionMode.ASK))
    assert not marker.exists()
    assert "nobody can be asked for this conversation" in final.text
    assert any(isinstance(e, Notice) and e.kind == "approval_denied" for e in events)
    # a laxer mode than the conversation's is ignored: t:5 asks, "auto" does not win
    approver.plan = [Decision(Verdict.DENY, by="Owner")]
    approver.delay = 0.05
    module_api.script(_bash(f"touch {marker}"), match="laxer")
    await _turn(engine, "t:5", "laxer", TurnOptions(permission_mode=PermissionMode.AUTO))
    assert not marker.exists() and approver.requests[-1].key == "t:5"
