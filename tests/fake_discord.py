"""Discord's servers, faked in-process: dpytest plus what the bridge needs that dpytest lacks.

dpytest 0.7 (with discord.py 2.7) replaces the client's HTTP client and connection state, so
the REAL discord.py code runs: events are parsed from Discord's JSON, messages are sent,
edited and deleted through ``discord.Message`` and the HTTP client. This module adds, on top
of it, in the same style (Discord-shaped JSON fed to the client's state):

* DM channels, threads created from a message (``POST .../threads``), messages with
  attachments carrying a content type, voice-message flags and replies;
* slash commands: an ``INTERACTION_CREATE`` payload parsed by discord.py, and the
  interaction callback / follow-up webhook endpoints (Discord's side, answered here);
* message components: the buttons a message was sent or edited with (``Sent.components``),
  and a press on one (:meth:`FakeDiscord.press`: an ``INTERACTION_CREATE`` of type 3), whose
  answer is kept in :attr:`FakeDiscord.responses`;
* a record of everything the bot did (sends, edits, deletes, typing), and one-shot failures
  (``fail_next``) to show that a Discord error delays a message without losing it;
* ``PUT /applications/{id}/commands`` (command sync), recorded;
* timing like Discord's servers (off by default, so fast tests stay fast): ``latency``
  seconds per call (send, edit, delete, typing) plus up to ``jitter`` more at random, and
  random rate limits: ``flood_rate`` of the sends and edits are answered ``429`` with a
  ``Retry-After`` of ``flood_retry_after`` seconds (counted in :attr:`FakeDiscord.floods`).
  dpytest replaces discord.py's HTTP client, whose own 429 handling therefore does not run:
  the 429 reaches the bridge as the ``HTTPException`` discord.py raises when it gives up.

Only Discord's servers are fake; nothing of the gateway is.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import itertools
import json
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import discord
import discord.ext.test as dpytest
import pytest
from discord.ext.test import backend, callbacks
from discord.ext.test import factories as facts
from discord.webhook.async_ import AsyncWebhookAdapter

T = TypeVar("T")

OWNER_ID = 301_000_000_000_000_001
STRANGER_ID = 301_000_000_000_000_999
FRIEND_ID = 301_000_000_000_000_555
GUILD_ID = 302_000_000_000_000_001
GENERAL_ID = 303_000_000_000_000_001
RANDOM_ID = 303_000_000_000_000_002
_ids = itertools.count(400_000_000_000_000_000)


def make_id() -> int:
    return next(_ids)


@dataclass
class Sent:
    """A message the bot sent, as the fake Discord keeps it."""

    id: int
    channel_id: int
    content: str
    history: list[str]
    files: list[tuple[str, bytes]] = field(default_factory=list)
    silent: bool = False
    deleted: bool = False
    via_interaction: bool = False
    ephemeral: bool = False
    flags: int = 0  # as the message stands now (an edit that sends flags replaces them)
    #: its action rows as Discord keeps them (an edit with ``components`` replaces them)
    components: list[dict[str, Any]] = field(default_factory=list)

    def buttons(self) -> list[dict[str, Any]]:
        return [c for row in self.components for c in row.get("components", [])]


@dataclass
class Action:
    kind: str  # "send", "edit", "delete", "typing", "thread", "defer", "followup", ...
    channel_id: int
    at: float
    data: dict[str, Any] = field(default_factory=dict)


class FakeDiscord:
    """One configured dpytest backend for ``client`` (build it with :meth:`create`); the
    patches go with ``monkeypatch``."""

    @classmethod
    async def create(cls, client: discord.Client, monkeypatch: pytest.MonkeyPatch,
                     tmp: Path | None = None) -> FakeDiscord:
        await client._async_setup_hook()  # what login() does first: bind to the running loop
        return cls(client, monkeypatch, tmp)

    def __init__(self, client: discord.Client, monkeypatch: pytest.MonkeyPatch,
                 tmp: Path | None = None) -> None:
        self.client = client
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-discord-")) if tmp is None else tmp
        dpytest.configure(client, guilds=0, text_channels=0, voice_channels=0, members=0)
        self.state = backend.get_state()
        self.state.loop = asyncio.get_running_loop()  # dpytest leaves it MISSING
        tree = getattr(client, "tree", None)
        if tree is not None:  # dpytest swapped the connection state the tree was bound to
            self.state._command_tree = tree
            tree._state = self.state
            tree._http = client.http
        self.bot = self.state.user
        self.state.application_id = self.bot.id  # type: ignore[attr-defined]
        # fixed ids, so that settings can name them before the fake exists
        self.guild: discord.Guild = backend.make_guild("Test Server", id_num=GUILD_ID)
        self.general = backend.make_text_channel("general", self.guild, id_num=GENERAL_ID)
        self.random = backend.make_text_channel("random", self.guild, id_num=RANDOM_ID)
        self.owner = self._member("owner", OWNER_ID)
        self.stranger = self._member("mallory", STRANGER_ID)
        self.friend = self._member("friend", FRIEND_ID)
        self._add_member(self.bot)  # the bot is in the server
        self.sent: dict[int, Sent] = {}
        self.actions: list[Action] = []
        self.synced: list[list[dict[str, Any]]] = []
        self._failures: dict[str, list[Exception]] = {}
        self._dms: dict[int, discord.DMChannel] = {}
        self._interaction_channels: dict[str, int] = {}
        #: the interaction response of each token (a button press's ephemeral answer)
        self.responses: dict[str, dict[str, Any]] = {}
        self.latency = 0.0
        self.jitter = 0.0
        self.flood_rate = 0.0
        self.flood_retry_after = 0.5
        self.floods = 0
        self._random = random.Random()  # the jitter
        self._flood_random = random.Random()  # which calls get rate limited
        self._install(monkeypatch)

    def slow(self, latency: float = 0.1, jitter: float = 0.05, flood_rate: float = 0.0,
             flood_retry_after: float = 0.5, seed: int | None = None) -> None:
        """Answer like Discord over the internet: see the module doc."""
        self.latency, self.jitter = latency, jitter
        self.flood_rate, self.flood_retry_after = flood_rate, flood_retry_after
        self._random, self._flood_random = random.Random(seed), random.Random(seed)

    # ------------------------------------------------------------------ users and places

    def _member(self, name: str, user_id: int) -> discord.Member:
        return self._add_member(backend.make_user(name, "0001", id_num=user_id))

    def _add_member(self, user: discord.abc.User) -> discord.Member:
        # the bot asks for no members intent, so discord.py would not cache GUILD_MEMBER_ADD
        data = facts.make_member_dict(self.guild, user, [])
        member = discord.Member(data=data, guild=self.guild, state=self.state)  # type: ignore[arg-type]
        self.guild._add_member(member)
        return member

    def dm(self, member: discord.abc.User, channel_id: int | None = None) -> discord.DMChannel:
        """The DM channel between ``member`` and the bot (the same id in every fake unless
        ``channel_id`` says otherwise)."""
        channel = self._dms.get(member.id)
        if channel is None:
            user = self.client.get_user(member.id) or member
            data = facts.make_dm_channel_dict(user, id_num=channel_id or member.id + 7)
            channel = self.state.add_dm_channel(data)  # type: ignore[arg-type]
            self._dms[member.id] = channel
        return channel

    def thread(self, thread_id: int) -> discord.Thread:
        found = self.guild.get_thread(thread_id)
        assert found is not None, f"no thread {thread_id}"
        return found

    def threads(self) -> list[discord.Thread]:
        return list(self.guild.threads)

    # ------------------------------------------------------------------ the user's side

    def mention(self) -> str:
        return f"<@{self.bot.id}>"

    async def message(
        self,
        channel: discord.abc.Messageable,
        author: discord.abc.User,
        content: str = "",
        *,
        files: list[tuple[str, bytes, str | None]] | None = None,
        voice: tuple[bytes, float] | None = None,
        reply_to: int | None = None,
    ) -> discord.Message:
        """``author`` writes ``content`` (with ``files`` as (name, bytes, content type), or a
        voice message (OGG bytes, seconds)) in ``channel``; the bot's handler is started."""
        attachments = [self._attachment(name, data, kind) for name, data, kind in files or []]
        if voice is not None:
            data, seconds = voice
            attachments.append(self._attachment("voice-message.ogg", data, "audio/ogg",
                                                duration=seconds))
        mentions: list[Any] = []
        if self.mention() in content:
            mentions.append(self.bot)
        guild = getattr(channel, "guild", None)
        kwargs: dict[str, Any] = {}
        if guild is not None:
            kwargs["guild_id"] = guild.id
            member = guild.get_member(author.id)
            if member is not None:
                kwargs["member"] = member
        data = facts.make_message_dict(
            channel, author, make_id(), content=content, mentions=mentions, **kwargs)
        data["attachments"] = attachments
        if voice is not None:
            data["flags"] = 1 << 13  # IS_VOICE_MESSAGE
        if reply_to is not None:
            data["type"] = discord.MessageType.reply.value
            data["message_reference"] = {"message_id": reply_to, "channel_id": channel.id}
            referenced = next((m for m in backend._cur_config.messages.get(channel.id, [])
                               if m["id"] == reply_to), None)
            if referenced is not None:
                data["referenced_message"] = referenced
        backend._cur_config.messages.setdefault(channel.id, []).append(data)
        self.state.parse_message_create(data)
        message = self.state._get_message(data["id"])
        assert message is not None
        return message

    def _attachment(self, name: str, data: bytes, kind: str | None,
                    duration: float | None = None) -> dict[str, Any]:
        path = self._tmp / f"attachment-{make_id()}"
        path.write_bytes(data)
        uri = path.absolute().as_uri()
        attachment = facts.make_attachment_dict(name, len(data), uri, uri, make_id(),
                                                content_type=kind)
        if duration is not None:
            attachment["duration_secs"] = duration
            attachment["waveform"] = "AAAA"
        return attachment

    async def slash(self, channel: discord.abc.Messageable, author: discord.abc.User,
                    command: str, **options: str) -> str:
        """``author`` runs ``/command`` with ``options`` in ``channel``; returns its token."""
        return self._interaction(channel, author, 2, {
            "data": {"id": make_id(), "name": command, "type": 1,
                     "options": [{"name": k, "type": 3, "value": v} for k, v in options.items()]},
        })

    async def press(self, channel: discord.abc.Messageable, author: discord.abc.User,
                    message: Sent, custom_id: str) -> str:
        """``author`` presses the button ``custom_id`` under the bot's ``message``; returns
        the interaction's token (its answer: ``responses[token]``)."""
        raw_message = facts.make_message_dict(channel, self.bot, message.id,  # type: ignore[arg-type]
                                              content=message.content)
        raw_message["components"] = message.components
        return self._interaction(channel, author, 3, {
            "message": raw_message, "data": {"custom_id": custom_id, "component_type": 2}})

    def _interaction(self, channel: discord.abc.Messageable, author: discord.abc.User,
                     kind: int, fields: dict[str, Any]) -> str:
        """Feed an ``INTERACTION_CREATE`` of ``kind`` (2 slash command, 3 component) by
        ``author`` in ``channel`` to the client; returns its token."""
        token = f"token-{make_id()}"
        guild = getattr(channel, "guild", None)
        raw_channel = (facts.dict_from_channel(channel) if guild is not None  # type: ignore[arg-type]
                       else {"id": channel.id, "type": 1})  # type: ignore[attr-defined]
        data: dict[str, Any] = {
            "id": make_id(), "application_id": self.bot.id, "type": kind, "token": token,
            "version": 1, "channel_id": channel.id, "channel": raw_channel,  # type: ignore[attr-defined]
            "locale": "en-US", "app_permissions": "0", "entitlements": [],
            "authorizing_integration_owners": {}, "attachment_size_limit": 10 << 20,
            **fields,
        }
        if guild is not None:
            member = guild.get_member(author.id)
            assert member is not None
            data["guild_id"] = guild.id
            data["member"] = {**facts.dict_from_member(member),
                              "user": facts.dict_from_user(author), "permissions": "0"}
        else:
            data["user"] = facts.dict_from_user(author)  # type: ignore[arg-type]
        self._interaction_channels[token] = channel.id  # type: ignore[attr-defined]
        self.state.parse_interaction_create(data)  # type: ignore[arg-type]
        return token

    # ------------------------------------------------------------------ what the bot did

    def bot_messages(self, channel_id: int, *, deleted: bool = False) -> list[Sent]:
        return [m for m in self.sent.values()
                if m.channel_id == channel_id and (deleted or not m.deleted)]

    def texts(self, channel_id: int) -> list[str]:
        return [m.content for m in self.bot_messages(channel_id) if m.content]

    def of(self, kind: str, channel_id: int | None = None) -> list[Action]:
        return [a for a in self.actions
                if a.kind == kind and (channel_id is None or a.channel_id == channel_id)]

    async def wait_for(self, check: Callable[[], T], within: float = 30.0,
                       what: str = "a condition") -> T:
        deadline = time.monotonic() + within
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                shown = [(m.channel_id, m.content[:80]) for m in self.sent.values()]
                raise AssertionError(f"timed out waiting for {what}; bot sent: {shown}")
            await asyncio.sleep(0.02)

    def fail_next(self, kind: str, exc: Exception) -> None:
        """Make the next ``kind`` call ("send_message", "edit_message", ...) fail with ``exc``."""
        self._failures.setdefault(kind, []).append(exc)

    def _maybe_fail(self, kind: str) -> None:
        queue = self._failures.get(kind)
        if queue:
            raise queue.pop(0)

    async def _delay(self) -> None:
        if self.latency or self.jitter:
            await asyncio.sleep(self.latency + self._random.uniform(0, self.jitter))

    def _maybe_flood(self) -> None:
        if self.flood_rate and self._flood_random.random() < self.flood_rate:
            self.floods += 1
            wait = self.flood_retry_after
            raise discord.HTTPException(
                _RateLimitResponse(wait),
                {"message": "You are being rate limited.", "retry_after": wait, "global": False},
            )

    # ------------------------------------------------------------------ Discord's side

    def _install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fake = self

        # dpytest logs and swallows what its callbacks raise: failures are raised in the
        # patched HTTP methods below, before the call takes effect, the callbacks only record
        async def on_edit(channel: Any, message: discord.Message, fields: Any) -> None:
            payload = fields["params"].payload or {}
            record = fake.sent.get(message.id)
            if record is not None and "content" in payload:
                record.content = payload["content"] or ""
                record.history.append(record.content)
            if record is not None and "flags" in payload:
                record.flags = int(payload["flags"] or 0)
            if record is not None and "components" in payload:
                record.components = list(payload["components"] or [])
            fake.actions.append(Action("edit", channel.id, time.monotonic(), dict(payload)))

        async def on_delete(channel: Any, message: discord.Message, reason: Any = None) -> None:
            record = fake.sent.get(message.id)
            if record is not None:
                record.deleted = True
            fake.actions.append(Action("delete", channel.id, time.monotonic(),
                                       {"id": message.id}))

        async def on_typing(channel: Any) -> None:
            await fake._delay()
            fake.actions.append(Action("typing", channel.id, time.monotonic()))

        callbacks.set_callback(on_edit, "edit_message")
        callbacks.set_callback(on_delete, "delete_message")
        callbacks.set_callback(on_typing, "send_typing")

        http = self.client.http
        original_send = http.send_message
        original_edit = http.edit_message
        original_delete = http.delete_message

        async def send_message(channel_id: int, *, params: Any) -> Any:
            channel = _caller_local("channel")  # noqa: F841 - dpytest reads it from this frame
            await fake._delay()
            fake._maybe_flood()
            fake._maybe_fail("send_message")
            data = await original_send(channel_id, params=params)
            payload = params.payload
            if payload is None and params.multipart:  # with files: the JSON is one part
                payload = json.loads(params.multipart[0]["value"])
            payload = payload or {}
            content = payload.get("content") or ""
            files = [(f.filename, _file_bytes(f)) for f in params.files or []]
            flags = int(payload.get("flags") or 0)
            fake.sent[int(data["id"])] = Sent(int(data["id"]), channel_id, content, [content],
                                              files, silent=bool(flags & (1 << 12)), flags=flags,
                                              components=list(payload.get("components") or []))
            durations = [a.get("duration_secs") for a in payload.get("attachments") or []]
            fake.actions.append(Action("send", channel_id, time.monotonic(),
                                       {"id": int(data["id"]), "flags": flags,
                                        "duration_secs": next(iter(durations), None)}))
            return data

        # dpytest finds the message in its caller's frame, as ``self``
        async def edit_message(channel_id: int, message_id: int, **fields: Any) -> Any:
            self = _caller_local("self")  # noqa: F841 - dpytest reads it from this frame
            await fake._delay()
            fake._maybe_flood()
            fake._maybe_fail("edit_message")
            return await original_edit(channel_id, message_id, **fields)

        async def delete_message(channel_id: int, message_id: int, *,
                                 reason: str | None = None) -> Any:
            self = _caller_local("self")  # noqa: F841 - dpytest reads it from this frame
            await fake._delay()
            fake._maybe_fail("delete_message")
            return await original_delete(channel_id, message_id, reason=reason)

        async def start_thread_with_message(channel_id: int, message_id: int, *, name: str,
                                            auto_archive_duration: int,
                                            rate_limit_per_user: int | None = None,
                                            reason: str | None = None) -> Any:
            fake._maybe_fail("start_thread")
            now = dtm.datetime.now(dtm.UTC).isoformat()
            data = {
                "id": message_id, "type": 11, "guild_id": fake.guild.id,
                "parent_id": channel_id, "owner_id": fake.bot.id, "name": name,
                "rate_limit_per_user": 0, "message_count": 0, "member_count": 1, "flags": 0,
                "thread_metadata": {"archived": False, "locked": False,
                                    "auto_archive_duration": auto_archive_duration,
                                    "archive_timestamp": now},
            }
            fake.state.parse_thread_create(data)  # type: ignore[arg-type]
            fake.actions.append(Action("thread", channel_id, time.monotonic(),
                                       {"name": name, "archive": auto_archive_duration}))
            return data

        async def bulk_upsert_global_commands(application_id: int, payload: Any) -> Any:
            fake.synced.append(list(payload))
            return [{**c, "id": make_id(), "application_id": application_id, "version": 1}
                    for c in payload]

        monkeypatch.setattr(http, "send_message", send_message)
        monkeypatch.setattr(http, "edit_message", edit_message)
        monkeypatch.setattr(http, "delete_message", delete_message)
        monkeypatch.setattr(http, "start_thread_with_message", start_thread_with_message)
        monkeypatch.setattr(http, "bulk_upsert_global_commands", bulk_upsert_global_commands)

        # interaction callbacks and follow-ups: Discord's webhook endpoints
        async def create_interaction_response(adapter: Any, interaction_id: int, token: str,
                                              **kwargs: Any) -> Any:
            params = kwargs["params"]
            payload = params.payload or {}
            fake.actions.append(Action("defer", fake._interaction_channels.get(token, 0),
                                       time.monotonic(), dict(payload)))
            fake.responses[token] = dict(payload)
            ephemeral = bool((payload.get("data") or {}).get("flags", 0) & 64)
            return {"interaction": {"id": str(interaction_id), "type": 2,
                                    "response_message_loading": payload.get("type") == 5,
                                    "response_message_ephemeral": ephemeral}}

        async def execute_webhook(adapter: Any, webhook_id: int, token: str,
                                  **kwargs: Any) -> Any:
            payload = kwargs.get("payload") or {}
            channel_id = fake._interaction_channels[token]
            message_id = make_id()
            content = payload.get("content") or ""
            flags = int(payload.get("flags") or 0)
            fake.sent[message_id] = Sent(message_id, channel_id, content, [content],
                                         via_interaction=True, ephemeral=bool(flags & 64),
                                         flags=flags)
            fake.actions.append(Action("followup", channel_id, time.monotonic(),
                                       {"id": message_id, "flags": flags}))
            author = facts.dict_from_user(fake.bot)
            return {"id": message_id, "channel_id": channel_id, "content": content,
                    "author": author, "type": 0, "tts": False, "mention_everyone": False,
                    "mentions": [], "mention_roles": [], "attachments": [], "embeds": [],
                    "pinned": False, "timestamp": dtm.datetime.now(dtm.UTC).isoformat(),
                    "edited_timestamp": None, "flags": flags, "webhook_id": webhook_id}

        async def delete_original_interaction_response(adapter: Any, application_id: int,
                                                       token: str, **kwargs: Any) -> None:
            fake.actions.append(Action("delete_original",
                                       fake._interaction_channels.get(token, 0),
                                       time.monotonic()))

        monkeypatch.setattr(AsyncWebhookAdapter, "create_interaction_response",
                            create_interaction_response)
        monkeypatch.setattr(AsyncWebhookAdapter, "execute_webhook", execute_webhook)
        monkeypatch.setattr(AsyncWebhookAdapter, "delete_original_interaction_response",
                            delete_original_interaction_response)


class _RateLimitResponse:
    """What discord.py's ``HTTPException`` reads from a 429 response."""

    def __init__(self, retry_after: float) -> None:
        self.status = 429
        self.reason = "Too Many Requests"
        self.headers = {"Retry-After": f"{retry_after:g}", "X-RateLimit-Scope": "user"}


def _caller_local(name: str) -> Any:
    """The local ``name`` of the caller's caller (where dpytest's FakeHttp looks for it)."""
    import sys

    frame = sys._getframe(2)
    try:
        return frame.f_locals.get(name)
    finally:
        del frame


def _file_bytes(file: discord.File) -> bytes:
    fp = file.fp
    if fp.seekable():
        fp.seek(0)
    data = fp.read()
    return data if isinstance(data, bytes) else bytes(data)


class FakeDiscordRest:
    """Discord's REST API over real HTTP on 127.0.0.1, for what runs outside the test process
    (``claude-max-api doctor`` checks the bot token with ``GET /users/@me``; point it here with
    ``discord.api_base_url``). A call takes ~100 ms, like Discord's."""

    def __init__(self, token: str, *, username: str = "claude_test_bot",
                 latency: float = 0.1) -> None:
        from aiohttp import web

        self.token = token
        self.username = username
        self.latency = latency
        self.calls: list[str] = []
        self._app = web.Application()
        self._app.router.add_get("/api/v10/users/@me", self._me)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _me(self, request: Any) -> Any:
        from aiohttp import web

        self.calls.append(request.path)
        await asyncio.sleep(self.latency)
        if request.headers.get("Authorization") != f"Bot {self.token}":
            return web.json_response({"message": "401: Unauthorized", "code": 0}, status=401)
        return web.json_response({"id": str(OWNER_ID + 7), "username": self.username,
                                  "bot": True})

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    async def __aenter__(self) -> FakeDiscordRest:
        from aiohttp import web

        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
