"""The chat logic every platform shares, written once: :class:`ChatBridge`.

An adapter (``bridges.telegram``, later ``bridges.discord``) turns platform updates into
calls on the bridge and implements :class:`~bridges.common.platform.Platform` for the way
back. The bridge decides everything else:

* who may talk to it (deny-by-default allow-list; one refusal per stranger, with their id);
* commands (:mod:`bridges.common.commands`): /new /stop /model /status /help /sessions
  /resume built in, more added by other features through :attr:`ChatBridge.commands`;
* one conversation per chat (or topic); messages sent during a turn wait in the engine's
  queue and go in together as the next turn (``TurnOptions(coalesce=True)``: the engine's
  ``queued`` notice and ``claude.max_queued_per_conversation`` apply), each turn rendered by
  a :class:`~bridges.common.view.TurnView`;
* durability: every accepted message is written to the inbox (:mod:`bridges.common.inbox`)
  before its turn starts; at start-up :meth:`ChatBridge.recover` runs again what never
  reached Claude and tells the chat about what did; what could not be delivered waits in
  the outbox (:mod:`bridges.common.outbox`) until the platform is back; /retry;
* files: the inbox for what the person sends, the ``send_file`` sink for what Claude sends;
* alerts: a turn that timed out or crashed is reported to the chat it came from, and turns of
  other frontends (the HTTP API) to the notification chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from bridges.common.commands import Command, CommandContext, CommandRegistry
from bridges.common.inbox import (
    CURRENT_SOURCE,
    Source,
    first_line,
    images_of,
    prompt_of,
    restart_notice,
)
from bridges.common.outbox import Outbox
from bridges.common.platform import Chat, Platform, User
from bridges.common.projects import ChatProjects
from bridges.common.text import ago, error_text, rate_limit_text, size
from bridges.common.usage import usage_line, usage_text, warning_text
from bridges.common.view import TurnView, ViewSettings
from gateway.engine import (
    FINAL_EVENTS,
    Alert,
    EngineAPI,
    Event,
    Notice,
    OutgoingFile,
    Pref,
    Prompt,
    RateLimitStatus,
    SessionInfo,
    StreamMode,
    ToolCallsRequested,
    TurnError,
    TurnOptions,
    TurnResult,
    TurnStarted,
    UsageWarning,
)
from gateway.errors import ErrorKind, GatewayError
from gateway.store import ChatStore, InboxRow

log = logging.getLogger(__name__)

#: Key prefixes of the chat bridges. Alerts of these keys belong to their own bridge; alerts
#: of any other key (``openai:``, ``cron:``) go to the notification chat.
CHAT_PREFIXES = ("telegram:", "discord:")

#: Called after each turn of a chat that ended with a result (spoken replies use it).
AfterTurn = Callable[[Chat, TurnResult], Awaitable[None]]
#: Sees each message before it becomes a prompt; True if it took the message (a typed
#: reason that denies a waiting approval request).
Interceptor = Callable[[Chat, Prompt, Source], Awaitable[bool]]
#: A line for /status (the chat's permission mode).
StatusLine = Callable[[Chat], Awaitable[str | None]]


class VoiceInput(Protocol):
    """A voice feature, plugged in from outside (``bridges.common.voice.setup_voice``)."""

    async def handle(
        self, chat: Chat, fetch: Callable[[], Awaitable[bytes]], mime_type: str,
        caption: str = "", *, fallback: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class BridgeSettings:
    #: user ids that may talk to the bot; empty = nobody
    allowed_users: frozenset[int] = frozenset()
    #: chats (groups) in which every member may talk to the bot
    allowed_chats: frozenset[int] = frozenset()
    #: model of new conversations of this platform (None = the gateway's default)
    model: str | None = None
    #: incoming files larger than this are refused
    max_upload_bytes: int = 20 * 1024 * 1024
    #: conversation key that alerts of other frontends go to ("telegram:<id>"), if any
    notify_key: str | None = None
    #: the setting that holds the upload limit, named in the refusal ("telegram.max_upload_mb")
    upload_setting: str = "max_upload_mb"
    view: ViewSettings = field(default_factory=ViewSettings)


@dataclass(eq=False)
class _Turn:
    """One turn of a chat in the engine: the messages that went in together (the engine
    coalesces the messages sent while Claude works into the next turn)."""

    #: inbox entries of its messages (0s, messages the store could not record, left out)
    entries: list[int]
    #: how many messages it carries
    prompts: int = 1
    #: the tasks reading it from the engine (one per message; the first renders it)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    #: it left the engine's queue: Claude works on it (or it ended without starting)
    begun: bool = False
    #: the engine's conversation it goes to (the chat in its current project)
    key: str = ""


@dataclass(eq=False)
class _ChatState:
    chat: Chat
    #: this chat's turns in the engine, oldest first: the running one, then the waiting ones
    turns: list[_Turn] = field(default_factory=list)
    #: the newest turn queued as a new one: a message the engine coalesces joins it
    forming: _Turn | None = None
    #: turns are displayed one at a time, in order (the next waits for the last's end)
    display: asyncio.Lock = field(default_factory=asyncio.Lock)
    view: TurnView | None = None
    #: the last of the messages still being prepared (a voice note being transcribed);
    #: what arrives after it waits for it, so messages go in in the order they were sent
    intake: asyncio.Task[None] | None = None
    #: inbox entries of voice notes being prepared (``transcribing``)
    held: set[int] = field(default_factory=set)
    #: session ids of the last /sessions listing, so /resume 2 works
    sessions: list[str] = field(default_factory=list)

    def waiting(self) -> int:
        """Messages that wait in the engine's queue for their turn."""
        return sum(t.prompts for t in self.turns if not t.begun)

    def tasks(self) -> list[asyncio.Task[None]]:
        return [task for t in self.turns for task in t.tasks if not task.done()]


class ChatBridge:
    def __init__(
        self, engine: EngineAPI, platform: Platform, settings: BridgeSettings
    ) -> None:
        self.engine = engine
        self.platform = platform
        self.settings = settings
        self.commands = CommandRegistry()
        #: hooks run after every turn that ended with a result, in order
        self.after_turn: list[AfterTurn] = []
        #: features that may take a message before it is sent to Claude, in order
        self.interceptors: list[Interceptor] = []
        #: features' lines in /status
        self.status_lines: list[StatusLine] = []
        self._chats: dict[str, _ChatState] = {}
        self._refused: set[int] = set()
        self._stopping = False
        #: the durable inbox and outbox (tables of the engine's database)
        self.ledger = engine.tables(ChatStore)
        self.outbox = Outbox(platform, self.ledger)
        #: longest wait for a turn's display to finish before its answer goes to the outbox
        self.finish_timeout = 30.0
        self._add_builtin_commands()
        #: which project each chat works in (/project, /worktrees)
        self.projects = ChatProjects(self)
        self.projects.add_commands()
        self.status_lines.append(self.projects.status_line)
        #: voice notes in (set by ``bridges.common.voice.setup_voice``, which also adds
        #: /voice and spoken replies); without it voice notes get a polite explanation
        self.voice: VoiceInput | None = None

    async def conversation_key(self, chat: Chat) -> str:
        """The engine's conversation of ``chat``: its key in the chat's current project."""
        return await self.projects.key(chat)

    @property
    def key_prefix(self) -> str:
        return f"{self.platform.name}:"

    @property
    def title(self) -> str:
        return self.platform.name.capitalize()

    # ================================================================== lifecycle

    def check(self) -> None:
        """Log what a person should know about the configuration at start-up."""
        if not self.settings.allowed_users and not self.settings.allowed_chats:
            log.warning(
                "%s bridge: the allow-list is empty, so nobody may use the bot and everyone"
                " gets a refusal with their user id. Add ids to %s.allowed_users.",
                self.title, self.platform.name,
            )

    async def start(self) -> None:
        """After the platform is connected, before new messages are taken: recover what the
        last run left unfinished and start delivering the outbox."""
        try:
            await self.recover()
        except Exception:
            log.exception("%s: recovering unfinished messages failed", self.title)
        self.outbox.start()

    async def recover(self) -> None:
        """Messages whose turn never finished in the last run: those that never reached
        Claude go in again; for those that did the chat gets the answer if it was ready,
        else a notice ("I was restarted while working on: …"). Never silently dropped."""
        rows = await self.ledger.unfinished(self.platform.name)
        rerun: dict[str, tuple[Chat, list[InboxRow]]] = {}
        for row in rows:
            chat = self.platform.chat_for_key(row.chat_key)
            what = f"message {row.message_id} of {row.chat_key} (inbox entry {row.id})"
            if chat is None:
                log.warning("%s: %s belongs to no chat of this bridge; left as it is",
                            self.title, what)
                continue
            if row.state == "transcribing":
                log.warning("%s: the gateway stopped while %s (a voice note) was being"
                            " prepared; telling the chat", self.title, what)
                await self.outbox.put(
                    chat.key, "⚠️ I was restarted while listening to your voice message."
                    " Please send it again.", markdown=False, inbox_id=row.id,
                    inbox_state="unheard")
            elif row.state == "received":
                log.info("%s: %s never reached Claude before the restart; running it again",
                         self.title, what)
                rerun.setdefault(chat.key, (chat, []))[1].append(row)
            elif row.state == "answered" and row.outcome == "answer" and row.answer:
                log.info("%s: the answer to %s was not delivered before the restart;"
                         " sending it now", self.title, what)
                await self.outbox.put(chat.key, row.answer, inbox_id=row.id,
                                      inbox_state="outboxed")
            else:
                log.warning("%s: the gateway stopped while Claude worked on %s; telling"
                            " the chat", self.title, what)
                await self.outbox.put(chat.key, restart_notice(row), markdown=False,
                                      inbox_id=row.id, inbox_state="notified")
        # a chat's messages that never reached Claude go in again together, as one turn
        # (as they would have gone had the gateway not stopped)
        for chat, waiting in rerun.values():
            await self._enqueue(self._state(chat), Prompt.joined([prompt_of(r) for r in waiting]),
                                [r.id for r in waiting])
        with contextlib.suppress(Exception):
            await self.ledger.prune()

    async def stop(self) -> None:
        """End every turn this bridge runs (their processes stay with the engine)."""
        self._stopping = True
        await self.outbox.stop()
        for state in self._chats.values():
            if state.intake is not None:
                state.intake.cancel()
        # a message still waiting in the engine's queue stays ``received`` in the inbox:
        # the next start runs it
        tasks = [task for state in self._chats.values() for task in state.tasks()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    # ================================================================== who may talk

    def is_allowed(self, user: User, chat: Chat) -> bool:
        return user.id in self.settings.allowed_users or chat.id in self.settings.allowed_chats

    async def admit(self, user: User, chat: Chat) -> bool:
        """True if ``user`` may use the bot here; otherwise refuse them (once) and say why."""
        if self.is_allowed(user, chat):
            return True
        log.info("%s: refused user %s in chat %s", self.title, user.id, chat.id)
        if user.id in self._refused:
            return False
        self._refused.add(user.id)
        meta_key = f"{self.platform.name}-user:{user.id}"
        try:
            if (await self.engine.preferences.get(meta_key)).get(Pref.REFUSED_AT):
                return False
            await self.engine.preferences.set(meta_key, {Pref.REFUSED_AT: str(int(time.time()))})
        except Exception as exc:  # the store is closing: refusing is what matters
            log.debug("refusal memory: %s", exc)
        await self.say(
            chat,
            f"Sorry, this is a private assistant and you are not on its allow-list. Your"
            f" {self.title} user id is {user.id}: if this is your bot, add it to"
            f" {self.platform.name}.allowed_users in the gateway's config.",
            markdown=False,
        )
        return False

    # ================================================================== messages in

    async def run_command(self, chat: Chat, user: User, name: str, args: str) -> None:
        command = self.commands.get(name)
        if command is None:
            await self.say(chat, f"Unknown command /{name}. /help lists what I understand.",
                           markdown=False)
            return
        try:
            await command.handler(CommandContext(self, chat, user, args))
        except GatewayError as exc:
            await self.say(chat, error_text(TurnError.from_exc(exc)), markdown=False)
        except Exception:
            log.exception("command /%s in %s failed", name, chat.key)
            await self.say(chat, f"⚠️ /{name} failed; the gateway's log has the details.",
                           markdown=False)

    async def submit(self, chat: Chat, prompt: Prompt, source: Source | None = None) -> None:
        """Send ``prompt`` to Claude; during a running turn it waits and goes in next.
        ``source``: the platform message it came from, kept in the inbox."""
        if prompt.is_empty():
            return
        for intercept in self.interceptors:
            if await intercept(chat, prompt, source or Source()):
                return
        state = self._state(chat)
        if state.intake is not None and not state.intake.done():
            self._after_intake(state, lambda: self.submit_now(chat, prompt, source))
            return
        await self.submit_now(chat, prompt, source)

    async def submit_now(self, chat: Chat, prompt: Prompt, source: Source | None = None) -> None:
        """:meth:`submit` without waiting for the chat's intake: for the intake's own steps
        (a transcribed voice note goes in before the messages sent after it)."""
        if prompt.is_empty():
            return
        entry = await self._accept(chat, prompt, source or CURRENT_SOURCE.get() or Source())
        if entry is None or self._stopping:  # stopping: the next start runs it
            return
        await self._enqueue(self._state(chat), prompt, [entry] if entry else [])

    async def _accept(self, chat: Chat, prompt: Prompt, source: Source, *,
                      state: str = "received") -> int | None:
        """Write the message to the inbox before its turn: its entry id (0 if the store
        failed: the turn still runs), ``None`` if this platform message is there already."""
        try:
            entry = await self.ledger.accept(
                platform=self.platform.name, chat_key=chat.key, chat_id=chat.id,
                thread_id=chat.thread_id, message_id=source.message_id,
                sender_id=source.sender_id, text=prompt.text, images=images_of(prompt),
                attachments=list(source.attachments),
                transcription=prompt.text if source.voice and state == "received" else None,
                state=state,
            )
        except Exception:
            log.exception("%s: message %s of %s could not be written to the inbox; it runs"
                          " without a restart guarantee", self.title, source.message_id,
                          chat.key)
            return 0
        if entry is None:
            log.info("%s: message %s of %s is in the inbox already (handed out again after"
                     " a restart); not run twice", self.title, source.message_id, chat.key)
            return None
        log.debug("%s: message %s of %s is inbox entry %d", self.title, source.message_id,
                  chat.key, entry)
        return entry

    async def _enqueue(self, state: _ChatState, prompt: Prompt, entries: list[int]) -> None:
        """Hand the message to the engine, in a task of its own that reads its turn. The
        tasks take their places in the engine's queue in the order they are made here."""
        chat = state.chat
        options = TurnOptions(
            model=await self._model_for(chat), mode=StreamMode.SMART,
            origin=self.platform.name, coalesce=True,
        )
        turn = _Turn(list(entries), key=await self.conversation_key(chat))
        task = asyncio.create_task(self._send(state, turn, prompt, options),
                                   name=f"chat {chat.key}")
        turn.tasks.add(task)

    def _after_intake(self, state: _ChatState, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` in the background once the chat's earlier intake is done."""
        previous = state.intake

        async def run() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            try:
                await step()
            except Exception:
                log.exception("a message of %s could not be prepared", state.chat.key)

        state.intake = asyncio.create_task(run(), name=f"intake {state.chat.key}")

    async def handle_voice(
        self, chat: Chat, fetch: Callable[[], Awaitable[bytes]], mime_type: str, caption: str = "",
        *, fallback: Callable[[bytes], Awaitable[None]] | None = None,
        source: Source | None = None,
    ) -> None:
        """A voice note or audio file: transcribed, shown and sent as the prompt (see
        :mod:`bridges.common.voice`). It is prepared in the background, so the platform's
        other updates are not held up; the chat's later messages wait for it. The prompt it
        submits is kept in the inbox as coming from ``source``.

        ``fallback`` (for audio files) gets the bytes instead when voice support is off or
        not installed, to keep the file like any other."""
        if self._stopping:
            return
        held = 0
        if source is not None:
            source = replace(source, voice=self.voice is not None)
            if self.voice is not None or fallback is not None:
                entry = await self._accept(chat, Prompt(text=caption), source,
                                           state="transcribing")
                if entry is None:
                    return
                held = entry
        token = CURRENT_SOURCE.set(source)  # the intake task created below inherits it
        try:
            await self._handle_voice(chat, fetch, mime_type, caption, fallback, held)
        finally:
            CURRENT_SOURCE.reset(token)

    async def _handle_voice(
        self, chat: Chat, fetch: Callable[[], Awaitable[bytes]], mime_type: str, caption: str,
        fallback: Callable[[bytes], Awaitable[None]] | None, held: int,
    ) -> None:
        """``held``: the voice note's ``transcribing`` inbox entry (0: none), closed when
        its preparation gave no prompt."""

        state = self._state(chat)
        if held:
            state.held.add(held)

        def releasing(step: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                try:
                    await step()
                finally:
                    if held and not self._stopping:  # a shutdown leaves it for the next start
                        state.held.discard(held)
                        with contextlib.suppress(Exception):
                            await self.ledger.release(held)

            return run

        if self.voice is None and fallback is not None:
            keep = fallback

            async def download_and_keep() -> None:
                try:
                    data = await fetch()
                except Exception as exc:
                    log.warning("download in %s failed: %s", chat.key, exc)
                    await self.say(chat, f"📎 I could not fetch that file from {self.title}."
                                   " Please send it again.", markdown=False)
                    return
                await keep(data)

            self._after_intake(self._state(chat), releasing(download_and_keep))
            return
        if self.voice is None:
            await self.say(
                chat,
                "🎤 Voice messages need the gateway's voice feature, which is not enabled here."
                " Please type your message instead.",
                markdown=False,
            )
            return
        voice = self.voice
        self._after_intake(
            self._state(chat),
            releasing(lambda: voice.handle(chat, fetch, mime_type, caption, fallback=fallback)),
        )

    def upload_refusal(self, name: str, nbytes: int | None) -> str | None:
        """The reply for a file that is too large to accept, or ``None`` if it is fine."""
        limit = self.settings.max_upload_bytes
        if nbytes is None or nbytes <= limit:
            return None
        return (
            f"📎 {name} is {size(nbytes)}; I accept files up to {size(limit)}"
            f" ({self.platform.name}.{self.settings.upload_setting}). Send a smaller file, or"
            " put it on the gateway's machine and tell me the path."
        )

    def inbox_dir(self, chat: Chat) -> Path:
        return self.engine.workspace / "inbox" / f"{self.platform.name}-{chat.id}"

    async def save_upload(self, chat: Chat, name: str, data: bytes) -> Path:
        """Save a file the person sent into the chat's inbox folder; returns its path."""
        folder = self.inbox_dir(chat)
        stem = time.strftime("%Y%m%d-%H%M%S-") + safe_filename(name)
        path = folder / stem
        counter = 1
        while path.exists():
            path = folder / f"{stem}-{counter}"
            counter += 1

        def write() -> None:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        await asyncio.to_thread(write)
        return path

    def upload_note(self, path: Path, name: str, mime_type: str | None, nbytes: int) -> str:
        """What Claude is told about a file the person sent."""
        kind = f"{mime_type}, " if mime_type else ""
        return (
            f"[The user sent a file: {name} ({kind}{size(nbytes)}), saved at {path}]"
        )

    # ================================================================== messages out

    async def say(self, chat: Chat, text: str, *, markdown: bool = True) -> None:
        """Send a text of any length (split to fit the platform's limit). What the
        platform does not take (it is down) waits in the outbox, after what waits there
        for this chat already."""
        messages = self.outbox.split(text, markdown=markdown)
        for number, (chunk, md) in enumerate(messages):
            try:
                await self.platform.send_text(chat, chunk, markdown=md)
            except Exception as exc:
                log.warning("%s: a reply could not be sent (%s: %s); it waits in the outbox",
                            chat.key, type(exc).__name__, exc)
                await self.outbox.put_messages(chat.key, messages[number:])
                return

    async def deliver_file(self, item: OutgoingFile) -> None:
        """The engine's ``send_file`` sink: send what Claude hands the person, natively."""
        chat = self.platform.chat_for_key(item.key)
        if chat is None:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"{item.key} is not a chat of"
                               f" {self.title}")
        nbytes = (await asyncio.to_thread(item.path.stat)).st_size
        if nbytes > self.platform.max_upload_bytes:
            raise GatewayError(
                ErrorKind.INVALID_REQUEST,
                f"{item.path.name} is {size(nbytes)}; {self.title} bots can send at most"
                f" {size(self.platform.max_upload_bytes)}",
            )
        await self.platform.send_file(chat, item.path, item.caption, item.kind)

    async def on_alert(self, alert: Alert) -> None:
        """A turn ended by timeout or crash: tell the chat it came from, or the owner."""
        chat = self.platform.chat_for_key(alert.key)
        if chat is not None:
            state = self._chats.get(chat.key)
            if state is not None and state.view is not None:
                return  # the turn is on screen: its view shows the error
            await self.say(chat, error_text(alert.error, rate_limit=self._rate_limit()),
                           markdown=False)
            return
        if alert.key.startswith(CHAT_PREFIXES) or not self.settings.notify_key:
            return
        target = self.platform.chat_for_key(self.settings.notify_key)
        if target is None:
            return
        origin = f" ({alert.origin})" if alert.origin else ""
        await self.say(
            target,
            f"A turn of {alert.key}{origin} ended badly:\n"
            + error_text(alert.error, rate_limit=self._rate_limit()),
            markdown=False,
        )

    async def on_usage_warning(self, warning: UsageWarning) -> None:
        """A usage-limit window reached a threshold, or a request was refused for the limit:
        the notification chat is told (the engine sends each warning once)."""
        if not self.settings.notify_key:
            return
        target = self.platform.chat_for_key(self.settings.notify_key)
        if target is not None:
            await self.say(target, warning_text(warning), markdown=False)

    # ================================================================== turns

    def _state(self, chat: Chat) -> _ChatState:
        state = self._chats.get(chat.key)
        if state is None:
            state = self._chats[chat.key] = _ChatState(chat)
        return state

    def busy(self, chat: Chat) -> bool:
        """True while a turn runs, messages wait, or a voice note is being prepared."""
        state = self._chats.get(chat.key)
        return state is not None and (
            state.view is not None or bool(state.turns)
            or (state.intake is not None and not state.intake.done())
        )

    async def _send(self, state: _ChatState, turn: _Turn, prompt: Prompt,
                    options: TurnOptions) -> None:
        """One message's way through the engine. It joins the turn that waits in the
        engine's queue (the engine says ``coalesced``: the first message's task shows the
        turn) or starts a new one, which this task then shows."""
        prev, state.forming = state.forming, turn
        state.turns.append(turn)
        # the engine takes the prompt into its queue when this first step runs (before
        # the iterator's first wait), so messages enter it in the order of their tasks
        stream = self.engine.turn(turn.key or state.chat.key, prompt, options)
        try:
            first = await anext(stream)
            if (isinstance(first, Notice) and first.kind == "coalesced" and prev is not None
                    and prev in state.turns and not prev.begun):
                self._join(state, turn, prev)
                async for event in stream:  # its turn is shown by the first message's task
                    if isinstance(event, FINAL_EVENTS):
                        break
                return
            if isinstance(first, TurnError) and first.kind is ErrorKind.BUSY:
                await self._refuse_busy(state, turn, first)
                return
            await self._lead(state, turn, stream, first)
        finally:
            if isinstance(stream, AsyncGenerator):  # leaving takes the prompt out of the queue
                with contextlib.suppress(Exception):
                    await stream.aclose()
            if turn in state.turns:
                state.turns.remove(turn)
            if state.forming is turn:
                state.forming = None
            self._show_waiting(state)

    def _join(self, state: _ChatState, turn: _Turn, into: _Turn) -> None:
        """``turn``'s message went into the waiting turn ``into``."""
        state.turns.remove(turn)
        state.forming = into
        into.entries += turn.entries
        into.prompts += turn.prompts
        task = asyncio.current_task()
        if task is not None:
            into.tasks.add(task)
        self._show_waiting(state)

    async def _refuse_busy(self, state: _ChatState, turn: _Turn, error: TurnError) -> None:
        """The engine's queue of this conversation is full
        (``claude.max_queued_per_conversation``): the message stays in the inbox, for
        /retry, and the chat is told."""
        state.turns.remove(turn)
        if state.forming is turn:
            state.forming = None
        log.info("%s: %s has %d message(s) waiting already; inbox entries %s not sent",
                 self.title, state.chat.key, state.waiting(), turn.entries)
        await self._mark(turn.entries, "dropped", outcome="busy")
        await self.say(
            state.chat,
            f"⏳ {state.waiting()} messages are already waiting for Claude here, so I did not"
            " send this one. It is kept: send /retry when those are answered (or /stop"
            " them), and it goes in.",
            markdown=False,
        )

    def _show_waiting(self, state: _ChatState) -> None:
        if state.view is not None:
            state.view.queued = state.waiting()
            state.view.touch()

    async def _lead(self, state: _ChatState, turn: _Turn, stream: AsyncIterator[Event],
                    first: Event) -> None:
        """Show ``turn`` (after the chat's previous turn is shown) and close its entries."""
        event = first
        if isinstance(first, Notice) and first.kind == "queued":
            self._show_waiting(state)
            event = await anext(stream)  # it left the queue
        turn.begun = True
        self._show_waiting(state)
        async with state.display:
            await self._run_turn(state, turn, _then(event, stream))

    async def _mark(self, entries: list[int], inbox_state: str, *, outcome: str | None = None,
                    answer: str | None = None) -> None:
        try:
            await self.ledger.set_state(entries, inbox_state, outcome=outcome, answer=answer)
        except Exception:
            log.exception("inbox entries %s could not be marked %s", entries, inbox_state)

    async def _run_turn(self, state: _ChatState, turn: _Turn,
                        events: AsyncIterator[Event]) -> None:
        chat = state.chat
        entries = turn.entries
        self.outbox.kick()  # what waits for this chat goes first, if the platform is back
        view = TurnView(self.platform, chat, self.settings.view, rate_limit=self._rate_limit)
        state.view = view
        view.queued = state.waiting()
        final: TurnResult | TurnError | None = None
        reached_claude = cancelled = False
        try:
            await view.start()
            view.project = self.engine.project_of(turn.key or chat.key).name
            async for event in events:
                if isinstance(event, TurnStarted) and not reached_claude:
                    reached_claude = True
                    await self._mark(entries, "sent_to_claude")
                if isinstance(event, TurnError) and event.kind is ErrorKind.SHUTDOWN \
                        and not reached_claude:
                    # the engine stops before this turn began: it stays ``received`` in the
                    # inbox and the next start runs it
                    final = event
                    await view.on_event(event)
                    entries = []
                elif isinstance(event, TurnResult | TurnError):
                    final = event
                    if isinstance(event, TurnResult):
                        await self._mark(entries, "answered", outcome="answer",
                                         answer=event.text)
                    else:
                        await self._mark(entries, "answered", outcome="error")
                elif isinstance(event, ToolCallsRequested):
                    # Only requests with client tools (the HTTP API) end this way; a chat
                    # turn never offers any, so this is a bug somewhere: say so, don't hang.
                    names = ", ".join(c.name for c in event.calls)
                    final = TurnError(
                        ErrorKind.CRASHED,
                        f"the turn ended asking for client tools ({names}), which chats do"
                        " not offer",
                    )
                else:
                    await view.on_event(event)
        except asyncio.CancelledError:  # the bridge stops: show what there is, then stop
            cancelled = True
        except Exception as exc:
            log.exception("turn of %s failed in the bridge", chat.key)
            final = TurnError(ErrorKind.CRASHED, f"internal error: {exc}")
        try:
            rest = await self._finish_view(view, final)
        finally:
            state.view = None
        # a turn cut off by a shutdown (no final event) stays open in the inbox: the next
        # start tells the chat
        if entries and final is not None:
            await self._settle(chat, entries, final, rest)
        if cancelled:
            raise asyncio.CancelledError
        if isinstance(final, TurnResult):
            for hook in self.after_turn:
                try:
                    await hook(chat, final)
                except Exception:
                    log.exception("after-turn hook %r of %s failed", hook, chat.key)

    async def _finish_view(self, view: TurnView, final: TurnResult | TurnError | None) -> str:
        """Let the view deliver the end of the turn; what it could not deliver.

        Bounded by :attr:`finish_timeout`: past it the display is stopped and, not knowing
        how much of the answer arrived, the whole answer goes to the outbox (a part may then
        appear twice)."""
        finishing = asyncio.ensure_future(view.finish(final))
        try:
            await asyncio.wait_for(asyncio.shield(finishing), timeout=self.finish_timeout)
            # TurnView.finish returns what it could not deliver ("" when all arrived)
            rest: object = finishing.result()
        except TimeoutError:
            finishing.cancel()
            log.warning("%s: the answer's display did not finish within %.0f s; the answer"
                        " waits in the outbox", view.chat.key, self.finish_timeout)
            return final.text if isinstance(final, TurnResult) else ""
        except Exception:
            log.exception("the display of a turn of %s failed", view.chat.key)
            return final.text if isinstance(final, TurnResult) else ""
        return rest if isinstance(rest, str) else ""

    async def _settle(self, chat: Chat, entries: list[int], final: TurnResult | TurnError,
                      rest: str) -> None:
        """The turn's display is over: its entries are done, or what the chat did not get
        waits in the outbox (one transaction)."""
        undelivered = self.outbox.split(rest)
        outcome = "answer" if isinstance(final, TurnResult) else "error"
        try:
            await self.ledger.finish(entries, outcome=outcome, platform=self.platform.name,
                                     chat_key=chat.key, undelivered=undelivered)
        except Exception:
            log.exception("inbox entries %s could not be closed", entries)
            return
        if undelivered:
            log.warning("%s: %d message(s) of the answer to inbox entry %d could not be"
                        " delivered; they wait in the outbox", chat.key, len(undelivered),
                        entries[0])
            self.outbox.kick()

    async def _model_for(self, chat: Chat) -> str | None:
        """The platform's default model for a conversation that has not chosen one."""
        if not self.settings.model:
            return None
        key = await self.conversation_key(chat)
        if self.engine.project_of(key).default_model:
            return None  # the project's model comes first
        info = await self.engine.describe(key)
        return self.settings.model if info is None or not info.model else None

    def _model_name(self, info: SessionInfo | None) -> str | None:
        """The model a conversation runs with: its own choice, else this platform's
        default, else the gateway's (None: the CLI's own)."""
        return (info.model if info else None) or self.settings.model or \
            self.engine.default_model

    def _rate_limit(self) -> RateLimitStatus | None:
        return self.engine.status().rate_limit

    # ================================================================== built-in commands

    def _add_builtin_commands(self) -> None:
        for command in (
            Command("new", "Start a fresh session (forget this conversation)", self._cmd_new),
            Command("stop", "Stop the running answer at once", self._cmd_stop),
            Command("retry", "Send again the last message that got no answer", self._cmd_retry),
            Command("model", "Show or change the model", self._cmd_model, "[name]"),
            Command("status", "Session, model, tokens, cost and usage limits", self._cmd_status),
            Command("usage", "Usage limits, and what today and this week used",
                    self._cmd_usage),
            Command("sessions", "Recent Claude Code sessions of this chat's project",
                    self._cmd_sessions),
            Command("resume", "Continue one of those sessions here", self._cmd_resume,
                    "<number or id>"),
            Command("help", "What I can do", self._cmd_help),
            Command("start", "Say hello", self._cmd_help, hidden=True),
        ):
            self.commands.add(command)

    async def _cmd_new(self, ctx: CommandContext) -> None:
        state = self._state(ctx.chat)
        _cancel(state.intake)
        await self._drop_waiting(state)
        await self.engine.reset(await self.conversation_key(ctx.chat))
        await ctx.reply("🆕 Fresh session: I have forgotten this conversation.", markdown=False)

    async def _cmd_stop(self, ctx: CommandContext) -> None:
        state = self._state(ctx.chat)
        dropped = int(_cancel(state.intake)) + await self._drop_waiting(state)
        stopped = await self.engine.interrupt(await self.conversation_key(ctx.chat))
        if dropped:
            plural = "message" if dropped == 1 else "messages"
            await ctx.reply(f"⏹ Stopped; {dropped} waiting {plural} not sent.", markdown=False)
        elif not stopped:
            await ctx.reply("Nothing is running.", markdown=False)

    async def _drop_waiting(self, state: _ChatState) -> int:
        """Take the waiting messages out of the engine's queue (/stop, /new); /retry can
        still send the last one. Voice notes still being prepared are closed (their audio
        is not kept). Returns how many messages waited."""
        waiting = [t for t in state.turns if not t.begun]
        tasks = [task for t in waiting for task in t.tasks if not task.done()]
        for task in tasks:
            task.cancel()  # its prompt leaves the engine's queue with its iterator
        if tasks:
            await asyncio.wait(tasks)
        await self._mark([e for t in waiting for e in t.entries], "dropped")
        held, state.held = list(state.held), set()
        for entry in held:
            with contextlib.suppress(Exception):
                await self.ledger.release(entry)
        return sum(t.prompts for t in waiting)

    async def _cmd_retry(self, ctx: CommandContext) -> None:
        row = await self.ledger.last_unanswered(ctx.chat.key)
        if row is None:
            await ctx.reply("Nothing to retry: every message here got its answer.",
                            markdown=False)
            return
        prompt = prompt_of(row)
        log.info("%s: /retry of inbox entry %d in %s", self.title, row.id, ctx.chat.key)
        await self._mark([row.id], "retried")
        note = "after the running one" if self.busy(ctx.chat) else "now"
        await ctx.reply(f"🔁 Sending it again {note}: {first_line(row)}", markdown=False)
        await self.submit_now(ctx.chat, prompt, Source(
            sender_id=ctx.user.id, attachments=tuple(row.attachments),
            voice=row.transcription is not None))

    async def _cmd_model(self, ctx: CommandContext) -> None:
        names = ", ".join(self.engine.model_names())
        if not ctx.args:
            info = await self.engine.describe(await self.conversation_key(ctx.chat))
            current = self._model_name(info) or "the CLI's default"
            await ctx.reply(f"Model: {current}\nChoose with /model <name>: {names}",
                            markdown=False)
            return
        wanted = ctx.args.split()[0]
        if wanted.lower() in ("default", "reset"):
            model = await self.engine.set_model(await self.conversation_key(ctx.chat),
                                                self.settings.model or None)
        else:
            model = await self.engine.set_model(await self.conversation_key(ctx.chat), wanted)
        await ctx.reply(
            f"Model: {model or 'the default'}. The conversation keeps its history.",
            markdown=False,
        )

    async def _cmd_status(self, ctx: CommandContext) -> None:
        key = await self.conversation_key(ctx.chat)
        info = await self.engine.describe(key)
        rl = rate_limit_text(self._rate_limit())
        state = self._chats.get(ctx.chat.key)
        waiting = state.waiting() if state else 0
        if info is None:
            lines = ["**Session:** none yet — your next message starts one."]
            model = self._model_name(None) or "CLI default"
        else:
            sid = f"`{info.session_id}`" if info.session_id else "not started"
            lines = [f"**Session:** {sid}, {info.turns} turn(s), last used"
                     f" {ago(info.last_used_at)}"]
            model = self._model_name(info) or "CLI default"
            u = info.usage
            lines.append(
                f"**Tokens:** {u.prompt_tokens:,} in ({u.cache_read_tokens:,} from cache),"
                f" {u.output_tokens:,} out"
            )
            lines.append(f"**Cost so far:** ${info.cost_usd:.4f} (API-equivalent)")
        running = state is not None and state.view is not None
        now = "working" if running else "idle"
        if self.engine.pending_approvals(key):
            now = "waiting for your approval"
        if waiting:
            now += f", {waiting} message(s) waiting"
        lines[1:1] = [f"**Model:** {model}"]
        lines.append(f"**Now:** {now}")
        for status_line in self.status_lines:
            line = await status_line(ctx.chat)
            if line:
                lines.append(line)
        lines.append(f"**Usage limit:** {rl}")
        lines.append(f"**Usage:** {usage_line(await self.engine.usage(hours=1))}")
        await ctx.reply("\n".join(lines))

    async def _cmd_usage(self, ctx: CommandContext) -> None:
        await ctx.reply(usage_text(await self.engine.usage(hours=1)))

    async def _cmd_sessions(self, ctx: CommandContext) -> None:
        project = await self.projects.project(ctx.chat)
        sessions = await self.engine.cli_sessions(limit=10, project=project.name)
        state = self._state(ctx.chat)
        state.sessions = [s.session_id for s in sessions]
        if not sessions:
            await ctx.reply(f"No Claude Code sessions in {project.path} yet.", markdown=False)
            return
        info = await self.engine.describe(await self.conversation_key(ctx.chat))
        mine = info.session_id if info else None
        lines = [f"Recent Claude Code sessions in `{project.path}` ({project.name}):", ""]
        for number, s in enumerate(sessions, 1):
            title = _one_line(s.summary or s.first_prompt or "(no title)", 70)
            extra = [ago(s.last_modified / 1000)]
            if s.git_branch:
                extra.append(f"branch {s.git_branch}")
            if s.session_id == mine:
                extra.append("this chat")
            lines.append(f"{number}. {_escape(title)} — {', '.join(extra)}")
            lines.append(f"   `{s.session_id}`")
        lines += ["", "Continue one here with /resume <number> (or /resume <id>)."]
        await ctx.reply("\n".join(lines))

    async def _cmd_resume(self, ctx: CommandContext) -> None:
        wanted = ctx.args.strip()
        if not wanted:
            await ctx.reply("Usage: /resume <number or id>. /sessions lists them.",
                            markdown=False)
            return
        state = self._state(ctx.chat)
        session_id = wanted
        if wanted.isdigit() and 1 <= int(wanted) <= len(state.sessions):
            session_id = state.sessions[int(wanted) - 1]
        elif len(wanted) >= 6:
            matches = [s for s in state.sessions if s.startswith(wanted)]
            if len(matches) == 1:
                session_id = matches[0]
        if self.busy(ctx.chat):
            await ctx.reply("A turn is running here; /stop it first.", markdown=False)
            return
        key = await self.conversation_key(ctx.chat)
        await self.engine.attach_session(key, session_id)
        summary = ""
        with contextlib.suppress(Exception):
            for s in await self.engine.cli_sessions(
                    limit=50, project=self.engine.project_of(key).name):
                if s.session_id == session_id:
                    summary = f": {_one_line(s.summary or s.first_prompt or '', 80)}"
        await ctx.reply(
            f"▶️ This chat now continues session {session_id}{summary}. Your next message"
            " goes to it.",
            markdown=False,
        )

    async def _cmd_help(self, ctx: CommandContext) -> None:
        lines = [
            "I am Claude Code running on your machine. Send a message and I work in the"
            f" workspace `{self.engine.workspace}`, with its files and tools.",
            "",
            "Photos reach me as images; other files are saved in my inbox folder and I am"
            " told where. I can send you files, photos and voice notes. Messages you send"
            " while I work go in together as the next message.",
            "",
        ]
        if self.voice is not None:
            lines[-1:-1] = [
                "",
                "Voice messages are transcribed (I show what I heard) and answered like text;"
                " /voice on adds a spoken reply to every answer.",
            ]
        for command in self.commands:
            if command.hidden:
                continue
            usage = f" {command.usage}" if command.usage else ""
            lines.append(f"/{command.name}{_escape(usage)} — {command.description}")
        await ctx.reply("\n".join(lines))


# --------------------------------------------------------------------------- helpers


def _cancel(task: asyncio.Task[None] | None) -> bool:
    """Cancel a chat's intake (a voice note being transcribed); True if one was running."""
    if task is None or task.done():
        return False
    task.cancel()
    return True


async def _then(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """``first``, then the events of ``rest``."""
    yield first
    async for event in rest:
        yield event


def safe_filename(name: str, fallback: str = "file") -> str:
    """A name that is safe on every file system and cannot leave its folder."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._ -]+", "_", name).strip(" .")
    name = re.sub(r"\s+", "_", name)
    if not name:
        return fallback
    if len(name) > 100:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 100 - len(ext) - 1] + "." + ext) if dot and len(ext) <= 10 else name[:100]
    return name


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _escape(text: str) -> str:
    """Markdown-escape text shown inside a Markdown reply."""
    return re.sub(r"([\\`*_\[\]<>|~#])", r"\\\1", text)

