"""HTTP plumbing every API route module shares: the error and auth middlewares, ``ApiError``,
body reading with its size limit, and the ``server_busy`` refusal of a full request slot.

``routes.py`` (chat completions), ``audio.py`` and later API dialects import it; it imports
none of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.api.config import ApiConfig
from gateway.api.convert import HttpError, http_error_from_exc, request_error
from gateway.config import API_KEYS_ENV_VAR
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

CONFIG: web.AppKey[ApiConfig] = web.AppKey("api_config", ApiConfig)
SERVER_BUSY_RETRY_AFTER = 2
#: the most of an oversized body that is read and discarded so the client sees the 413
DRAIN_LIMIT_BYTES = 256 * 1024 * 1024


class ApiError(Exception):
    """Raised inside handlers; the error middleware turns it into a JSON response."""

    def __init__(self, error: HttpError, headers: dict[str, str] | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.headers = headers or {}


#: the error body a request gets, when its dialect's clients expect another shape than
#: OpenAI's (the Anthropic Messages API's ``{"type": "error", ...}``): each returns a body or
#: None, the first body wins; registered by the dialect at app creation
ErrorBody = Callable[[web.Request, HttpError], dict[str, Any] | None]
ERROR_BODIES: web.AppKey[list[ErrorBody]] = web.AppKey("api_error_bodies", list)


def error_response(
    error: HttpError,
    headers: dict[str, str] | None = None,
    *,
    request: web.Request | None = None,
) -> web.Response:
    """The JSON response of ``error``; with ``request``, in the shape its dialect expects
    (:data:`ERROR_BODIES`), else OpenAI's."""
    body: dict[str, Any] | None = None
    if request is not None:
        for shape in request.app.get(ERROR_BODIES, ()):
            body = shape(request, error)
            if body is not None:
                break
    return web.json_response(
        error.body() if body is None else body,
        status=error.status,
        headers={**error.headers(), **(headers or {})},
    )


# --------------------------------------------------------------------------- middlewares

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.error, exc.headers, request=request)
    except GatewayError as exc:
        return error_response(http_error_from_exc(exc), request=request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"Unknown path: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 413:
            limit = request.app[CONFIG].max_body_bytes
            message = f"The request body is larger than the limit of {mb(limit)}"
        else:
            message = exc.reason
        code = _STATUS_CODES.get(exc.status, "http_error")
        return error_response(request_error(exc.status, code, message), request=request)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(
            request_error(500, "internal_error", "Internal gateway error; see the gateway log"),
            request=request,
        )


def mb(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


def _offered_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-Api-Key") or None


def key_ok(request: web.Request) -> bool:
    """True when no keys are configured, or the request offers one of them."""
    keys = request.app[CONFIG].api_keys
    if not keys:
        return True
    offered = _offered_key(request)
    good = False
    if offered is not None:
        candidate = offered.encode()
        for key in keys:  # no early exit: the time taken does not depend on which key
            good |= hmac.compare_digest(candidate, key.encode())
    return good


def key_owner(request: web.Request) -> str:
    """Who made a request, for what it may read back later (a stored response): a hash of
    the gateway key it offered, or ``""`` when no keys are configured."""
    offered = _offered_key(request)
    if not request.app[CONFIG].api_keys or offered is None:
        return ""
    return hashlib.sha256(offered.encode()).hexdigest()[:32]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/v1/") and not key_ok(request):
        raise ApiError(
            request_error(
                401,
                "invalid_api_key",
                "Missing or wrong gateway API key: send 'Authorization: Bearer <key>' (or "
                f"'X-Api-Key: <key>') with one of the keys set in {API_KEYS_ENV_VAR}.",
            )
        )
    return await handler(request)


async def drain(request: web.Request, already: int) -> None:
    total = already
    async for chunk in request.content.iter_any():
        total += len(chunk)
        if total > DRAIN_LIMIT_BYTES:
            break


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, or a 413 once it exceeds ``limit`` (read to the end, so the client
    gets the response instead of a reset connection)."""
    too_large = ApiError(
        request_error(
            413,
            "request_too_large",
            f"The request body is larger than the limit of {mb(limit)} (server.max_body_mb)",
        )
    )
    length = request.content_length
    if length is not None and length > limit:
        await drain(request, 0)
        raise too_large
    chunks: list[bytes] = []  # joined once at the end: a 1 MB body is copied once
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            await drain(request, size)
            raise too_large
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def refuse_when_full(request: web.Request, active: int, limit: int, what: str) -> None:
    """Raise 503 ``server_busy`` (its body read and dropped) when ``active`` of ``limit``
    request slots are taken; ``what`` names them ("requests", "audio requests")."""
    if active >= limit:
        await drain(request, 0)
        raise ApiError(
            request_error(
                503,
                "server_busy",
                f"The gateway is already serving {limit} {what} "
                "(server.max_concurrent_requests); retry shortly.",
                SERVER_BUSY_RETRY_AFTER,
            )
        )
