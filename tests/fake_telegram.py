"""A fake Telegram Bot API for tests: aiohttp on 127.0.0.1, driven by the REAL python-telegram-bot.

Point PTB at it with ``base_url``/``base_file_url`` (``fake.base_url``, ``fake.base_file_url``);
the gateway's ``telegram.base_url`` setting does exactly that. It runs in the test's own event
loop::

    async with FakeTelegram() as tg:
        tg.user_text(chat_id=42, user_id=42, text="hello")     # an update for getUpdates
        msg = await tg.wait_for(lambda: tg.visible(42) and tg.visible(42)[-1])
        tg.calls_of("sendMessage")                              # every call, with params

Bot API methods (what the bridges use): getMe, getUpdates (real long polling: ``offset``
confirms, ``timeout`` waits), setMyCommands/getMyCommands/deleteMyCommands, setWebhook,
deleteWebhook, sendMessage (empty text and the 4096 UTF-16 limit give Telegram's 400s),
editMessageText (history kept; "message is not modified" and "message to edit not found"),
deleteMessage, sendChatAction, answerCallbackQuery (inline keyboards: ``reply_markup`` is
kept on the message, an edit without one takes it away), sendMessageDraft (private chats
only; ``drafts=False`` answers 404 like a server without it),
sendDocument/sendPhoto/sendVoice/sendAudio (multipart uploads kept as bytes), getFile and
``/file/bot<token>/<path>`` downloads. Unknown methods → 404.

Injected updates (``user_*`` helpers, :meth:`FakeTelegram.user_press` for a press on an inline
button: a ``callback_query`` update) carry what Telegram sends: private chats, groups and forum
supergroups (``thread_id`` → ``is_topic_message``), replies, mentions with their entities,
commands with a ``bot_command`` entity, photos (several sizes), documents, audio files and
voice notes whose bytes can be downloaded through getFile.

Faults: :meth:`FakeTelegram.fail_next` answers the next N calls of a method with an error
(429 + ``retry_after`` for flood control, 400, 502 …); ``reject_entities = True`` refuses any
text with entities like Telegram refuses a bad formatting ("can't parse entities").

Outage: ``down = True`` answers every Bot API call with the HTML ``502 Bad Gateway`` that
Telegram's front end gives while the Bot API is down, until it is set back to False.

Timing like the real servers (off by default, so fast tests stay fast): ``latency`` seconds
per call plus up to ``jitter`` more at random, half before the call takes effect and half
after (a round trip); ``flood_rate`` answers that share of the calls that send or change
something (:data:`FLOOD_METHODS`) with Telegram's flood control, ``429`` with
``retry_after = flood_retry_after``; :attr:`FakeTelegram.floods` counts them. ``seed`` makes
the randomness repeatable.

Every call is recorded in :attr:`FakeTelegram.calls` (method, params decoded from the form or
multipart body, uploaded files, time).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")

TOKEN = "123456:TEST-fake-token"
MAX_TEXT = 4096
#: The methods that random flood control (``flood_rate``) can refuse.
FLOOD_METHODS = frozenset(
    {"sendMessage", "editMessageText", "sendMessageDraft", "deleteMessage", "sendDocument",
     "sendPhoto", "sendVoice", "sendAudio"}
)
MAX_CAPTION = 1024
_STRING_PARAMS = frozenset(
    {"text", "caption", "parse_mode", "action", "file_id", "url", "secret_token", "emoji",
     "language_code", "description", "short_description", "ip_address"}
)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    files: dict[str, tuple[str, bytes]]
    at: float


@dataclass
class BotMessage:
    """A message the bot sent, as it stands now (``history`` has every text it had)."""

    chat_id: int
    message_id: int
    thread_id: int | None
    kind: str  # "text", "document", "photo", "voice", "audio"
    text: str = ""
    entities: list[dict[str, Any]] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    caption: str = ""
    filename: str = ""
    data: bytes = b""
    deleted: bool = False
    silent: bool = False
    #: the inline keyboard as sent (``{"inline_keyboard": [[{text, callback_data}]]}``)
    reply_markup: dict[str, Any] | None = None

    def buttons(self) -> list[dict[str, Any]]:
        """The inline buttons it shows now, row after row."""
        rows = (self.reply_markup or {}).get("inline_keyboard") or []
        return [button for row in rows for button in row]


@dataclass
class _Fault:
    code: int
    description: str
    retry_after: int | None
    times: int


class FakeTelegram:
    def __init__(self, token: str = TOKEN, *, username: str = "claude_test_bot",
                 bot_id: int = 777000, drafts: bool = True, latency: float = 0.0,
                 jitter: float = 0.0, flood_rate: float = 0.0, flood_retry_after: int = 1,
                 seed: int | None = None) -> None:
        self.token = token
        self.latency = latency
        self.jitter = jitter
        self.flood_rate = flood_rate
        self.flood_retry_after = flood_retry_after
        self.floods = 0
        self._random = random.Random(seed)  # the jitter
        self._flood_random = random.Random(seed)  # which calls get flood control
        self.username = username
        self.bot_id = bot_id
        self.drafts_enabled = drafts
        self.reject_entities = False
        #: an outage: while True every Bot API call gets nginx's HTML 502 (``refused`` counts)
        self.down = False
        self.refused = 0
        self.calls: list[Call] = []
        self.messages: list[BotMessage] = []
        self.drafts: list[tuple[int, int, str]] = []  # (chat, draft id, text)
        self.commands: list[dict[str, Any]] = []
        self.webhook_url = ""
        self.webhook_secret = ""
        #: answerCallbackQuery calls: {"id", "text", "show_alert"}
        self.callback_answers: list[dict[str, Any]] = []
        self._callback_ids = itertools.count(1)
        self._open_callbacks: set[str] = set()
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._chats: dict[int, dict[str, Any]] = {}
        self._files: dict[str, tuple[str, bytes]] = {}  # file_id -> (path, bytes)
        self._file_ids = itertools.count(1)
        self._faults: dict[str, list[_Fault]] = {}
        self._cond = asyncio.Condition()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ================================================================== lifecycle

    async def start(self) -> FakeTelegram:
        app = web.Application(client_max_size=100 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self._closing = True
        async with self._cond:
            self._cond.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # ================================================================== test side: updates

    def user_message(
        self,
        chat_id: int,
        user_id: int,
        text: str | None = None,
        *,
        chat_type: str | None = None,
        thread_id: int | None = None,
        reply_to: int | None = None,
        entities: list[dict[str, Any]] | None = None,
        photo: bytes | None = None,
        document: tuple[str, bytes, str] | None = None,
        voice: bytes | None = None,
        audio: tuple[str, bytes, str] | None = None,
        caption: str | None = None,
        first_name: str = "Owner",
        title: str = "Test group",
    ) -> dict[str, Any]:
        """Queue an update with a message from a user; returns the message (with its id)."""
        chat_type = chat_type or ("private" if chat_id > 0 else "supergroup")
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat["first_name"] = first_name
        else:
            chat["title"] = title
            if thread_id is not None:
                chat["is_forum"] = True
        self._chats[chat_id] = chat
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id),
            "date": int(time.time()),
            "chat": chat,
            "from": {"id": user_id, "is_bot": False, "first_name": first_name},
        }
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        if text is not None:
            message["text"] = text
            found = list(entities or [])
            if text.startswith("/"):
                command = text.split()[0]
                found.insert(0, {"type": "bot_command", "offset": 0,
                                 "length": utf16_len(command)})
            mention = f"@{self.username}"
            if mention in text and not any(e["type"] == "mention" for e in found):
                offset = utf16_len(text[: text.index(mention)])
                found.append({"type": "mention", "offset": offset,
                              "length": utf16_len(mention)})
            if found:
                message["entities"] = found
        if caption is not None:
            message["caption"] = caption
        if reply_to is not None:
            message["reply_to_message"] = self._reply_target(chat_id, reply_to, chat)
        if photo is not None:
            message["photo"] = [
                {**self._add_file(photo, "photos", ".jpg"), "width": w, "height": w}
                for w in (90, 320, 800)
            ]
        if document is not None:
            name, data, mime = document
            message["document"] = {**self._add_file(data, "documents", ""),
                                   "file_name": name, "mime_type": mime}
        if voice is not None:
            message["voice"] = {**self._add_file(voice, "voice", ".oga"), "duration": 2,
                                "mime_type": "audio/ogg"}
        if audio is not None:
            name, data, mime = audio
            message["audio"] = {**self._add_file(data, "music", ""), "duration": 3,
                                "file_name": name, "mime_type": mime}
        self._push({"message": message})
        return message

    def user_text(self, chat_id: int, text: str, *, user_id: int | None = None,
                  **kwargs: Any) -> dict[str, Any]:
        return self.user_message(chat_id, user_id if user_id is not None else chat_id, text,
                                 **kwargs)

    def user_press(self, message: BotMessage, data: str, *, user_id: int,
                   first_name: str = "Owner") -> str:
        """``user_id`` presses the inline button with ``data`` under the bot's ``message``
        (a ``callback_query`` update); returns the query id answerCallbackQuery names."""
        query_id = f"cb{next(self._callback_ids)}"
        self._open_callbacks.add(query_id)
        self._push({"callback_query": {
            "id": query_id, "chat_instance": f"ci{message.chat_id}",
            "from": {"id": user_id, "is_bot": False, "first_name": first_name},
            "message": self._message_json(message), "data": data,
        }})
        return query_id

    def answer_to(self, query_id: str) -> dict[str, Any] | None:
        return next((a for a in self.callback_answers if a["id"] == query_id), None)

    def raw_update(self, update: dict[str, Any]) -> None:
        self._push(update)

    def _push(self, update: dict[str, Any]) -> None:
        update = {"update_id": next(self._update_ids), **update}
        self._updates.append(update)

        async def notify() -> None:
            async with self._cond:
                self._cond.notify_all()

        asyncio.get_running_loop().create_task(notify())

    def pending_updates(self) -> int:
        return len(self._updates)

    def _reply_target(self, chat_id: int, message_id: int,
                      chat: dict[str, Any]) -> dict[str, Any]:
        for m in self.messages:
            if m.chat_id == chat_id and m.message_id == message_id:
                return {"message_id": message_id, "date": int(time.time()), "chat": chat,
                        "from": self._me(), "text": m.text}
        return {"message_id": message_id, "date": int(time.time()), "chat": chat,
                "from": {"id": 1, "is_bot": False, "first_name": "Someone"}, "text": "earlier"}

    # ================================================================== test side: faults

    def fail_next(self, method: str, *, code: int = 429, description: str | None = None,
                  retry_after: int | None = None, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with an error."""
        if description is None:
            description = {429: f"Too Many Requests: retry after {retry_after or 1}",
                           400: "Bad Request: something is wrong",
                           502: "Bad Gateway"}.get(code, "Error")
        if code == 429 and retry_after is None:
            retry_after = 1
        self._faults.setdefault(method, []).append(_Fault(code, description, retry_after, times))

    def slow(self, latency: float = 0.1, jitter: float = 0.05, flood_rate: float = 0.0,
             flood_retry_after: int = 1, seed: int | None = None) -> None:
        """Answer like Telegram over the internet from now on: see the module doc."""
        self.latency, self.jitter = latency, jitter
        self.flood_rate, self.flood_retry_after = flood_rate, flood_retry_after
        self._random, self._flood_random = random.Random(seed), random.Random(seed)

    # ================================================================== test side: reading

    def calls_of(self, *methods: str) -> list[Call]:
        return [c for c in self.calls if c.method in methods]

    def visible(self, chat_id: int, thread_id: int | str | None = "any") -> list[BotMessage]:
        """The bot's messages in a chat (a topic) that are still there, oldest first."""
        return [m for m in self.messages
                if m.chat_id == chat_id and not m.deleted
                and (thread_id == "any" or m.thread_id == thread_id)]

    def sent(self, chat_id: int | None = None) -> list[BotMessage]:
        """Every message the bot sent (deleted ones included)."""
        return [m for m in self.messages if chat_id is None or m.chat_id == chat_id]

    async def wait_for(self, predicate: Callable[[], T], within: float = 30.0,
                       what: str = "condition") -> T:
        """Poll ``predicate`` until it returns something truthy; return that."""
        deadline = time.monotonic() + within
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; bot calls:"
                                     f" {[c.method for c in self.calls][-30:]}")
            await asyncio.sleep(0.02)

    # ================================================================== the API

    async def _api(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params, files = await _read_params(request)
        self.calls.append(Call(method, params, files, time.time()))
        delay = self.latency + self._random.uniform(0, self.jitter) if self.latency or \
            self.jitter else 0.0
        if delay:
            await asyncio.sleep(delay / 2)
        try:
            return await self._answer(method, params, files)
        finally:
            if delay:
                await asyncio.sleep(delay / 2)

    async def _answer(self, method: str, params: dict[str, Any],
                      files: dict[str, tuple[str, bytes]]) -> web.StreamResponse:
        if self.down:
            self.refused += 1
            return web.Response(status=502, text="<html><center><h1>502 Bad Gateway</h1>"
                                "</center><hr><center>nginx</center></html>",
                                content_type="text/html")
        faults = self._faults.get(method)
        if faults:
            fault = faults[0]
            fault.times -= 1
            if fault.times <= 0:
                faults.pop(0)
            return _error(fault.code, fault.description, fault.retry_after)
        if method in FLOOD_METHODS and self.flood_rate and \
                self._flood_random.random() < self.flood_rate:
            self.floods += 1
            wait = self.flood_retry_after
            return _error(429, f"Too Many Requests: retry after {wait}", wait)
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _error(404, "Not Found")
        try:
            result = await handler(params, files)
        except _ApiError as exc:
            return _error(exc.code, exc.description)
        return web.json_response({"ok": True, "result": result})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        for stored_path, data in self._files.values():
            if stored_path == path:
                return web.Response(body=data)
        return web.Response(status=404)

    # -- methods

    async def _m_getMe(self, p: dict[str, Any], f: Any) -> dict[str, Any]:
        return {**self._me(), "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}

    async def _m_getUpdates(self, p: dict[str, Any], f: Any) -> list[dict[str, Any]]:
        offset = int(p.get("offset") or 0)
        limit = int(p.get("limit") or 100)
        timeout = float(p.get("timeout") or 0)
        if offset:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        deadline = time.monotonic() + timeout
        async with self._cond:
            while not self._updates and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(self._cond.wait(), timeout=left)
                except TimeoutError:
                    break
        return self._updates[:limit]

    async def _m_setMyCommands(self, p: dict[str, Any], f: Any) -> bool:
        self.commands = list(p.get("commands") or [])
        return True

    async def _m_getMyCommands(self, p: dict[str, Any], f: Any) -> list[dict[str, Any]]:
        return self.commands

    async def _m_deleteMyCommands(self, p: dict[str, Any], f: Any) -> bool:
        self.commands = []
        return True

    async def _m_setWebhook(self, p: dict[str, Any], f: Any) -> bool:
        self.webhook_url = str(p.get("url") or "")
        self.webhook_secret = str(p.get("secret_token") or "")
        return True

    async def _m_deleteWebhook(self, p: dict[str, Any], f: Any) -> bool:
        self.webhook_url = ""
        if p.get("drop_pending_updates"):
            self._updates.clear()
        return True

    async def _m_sendChatAction(self, p: dict[str, Any], f: Any) -> bool:
        return True

    async def _m_answerCallbackQuery(self, p: dict[str, Any], f: Any) -> bool:
        query_id = str(p.get("callback_query_id") or "")
        if query_id not in self._open_callbacks:  # answered already, or never asked
            raise _ApiError(400, "Bad Request: query is too old and response timeout expired"
                            " or query ID is invalid")
        self._open_callbacks.discard(query_id)
        self.callback_answers.append({"id": query_id, "text": str(p.get("text") or ""),
                                      "show_alert": bool(p.get("show_alert"))})
        return True

    async def _m_sendMessage(self, p: dict[str, Any], f: Any) -> dict[str, Any]:
        chat_id = int(p["chat_id"])
        text = str(p.get("text") or "")
        entities = list(p.get("entities") or [])
        self._check_text(text, entities, MAX_TEXT)
        message = BotMessage(chat_id, self._next_message_id(chat_id), _thread(p), "text",
                             text=text, entities=entities, history=[text],
                             silent=bool(p.get("disable_notification")),
                             reply_markup=p.get("reply_markup") or None)
        self.messages.append(message)
        self.drafts = [d for d in self.drafts if d[0] != chat_id]
        return self._message_json(message)

    async def _m_sendMessageDraft(self, p: dict[str, Any], f: Any) -> bool:
        if not self.drafts_enabled:
            raise _ApiError(404, "Not Found")
        chat_id = int(p["chat_id"])
        if self._chat(chat_id)["type"] != "private":
            raise _ApiError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
        draft_id = int(p.get("draft_id") or 0)
        if not draft_id:
            raise _ApiError(400, "Bad Request: draft_id must be non-zero")
        text = str(p.get("text") or "")
        self._check_text(text, list(p.get("entities") or []), MAX_TEXT, allow_empty=True)
        self.drafts.append((chat_id, draft_id, text))
        return True

    async def _m_editMessageText(self, p: dict[str, Any], f: Any) -> dict[str, Any]:
        message = self._find(p)
        if message is None or message.kind != "text":
            raise _ApiError(400, "Bad Request: message to edit not found")
        text = str(p.get("text") or "")
        entities = list(p.get("entities") or [])
        self._check_text(text, entities, MAX_TEXT)
        markup = p.get("reply_markup") or None
        if text == message.text and entities == message.entities and \
                markup == message.reply_markup:
            raise _ApiError(400, "Bad Request: message is not modified: specified new message"
                            " content and reply markup are exactly the same as a current"
                            " content and reply markup of the message")
        message.text, message.entities, message.reply_markup = text, entities, markup
        message.history.append(text)
        return self._message_json(message)

    async def _m_deleteMessage(self, p: dict[str, Any], f: Any) -> bool:
        message = self._find(p)
        if message is None:
            raise _ApiError(400, "Bad Request: message to delete not found")
        message.deleted = True
        return True

    async def _m_getFile(self, p: dict[str, Any], f: Any) -> dict[str, Any]:
        file_id = str(p.get("file_id") or "")
        if file_id not in self._files:
            raise _ApiError(400, "Bad Request: invalid file_id")
        path, data = self._files[file_id]
        return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(data),
                "file_path": path}

    async def _m_sendDocument(self, p: dict[str, Any], f: dict[str, tuple[str, bytes]]) -> Any:
        return self._media(p, f, "document")

    async def _m_sendPhoto(self, p: dict[str, Any], f: dict[str, tuple[str, bytes]]) -> Any:
        return self._media(p, f, "photo")

    async def _m_sendVoice(self, p: dict[str, Any], f: dict[str, tuple[str, bytes]]) -> Any:
        return self._media(p, f, "voice")

    async def _m_sendAudio(self, p: dict[str, Any], f: dict[str, tuple[str, bytes]]) -> Any:
        return self._media(p, f, "audio")

    # -- helpers

    def _media(self, p: dict[str, Any], files: dict[str, tuple[str, bytes]],
               kind: str) -> dict[str, Any]:
        chat_id = int(p["chat_id"])
        if kind not in files:
            raise _ApiError(400, f"Bad Request: there is no {kind} in the request")
        caption = str(p.get("caption") or "")
        self._check_text(caption, list(p.get("caption_entities") or []), MAX_CAPTION,
                         allow_empty=True, what="caption")
        filename, data = files[kind]
        message = BotMessage(chat_id, self._next_message_id(chat_id), _thread(p), kind,
                             caption=caption, filename=filename, data=data)
        self.messages.append(message)
        body = self._message_json(message)
        meta = self._add_file(data, kind + "s", "")
        if kind == "photo":
            body["photo"] = [{**meta, "width": 100, "height": 100}]
        elif kind == "voice":
            body["voice"] = {**meta, "duration": 1}
        elif kind == "audio":
            body["audio"] = {**meta, "duration": 1}
        else:
            body["document"] = {**meta, "file_name": filename}
        if caption:
            body["caption"] = caption
        return body

    def _check_text(self, text: str, entities: list[dict[str, Any]], limit: int, *,
                    allow_empty: bool = False, what: str = "message") -> None:
        if not text.strip() and not allow_empty:
            raise _ApiError(400, "Bad Request: message text is empty")
        if utf16_len(text) > limit:
            raise _ApiError(400, f"Bad Request: {what} is too long")
        if entities and self.reject_entities:
            raise _ApiError(400, "Bad Request: can't parse entities: unsupported start tag"
                            " at byte offset 0")
        size = utf16_len(text)
        for entity in entities:
            if entity["offset"] < 0 or entity["length"] <= 0 or \
                    entity["offset"] + entity["length"] > size:
                raise _ApiError(400, "Bad Request: can't parse entities: entity is out of"
                                " the text")

    def _find(self, p: dict[str, Any]) -> BotMessage | None:
        chat_id, message_id = int(p.get("chat_id") or 0), int(p.get("message_id") or 0)
        for m in self.messages:
            if m.chat_id == chat_id and m.message_id == message_id and not m.deleted:
                return m
        return None

    def _add_file(self, data: bytes, folder: str, ext: str) -> dict[str, Any]:
        number = next(self._file_ids)
        file_id = f"FILE{number:04d}"
        self._files[file_id] = (f"{folder}/file_{number}{ext}", data)
        return {"file_id": file_id, "file_unique_id": f"U{number:04d}", "file_size": len(data)}

    def _next_message_id(self, chat_id: int) -> int:
        counter = self._message_ids.setdefault(chat_id, itertools.count(1))
        return next(counter)

    def _chat(self, chat_id: int) -> dict[str, Any]:
        return self._chats.get(chat_id) or {
            "id": chat_id, "type": "private" if chat_id > 0 else "supergroup",
            **({"first_name": "Owner"} if chat_id > 0 else {"title": "Group"}),
        }

    def _me(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Claude",
                "username": self.username}

    def _message_json(self, m: BotMessage) -> dict[str, Any]:
        body: dict[str, Any] = {"message_id": m.message_id, "date": int(time.time()),
                                "chat": self._chat(m.chat_id), "from": self._me()}
        if m.thread_id is not None:
            body["message_thread_id"] = m.thread_id
            body["is_topic_message"] = True
        if m.kind == "text":
            body["text"] = m.text
            if m.entities:
                body["entities"] = m.entities
            if m.reply_markup:
                body["reply_markup"] = m.reply_markup
        return body


class _ApiError(Exception):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def _error(code: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=code)


def _thread(p: dict[str, Any]) -> int | None:
    value = p.get("message_thread_id")
    return int(value) if value not in (None, "") else None


async def _read_params(request: web.Request) -> tuple[dict[str, Any],
                                                      dict[str, tuple[str, bytes]]]:
    params: dict[str, Any] = {}
    files: dict[str, tuple[str, bytes]] = {}
    if request.content_type == "application/json":
        raw = await request.json()
        return (dict(raw) if isinstance(raw, dict) else {}), files
    if request.method == "GET":
        form: Any = request.query
    else:
        form = await request.post()
    for name, value in form.items():
        if isinstance(value, web.FileField):
            files[name] = (value.filename, value.file.read())
        elif name in _STRING_PARAMS:
            params[name] = value
        else:
            try:
                params[name] = json.loads(value)
            except ValueError:
                params[name] = value
    return params, files
