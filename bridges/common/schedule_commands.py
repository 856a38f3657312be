"""Scheduled prompts in a chat: ``/schedule`` and the delivery of scheduled answers.

:func:`setup_schedules` connects one :class:`~bridges.common.bridge.ChatBridge` to the
:class:`~gateway.scheduler.Scheduler`: the scheduler may then deliver to this platform's
chats (split and formatted like any answer), and the bridge understands::

    /schedule [list]                       the jobs this person may see, with next/last runs
    /schedule add "<cron>" [name=…] [to=…] [tz=…] [session=continue] <prompt>
    /schedule show|remove|pause|resume|run <id or name>

The bridge has already admitted the person (allow-list) before a command runs. A job made
here delivers to this chat unless ``to=`` names another chat the person may use: the
person's own private chat, a chat on the platform's ``allowed_chats`` list, or ``log``.
Jobs from the configuration are shown read-only.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

from bridges.common.bridge import ChatBridge
from bridges.common.commands import Command, CommandContext
from bridges.common.platform import Chat, User
from bridges.common.text import ago, error_text
from gateway.errors import ErrorKind, GatewayError
from gateway.scheduler import (
    TARGET_HELP,
    Delivery,
    JobError,
    JobSpec,
    JobView,
    Scheduler,
    SessionMode,
    target_platform,
)
from gateway.store import ScheduleRunRow

USAGE = (
    'Usage:\n/schedule list\n/schedule add "<cron>" [name=…] [to=…] [tz=…] [session=continue]'
    " <prompt>\n/schedule show|remove|pause|resume|run <id>\n\n"
    'Example: /schedule add "0 8 * * 1-5" Summarize my unread mail.\n'
    "Cron fields: minute hour day-of-month month day-of-week (0 or 7 = Sunday)."
)
_QUOTES = {'"': '"', "“": "”", "„": "“", "'": "'", "‘": "’", "«": "»"}
_OPTION = re.compile(r"^(name|to|tz|session)=(\S+)$")
_NOBODY = User(0, "")
_STATUS_ICONS = {
    "ok": "✅", "error": "❌", "undelivered": "📭", "skipped": "⏭", "missed": "💤",
    "interrupted": "⏹", "running": "⏳",
}


def setup_schedules(bridge: ChatBridge, scheduler: Scheduler) -> None:
    """Let ``scheduler`` deliver to ``bridge``'s chats and add ``/schedule`` to it."""
    scheduler.register_target(bridge.platform.name, ScheduleDelivery(bridge).deliver)
    commands = ScheduleCommands(bridge, scheduler)
    bridge.commands.add(Command(
        "schedule", "Scheduled prompts: list, add, remove, pause, resume, run",
        commands.handle, '[list | add "<cron>" <prompt> | remove|pause|resume|run <id>]',
    ))


class ScheduleDelivery:
    """The scheduler's :data:`~gateway.scheduler.Deliverer` for one chat platform."""

    def __init__(self, bridge: ChatBridge) -> None:
        self.bridge = bridge

    async def deliver(self, delivery: Delivery) -> None:
        chat = self.bridge.platform.chat_for_key(delivery.target)
        if chat is None:
            raise GatewayError(
                ErrorKind.INVALID_REQUEST,
                f"{delivery.target} is not a {self.bridge.title} chat",
            )
        if delivery.error is not None:
            await self.bridge.say(
                chat,
                f"⏰ Scheduled prompt “{delivery.job}” failed:\n{error_text(delivery.error)}",
                markdown=False,
            )
            return
        title = _escape(delivery.job)
        await self.bridge.say(chat, f"⏰ **{title}**\n\n{delivery.text or '(empty answer)'}")


class ScheduleCommands:
    def __init__(self, bridge: ChatBridge, scheduler: Scheduler) -> None:
        self.bridge = bridge
        self.scheduler = scheduler

    async def handle(self, ctx: CommandContext) -> None:
        sub, _, rest = ctx.args.strip().partition(" ")
        sub = sub.lower()
        try:
            if sub in ("", "list", "ls"):
                await self._list(ctx)
            elif sub in ("add", "new"):
                await self._add(ctx, rest.strip())
            elif sub in ("show", "history", "remove", "rm", "delete", "pause", "resume", "run"):
                await self._one(ctx, sub, rest.strip())
            elif sub in ("help", "?"):
                await ctx.reply(USAGE, markdown=False)
            else:
                await ctx.reply(f"Unknown /schedule command {sub!r}.\n\n{USAGE}", markdown=False)
        except JobError as exc:
            await ctx.reply(f"⚠️ {exc}", markdown=False)

    # ------------------------------------------------------------------ who may use what

    def may_use(self, user: User, chat: Chat, target: str) -> bool:
        """True if ``user``, writing in ``chat``, may have answers delivered to ``target``."""
        if target == chat.key or target == "log":
            return True
        if target_platform(target) != self.bridge.platform.name:
            return False
        other = self.bridge.platform.chat_for_key(target)
        if other is None:
            return False
        # the person's own private chat, or a chat open to everyone in it (allowed_chats;
        # on Discord also a thread of an allowed channel or server), asked as a nobody
        return other.id == user.id or self.bridge.is_allowed(_NOBODY, other)

    def _visible(self, ctx: CommandContext) -> list[JobView]:
        return [v for v in self.scheduler.jobs() if self._may_see(ctx, v.spec)]

    def _may_see(self, ctx: CommandContext, spec: JobSpec) -> bool:
        return spec.created_by == self._who(ctx.user) or self.may_use(
            ctx.user, ctx.chat, spec.target
        )

    def _who(self, user: User) -> str:
        return f"{self.bridge.platform.name}:{user.id}"

    # ------------------------------------------------------------------ subcommands

    async def _list(self, ctx: CommandContext) -> None:
        views = self._visible(ctx)
        if not views:
            await ctx.reply(
                "No scheduled prompts here yet.\n\n" + USAGE, markdown=False
            )
            return
        lines = ["⏰ Scheduled prompts:"]
        for view in views:
            lines.append("")
            lines.extend(self._describe(ctx, view))
        lines += ["", "/schedule show <id> for the run history."]
        await ctx.reply("\n".join(lines), markdown=False)

    async def _add(self, ctx: CommandContext, text: str) -> None:
        cron, rest = _take_cron(text)
        options: dict[str, str] = {}
        words = rest.split()
        while words and _OPTION.match(words[0]):
            match = _OPTION.match(words.pop(0))
            assert match is not None
            options[match.group(1)] = match.group(2)
            rest = rest.split(None, 1)[1] if len(rest.split(None, 1)) > 1 else ""
        name = options.get("name")
        label = name or "new job"
        if not cron:
            raise JobError(label, "cron", 'missing; put it in quotes first, e.g. /schedule add'
                           ' "0 9 * * 1-5" Summarize the news')
        target = options.get("to", ctx.chat.key)
        if target == "here":
            target = ctx.chat.key
        session = options.get("session", "fresh")
        if session not in ("fresh", "continue"):
            raise JobError(label, "session", f'expected "fresh" or "continue", got {session!r}')
        if target_platform(target) not in ("telegram", "discord", "log"):
            raise JobError(label, "target", f"unknown target {target!r}; use {TARGET_HELP}")
        if not self.may_use(ctx.user, ctx.chat, target):
            raise JobError(
                label, "target",
                f"you may not deliver to {target}: use this chat, your private chat with me,"
                f" a chat on {self.bridge.platform.name}.allowed_chats, or log",
            )
        spec = await self.scheduler.add(
            name=name, cron=cron, prompt=rest, target=target, timezone=options.get("tz", ""),
            session=SessionMode(session), created_by=self._who(ctx.user),
            created_in=ctx.chat.key,
        )
        view = next((v for v in self.scheduler.jobs() if v.spec.name == spec.name), None)
        where = "this chat" if spec.target == ctx.chat.key else spec.target
        lines = [f"✅ Scheduled #{spec.id} “{spec.name}”: {spec.cron} → {where}."]
        if view is not None:
            lines.extend(self._describe(ctx, view)[1:-1])
        lines.append(f"Pause, run or remove it with /schedule pause|run|remove {spec.id}.")
        await ctx.reply("\n".join(lines), markdown=False)

    async def _one(self, ctx: CommandContext, sub: str, ref: str) -> None:
        if not ref:
            raise JobError("?", "id", f"missing: /schedule {sub} <id>; /schedule list shows"
                           " the ids")
        spec = self.scheduler.get(ref.split()[0])
        if spec is None or not self._may_see(ctx, spec):
            raise JobError(ref, "id", "no such job here; /schedule list shows the ids")
        if sub in ("show", "history"):
            await self._show(ctx, spec)
            return
        if sub == "run":
            if not self.may_use(ctx.user, ctx.chat, spec.target):
                raise JobError(spec.name, "target", f"you may not deliver to {spec.target}")
            started = self.scheduler.run_now(spec)
            where = "here" if spec.target == ctx.chat.key else f"to {spec.target}"
            await ctx.reply(
                f"▶️ Running “{spec.name}” now; the answer comes {where}." if started
                else f"“{spec.name}” is running already.",
                markdown=False,
            )
            return
        if spec.read_only:
            raise JobError(spec.name, "source", "comes from the gateway's config file and is"
                           " read-only here; change it in config.toml")
        if sub in ("remove", "rm", "delete"):
            await self.scheduler.remove(spec)
            await ctx.reply(f"🗑 Removed “{spec.name}”.", markdown=False)
        elif sub == "pause":
            await self.scheduler.pause(spec)
            await ctx.reply(f"⏸ Paused “{spec.name}”; /schedule resume {spec.ref} starts it"
                            " again.", markdown=False)
        else:
            await self.scheduler.resume(spec)
            view = next((v for v in self.scheduler.jobs() if v.spec.name == spec.name), None)
            when = f" Next run: {_when(view.next_run)}." if view and view.next_run else ""
            await ctx.reply(f"▶️ Resumed “{spec.name}”.{when}", markdown=False)

    async def _show(self, ctx: CommandContext, spec: JobSpec) -> None:
        view = next(v for v in self.scheduler.jobs() if v.spec.name == spec.name)
        lines = self._describe(ctx, view)
        lines += ["", f"Prompt: {spec.prompt}", "", "Recent runs:"]
        runs = await self.scheduler.history(spec.name, limit=8)
        lines += [f"  {_run_line(run)}" for run in runs] or ["  none yet"]
        await ctx.reply("\n".join(lines), markdown=False)

    def _describe(self, ctx: CommandContext, view: JobView) -> list[str]:
        spec = view.spec
        ident = f"#{spec.id} {spec.name}" if spec.id is not None else f"{spec.name} (config,"\
            " read-only)"
        where = "this chat" if spec.target == ctx.chat.key else spec.target
        zone = f" {spec.timezone}" if spec.timezone else ""
        state = "paused" if not spec.enabled else "running now" if view.running else ""
        if view.problem:
            state = f"held: {view.problem}"
        head = f"{ident}: {spec.cron}{zone} → {where}"
        lines = [head + (f" [{state}]" if state else "")]
        details: list[str] = []
        if view.next_run is not None and spec.enabled:
            details.append(f"next {_when(view.next_run)}")
        if view.last_run is not None:
            details.append(f"last {_run_line(view.last_run)}")
        if details:
            lines.append("   " + " · ".join(details))
        lines.append(f"   “{_one_line(spec.prompt, 80)}”")
        return lines


# --------------------------------------------------------------------------- helpers


def _take_cron(text: str) -> tuple[str, str]:
    """``('0 9 * * *', 'the prompt')`` from ``"0 9 * * *" the prompt`` (any quote style), or
    from five unquoted fields / an ``@daily`` shortcut."""
    text = text.strip()
    if not text:
        return "", ""
    close = _QUOTES.get(text[0])
    if close is not None:
        end = text.find(close, 1)
        if end == -1:
            return text[1:].strip(), ""
        return text[1:end].strip(), text[end + 1 :].strip()
    words = text.split()
    if words[0].startswith("@"):
        return words[0], " ".join(words[1:])
    return " ".join(words[:5]), " ".join(words[5:])


def _run_line(run: ScheduleRunRow) -> str:
    icon = _STATUS_ICONS.get(run.status, "•")
    parts = [f"{icon} {run.status} ({run.trigger}) {ago(run.started_at)}"]
    if run.duration_ms is not None and run.status not in ("skipped", "missed"):
        parts.append(f"{run.duration_ms / 1000:.1f} s")
    if run.cost_usd:
        parts.append(f"${run.cost_usd:.4f}")
    if run.error:
        parts.append(_one_line(run.error, 120))
    return ", ".join(parts)


def _when(moment: datetime) -> str:
    delta = moment.timestamp() - time.time()
    rel = f"in {int(delta // 60)} min" if 60 <= delta < 3600 else (
        f"in {int(delta)} s" if delta < 60 else f"in {delta / 3600:.1f} h")
    return f"{moment.strftime('%a %d %b %H:%M %Z')} ({rel})"


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _escape(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>|~#])", r"\\\1", text)
