"""The first check of every request: is it addressed to this gateway, and from which page?

The agent behind the API has a shell, so a web page the owner merely visits must not be able
to start a turn or read an answer. Browsers say where a request comes from (``Origin``,
``Sec-Fetch-Site``); clients that are not browsers (curl, the OpenAI SDKs, OpenClaw,
LiteLLM) send neither and pass unchanged. :func:`guard_middleware` runs before
authentication, before any body is read and before any engine work, in this order:

1. **Host** (defeats DNS rebinding, where a page's own name is pointed at 127.0.0.1): the
   ``Host`` header must name a loopback address (``127.0.0.1``, ``localhost``, ``[::1]``,
   with or without a port), the address the server is bound to, or one of
   ``server.allowed_hosts``; anything else is 421 ``host_not_allowed`` (421, not 403, so a
   misconfigured client such as OpenClaw does not disable the provider).
2. **Origin**: a request carrying ``Origin`` is served only when that origin is the
   gateway's own (``http://<the Host it was reached at>``) or is listed in
   ``server.allowed_origins``; else 403 ``forbidden_origin``. So is one marked
   ``Sec-Fetch-Site: cross-site`` or ``same-site`` without an ``Origin`` -- except a
   top-level navigation (a followed link, ``Sec-Fetch-Mode: navigate`` and
   ``Sec-Fetch-Dest: document``) to a page marked :func:`navigable`: the status page holds
   no data (its script reads the API same-origin) and forbids framing, so a link to it from
   another site is harmless, while the API's JSON stays refused even to a followed link.
3. **CORS** for a listed origin: a preflight ``OPTIONS`` is answered here (204 with the
   allowed methods and headers, ``Access-Control-Allow-Origin`` echoing the origin, never
   ``*``), and every response to it carries ``Access-Control-Allow-Origin`` and exposes
   ``X-Conversation-Id`` (:func:`cors_headers`, an ``on_response_prepare`` signal, so
   streams and error responses get them too).

Content types are checked per route by :func:`accepts`: a JSON endpoint takes only
``application/json`` (any charset), the multipart one only ``multipart/form-data``;
anything else (``text/plain``, ``application/x-www-form-urlencoded`` and ``multipart`` are
what a page can send without a preflight) is 415 ``unsupported_media_type`` before the
handler reads a byte of the body.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.api.config import ApiConfig
from gateway.api.convert import HttpError, request_error
from gateway.api.http import error_response
from gateway.config import is_loopback_host, normalize_origin, split_host_port

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

JSON = "application/json"
MULTIPART = "multipart/form-data"

ALLOWED_METHODS = "GET, POST, OPTIONS"
#: request headers an allowed page may send (plus whatever else its preflight asks for,
#: e.g. the ``x-stainless-*`` headers of the OpenAI JavaScript SDK)
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "X-Api-Key",
    "X-Conversation-Id",
    "X-Session-Id",
    "X-Stream-Mode",
    "X-Tool-Mode",
    "X-Permission-Mode",
    "X-Project",
)
#: response headers an allowed page's script may read
EXPOSED_HEADERS = "X-Conversation-Id, Retry-After, X-Voice-Engine"
PREFLIGHT_MAX_AGE = 600
#: ``Sec-Fetch-Site`` values that mean "a page of some other origin sent this"
FOREIGN_SITES = ("cross-site", "same-site")
_NAVIGABLE = "_guard_navigable"

#: the listed origin a request came from (it gets the CORS headers)
_CORS_ORIGIN: web.RequestKey[str] = web.RequestKey("cors_origin", str)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _refuse(request: web.Request, status: int, code: str, message: str) -> web.Response:
    error: HttpError = request_error(status, code, message)
    return error_response(error, request=request)  # in the shape of the request's dialect


def _check_host(request: web.Request, config: ApiConfig) -> web.Response | None:
    raw = request.headers.get("Host", "")
    try:
        host, _ = split_host_port(raw.strip())
    except ValueError:
        host = ""
    if host and (is_loopback_host(host) or host in config.allowed_hosts):
        return None
    log.warning("refused %s %s: Host %r is not allowed", request.method, request.path, raw[:100])
    shown = raw[:100] if raw else "(none)"
    hint = f'add "{host}" to server.allowed_hosts' if host else "send a valid Host header"
    return _refuse(
        request,
        421,
        "host_not_allowed",
        f"The request is addressed to Host {shown}, which is not this gateway: only loopback "
        "(127.0.0.1, localhost, [::1]), the address it is bound to and server.allowed_hosts "
        "are served. This refuses web pages that point their own name at this machine (DNS "
        f"rebinding). If you reach the gateway by this name on purpose, {hint}.",
    )


def _own_origin(request: web.Request) -> str | None:
    try:
        return normalize_origin(f"{request.scheme}://{request.headers.get('Host', '')}")
    except ValueError:
        return None


def navigable(handler: Handler) -> Handler:
    """Mark a GET handler whose page another site may link to (see the module)."""
    setattr(handler, _NAVIGABLE, True)
    return handler


def _followed_link(request: web.Request) -> bool:
    """A top-level navigation to a :func:`navigable` page (a link followed, not a fetch, an
    ``<img>`` or a frame: the browser says which in ``Sec-Fetch-Mode``/``-Dest``)."""
    headers = request.headers
    return (
        request.method in ("GET", "HEAD")
        and headers.get("Sec-Fetch-Mode", "").lower() == "navigate"
        and headers.get("Sec-Fetch-Dest", "").lower() == "document"
        and bool(getattr(request.match_info.handler, _NAVIGABLE, False))
    )


def _check_origin(
    request: web.Request, config: ApiConfig
) -> tuple[str | None, web.Response | None]:
    """``(listed origin or None, refusal or None)``."""
    origin = request.headers.get("Origin")
    if origin is None:
        site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
        if site in FOREIGN_SITES and not _followed_link(request):
            log.warning("refused %s %s: Sec-Fetch-Site %s without Origin",
                        request.method, request.path, site)
            return None, _refuse(
                request,
                403,
                "forbidden_origin",
                f"A browser request from another site (Sec-Fetch-Site: {site}) is refused: a "
                "web page must not drive the agent. List the page's origin in "
                "server.allowed_origins to let it in.",
            )
        return None, None
    try:
        normalized = normalize_origin(origin)
    except ValueError:
        normalized = None
    if normalized is not None and normalized == _own_origin(request):
        return None, None
    if normalized is not None and normalized in config.allowed_origins:
        return normalized, None
    log.warning("refused %s %s from Origin %r", request.method, request.path, origin[:100])
    hint = (
        f'If you trust that page, add "{normalized}" to server.allowed_origins.'
        if normalized is not None
        else "Only pages with an http(s) origin can be allowed (server.allowed_origins)."
    )
    return None, _refuse(
        request,
        403,
        "forbidden_origin",
        f"Requests from the web page at {origin[:100]} are refused: a page open in a browser "
        f"must not drive the agent. {hint}",
    )


def _preflight(request: web.Request, origin: str) -> web.Response:
    allowed = list(ALLOWED_HEADERS)
    known = {h.lower() for h in allowed}
    for name in request.headers.get("Access-Control-Request-Headers", "").split(","):
        name = name.strip()
        if name and _TOKEN.fullmatch(name) and name.lower() not in known:
            allowed.append(name)
            known.add(name.lower())
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Allow-Headers": ", ".join(allowed),
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }
    if request.headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
        headers["Access-Control-Allow-Private-Network"] = "true"  # a public page the owner listed
    return web.Response(status=204, headers=headers)


def guard_middleware(config: ApiConfig) -> Middleware:
    """The middleware that must come first in the application's list (see the module)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = _check_host(request, config)
        if refusal is not None:
            return refusal
        origin, refusal = _check_origin(request, config)
        if refusal is not None:
            return refusal
        if origin is not None:
            request[_CORS_ORIGIN] = origin
            if request.method == "OPTIONS":
                return _preflight(request, origin)
        return await handler(request)

    return guard


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the CORS headers of a response to a listed origin."""
    if "Origin" in request.headers:
        vary = response.headers.get("Vary", "")
        if "origin" not in vary.lower():
            response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
    origin = request.get(_CORS_ORIGIN)
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS


def accepts(media_type: str) -> Callable[[Handler], Handler]:
    """Wrap a POST handler so a body of another media type is 415, before it runs."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            if request.content_type == media_type and "Content-Type" in request.headers:
                return await handler(request)
            got = request.headers.get("Content-Type", "").strip()
            return _refuse(
                request,
                415,
                "unsupported_media_type",
                f"{request.path} takes a {media_type} body (send 'Content-Type: {media_type}'),"
                f" not {got[:100] or 'a body without a Content-Type'}.",
            )

        return checked

    return wrap
