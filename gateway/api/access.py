"""The access log: one INFO line per HTTP request, written when the response is complete.

::

    POST /v1/chat/completions 200 1.204s conversation=auto:3f2a… stream
    GET /v1/models 401 0.001s conversation=-

Method, path (URL-encoded as received, without the query string, so nothing a client put in
``?key=…`` is written, and no newline can be smuggled into the log), status, duration and the
``X-Conversation-Id`` of the response. A stream is logged when it ends, with its total
duration; one that ended with an in-stream error says so (``stream error=<code>``), since its
HTTP status was already 200. Bodies, headers and keys are never logged.

:func:`access_middleware` is the outermost middleware, so requests refused by the guard,
the key check or the body limit are logged too. ``logging.access_log = false`` leaves it out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: set by a handler whose stream ended with an in-stream error: that error's code
STREAM_ERROR: web.RequestKey[str] = web.RequestKey("access_stream_error", str)
#: the status logged when the client went away before a response was made
CLIENT_GONE = 499
MAX_PATH_CHARS = 200


def _path(request: web.Request) -> str:
    path = request.rel_url.raw_path
    return path if len(path) <= MAX_PATH_CHARS else path[:MAX_PATH_CHARS] + "…"


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_GONE
        raise
    finally:
        duration = time.monotonic() - started
        conversation = response.headers.get("X-Conversation-Id") if response else None
        extra = ""
        if response is not None and response.content_type == "text/event-stream":
            error = request.get(STREAM_ERROR)
            extra = f" stream error={error}" if error else " stream"
        log.info(
            "%s %s %d %.3fs conversation=%s%s",
            request.method[:16], _path(request), status, duration, conversation or "-", extra,
        )
