"""Approvals from the phone: ``/mode``, ``/allowed`` and approval requests as buttons.

:func:`setup_approvals` connects one :class:`~bridges.common.bridge.ChatBridge` to the
engine's permission gate: the bridge's conversations get the platform's default mode, and
each request of theirs (and, with ``notify``, of the HTTP API's turns) becomes one message
in the chat saying what Claude wants to do, with the buttons **Allow once**, **Always allow
… here** and **Deny**. A press goes to :meth:`ChatApprovals.press` (the adapter answers it
natively with the text returned: Telegram's ``answerCallbackQuery``, an ephemeral Discord
reply). A text message sent while a request waits in the chat denies it, the text being
the reason Claude is told. The chat understands::

    /mode                      the chat's permission mode and the choices
    /mode ask|edits|plan|auto  choose (the session is kept); /mode default: the platform's
    /allowed                   the chat's "always allow" rules
    /allowed remove <n> | clear
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bridges.common.bridge import ChatBridge
from bridges.common.commands import Command, CommandContext
from bridges.common.inbox import Source
from bridges.common.platform import Chat, MessageId, User
from bridges.common.text import ago, duration
from gateway.engine import (
    ApprovalRequest,
    Cause,
    Decision,
    PermissionMode,
    PermissionStore,
    Prompt,
    Settled,
    Verdict,
    base_key,
)

log = logging.getLogger(__name__)

#: what every approval button's data starts with: ``ap:<request id>:<a|w|d>``
BUTTON_PREFIX = "ap:"
_VERDICTS = {"a": Verdict.ALLOW, "w": Verdict.ALWAYS, "d": Verdict.DENY}
_CODES = {v: k for k, v in _VERDICTS.items()}


@dataclass(frozen=True)
class Button:
    label: str
    data: str  # at most 64 bytes (Telegram's callback_data)


class ButtonPlatform(Protocol):
    """What approvals need of a platform besides :class:`~bridges.common.Platform`."""

    async def send_buttons(self, chat: Chat, text: str, buttons: Sequence[Button]) -> MessageId:
        """Send ``text`` (plain) with one row of buttons; the person is notified."""
        ...

    async def close_buttons(self, chat: Chat, message: MessageId, text: str) -> None:
        """Replace the message's text and take its buttons away."""
        ...


def setup_approvals(bridge: ChatBridge, buttons: ButtonPlatform, *,
                    default: PermissionMode | None = None) -> ChatApprovals:
    """Plug approvals into ``bridge``: its conversations run in ``default`` mode (None:
    ``claude.permission_mode``) until ``/mode`` changes it, and ask through buttons."""
    approvals = ChatApprovals(bridge, buttons, default)
    bridge.engine.register_permissions(bridge.key_prefix, default=default, approver=approvals)
    bridge.commands.add(Command(
        "mode", "Permission mode: ask, edits, plan or auto", approvals.cmd_mode,
        "[ask | edits | plan | auto | default]"))
    bridge.commands.add(Command(
        "allowed", "What this chat always allows; revoke", approvals.cmd_allowed,
        "[remove <number> | clear]"))
    bridge.interceptors.append(approvals.intercept)
    bridge.status_lines.append(approvals.status_line)
    return approvals


@dataclass(frozen=True)
class _Shown:
    chat: Chat
    message: MessageId


class ChatApprovals:
    """The :class:`~gateway.engine.Approver` of one chat bridge."""

    def __init__(self, bridge: ChatBridge, buttons: ButtonPlatform,
                 default: PermissionMode | None) -> None:
        self.bridge = bridge
        self.buttons = buttons
        self.default = default
        self.rules = bridge.engine.tables(PermissionStore)
        self._shown: dict[str, _Shown] = {}

    # ------------------------------------------------------------------ the Approver

    def _chat_of(self, request: ApprovalRequest) -> Chat | None:
        chat = self.bridge.platform.chat_for_key(request.key)
        if chat is not None:
            return chat
        notify = self.bridge.settings.notify_key
        return self.bridge.platform.chat_for_key(notify) if notify else None

    async def present(self, request: ApprovalRequest) -> None:
        chat = self._chat_of(request)
        if chat is None:
            raise LookupError(f"no chat of {self.bridge.title} for {request.key}")
        own = chat.key == base_key(request.key)
        who = "Claude" if own else f"A turn of {request.key} ({request.origin or 'api'})"
        text = (f"🔐 {who} wants to:\n{request.summary}\n\nAllow it? (Nobody answering within"
                f" {duration(request.timeout)} denies it. Or type why not: that denies it"
                " and Claude reads your reason.)")
        row = [Button("✅ Allow once", self._data(request, Verdict.ALLOW))]
        if own and request.rule is not None:
            row.append(Button(f"♾ Always allow {request.rule.label} here",
                              self._data(request, Verdict.ALWAYS)))
        row.append(Button("🚫 Deny", self._data(request, Verdict.DENY)))
        message = await self.buttons.send_buttons(chat, text, row)
        self._shown[request.id] = _Shown(chat, message)

    async def settled(self, request: ApprovalRequest, decision: Decision) -> None:
        shown = self._shown.pop(request.id, None)
        if shown is None:
            return
        try:
            await self.buttons.close_buttons(shown.chat, shown.message,
                                             _outcome(request, decision))
        except Exception as exc:  # the decision stands; only its display is missing
            log.warning("%s: approval message of %s could not be updated: %s",
                        self.bridge.title, request.key, exc)

    @staticmethod
    def _data(request: ApprovalRequest, verdict: Verdict) -> str:
        return f"{BUTTON_PREFIX}{request.id}:{_CODES[verdict]}"

    # ------------------------------------------------------------------ presses

    async def press(self, chat: Chat, user: User, data: str) -> str:
        """A button was pressed in ``chat``; the short answer shown to the presser."""
        parts = data.removeprefix(BUTTON_PREFIX).split(":")
        if not data.startswith(BUTTON_PREFIX) or len(parts) != 2 or parts[1] not in _VERDICTS:
            return "This button is not one of mine."
        if not self.bridge.is_allowed(user, chat):
            log.info("%s: user %s pressed an approval button in %s: refused", self.bridge.title,
                     user.id, chat.key)
            return ("Only the people this assistant works for may answer; nothing was"
                    " changed.")
        request_id, verdict = parts[0], _VERDICTS[parts[1]]
        shown = self._shown.get(request_id)
        if shown is not None and shown.chat.key != chat.key:
            return "This request belongs to another chat; nothing was changed."
        settled = self.bridge.engine.decide_approval(
            request_id, Decision(verdict, Cause.PERSON, by=user.name or str(user.id)))
        if settled is Settled.ALREADY:
            return "This request was already answered; nothing was changed."
        if settled is Settled.UNKNOWN:
            return ("This request is no longer waiting (its turn is over, or the gateway was"
                    " restarted); nothing was changed.")
        return {Verdict.ALLOW: "✅ Allowed once.", Verdict.ALWAYS: "♾ Always allowed here.",
                Verdict.DENY: "🚫 Denied."}[verdict]

    async def intercept(self, chat: Chat, prompt: Prompt, source: Source) -> bool:
        """A text sent while a request waits in this chat denies the oldest such request,
        with the text as the reason; True if it did (the text is then no new message)."""
        if not prompt.text.strip() or prompt.images:
            return False
        waiting = [r for r in self.bridge.engine.pending_approvals()
                   if (s := self._shown.get(r.id)) is not None and s.chat.key == chat.key]
        if not waiting:
            return False
        request = min(waiting, key=lambda r: r.created_at)
        settled = self.bridge.engine.decide_approval(request.id, Decision(
            Verdict.DENY, Cause.PERSON, by=str(source.sender_id or ""),
            reason=prompt.text.strip()))
        if settled is not Settled.ACCEPTED:
            return False
        await self.bridge.say(chat, f"🚫 Denied “{request.summary}”; Claude reads your reason.",
                              markdown=False)
        return True

    # ------------------------------------------------------------------ commands

    async def status_line(self, chat: Chat) -> str:
        key = await self.bridge.conversation_key(chat)
        mode = await self.bridge.engine.permission_mode(key)
        rules = len(await self.rules.rules(key))
        extra = f", {rules} always-allow rule(s) (/allowed)" if rules else ""
        return f"**Permissions:** {mode.value} — {mode.description}{extra}"

    async def cmd_mode(self, ctx: CommandContext) -> None:
        engine = self.bridge.engine
        wanted = ctx.args.strip().split()[0] if ctx.args.strip() else ""
        if wanted:
            mode = None if wanted.lower() in ("default", "reset") else PermissionMode.parse(wanted)
            now = await engine.set_permission_mode(await self.bridge.conversation_key(ctx.chat),
                                                   mode)
            note = " (this chat's default)" if mode is None else ""
            running = " It applies from the next message." if self.bridge.busy(ctx.chat) \
                else ""
            await ctx.reply(f"Permission mode: {now.value}{note}: {now.description}. The"
                            f" conversation keeps its session.{running}", markdown=False)
            return
        now = await engine.permission_mode(await self.bridge.conversation_key(ctx.chat))
        lines = [f"Permission mode: {now.value}: {now.description}.", "", "Choose with:"]
        lines += [f"/mode {m.value} — {m.description}" for m in PermissionMode]
        lines.append("/mode default — back to this chat's default")
        rules = await self.rules.rules(await self.bridge.conversation_key(ctx.chat))
        if rules:
            lines += ["", f"Always allowed here: {', '.join(r.rule.label for r in rules)}"
                      " (/allowed to revoke)."]
        await ctx.reply("\n".join(lines), markdown=False)

    async def cmd_allowed(self, ctx: CommandContext) -> None:
        key = await self.bridge.conversation_key(ctx.chat)
        sub, _, rest = ctx.args.strip().partition(" ")
        rules = await self.rules.rules(key)
        if sub.lower() == "clear":
            gone = await self.rules.remove_rules(key)
            await ctx.reply(f"Revoked {gone} rule(s): everything asks again.", markdown=False)
            return
        if sub.lower() in ("remove", "revoke", "rm"):
            numbers = [int(n) for n in rest.replace(",", " ").split() if n.isdigit()]
            chosen = [rules[n - 1] for n in numbers if 1 <= n <= len(rules)]
            if not chosen:
                await ctx.reply(f"Usage: /allowed remove <number> (1 to {len(rules)}); /allowed"
                                " lists them.", markdown=False)
                return
            await self.rules.remove_rules(key, [r.id for r in chosen])
            await ctx.reply("Revoked: " + ", ".join(r.rule.label for r in chosen) + ".",
                            markdown=False)
            return
        if sub:
            await ctx.reply("Usage: /allowed, /allowed remove <number>, /allowed clear.",
                            markdown=False)
            return
        if not rules:
            await ctx.reply("Nothing is always allowed here: every request asks (in ask and"
                            " edits mode).", markdown=False)
            return
        lines = ["Always allowed in this chat:"]
        lines += [f"{n}. {r.rule.label} (since {ago(r.created_at)})"
                  for n, r in enumerate(rules, 1)]
        lines += ["", "Revoke with /allowed remove <number>, or /allowed clear."]
        await ctx.reply("\n".join(lines), markdown=False)


def _outcome(request: ApprovalRequest, decision: Decision) -> str:
    """The text an approval message ends with."""
    by = f" by {decision.by}" if decision.by else ""
    if decision.verdict is Verdict.ALLOW:
        return f"✅ Allowed once{by}: {request.summary}"
    if decision.verdict is Verdict.ALWAYS:
        label = request.rule.label if request.rule else request.tool
        return f"♾ Always allowed here ({label}){by}: {request.summary}"
    if decision.cause is Cause.TIMEOUT:
        return f"⏱ Nobody answered in {duration(request.timeout)}, so it was denied:" \
               f" {request.summary}"
    if decision.cause is Cause.STOPPED:
        return f"⏹ Not run ({decision.reason.rstrip('.').lower()}): {request.summary}"
    reason = f" — “{decision.reason}”" if decision.reason else ""
    return f"🚫 Denied{by}: {request.summary}{reason}"
