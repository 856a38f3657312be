"""The status page and the JSON it reads: what the gateway is doing, at a glance.

* ``GET /`` (and ``/ui``): the page — plain HTML, CSS and a little JavaScript shipped in the
  package (``gateway/api/ui/``), no build step, nothing fetched from elsewhere. It holds no
  data itself; its script polls ``/v1/status`` every few seconds. A strict
  ``Content-Security-Policy`` allows only the gateway's own script, style and requests.
* ``GET /v1/status``: the status as JSON (:class:`StatusReport`; documented in
  ``/openapi.json``): the CLI and its login, uptime, the config file, conversations with
  their state (idle / starting / running with the tool and since when / queued), live
  processes with their memory, the rate-limit window, scheduled jobs, the last errors
  and notices. No message text.
* ``GET /v1/status/transcript?conversation=<key>``: the last messages of one conversation,
  shortened — only when the owner expands it on the page.
* ``POST /v1/status/stop`` ``{"conversation": "<key>"}``: interrupt its running turn.
* ``POST /v1/status/run`` ``{"job": "<name>"}``: run a scheduled job now.

Access is the API's: the guard (Host, Origin: a page of another site cannot send these
POSTs, and a form cannot send JSON), then the API key under ``/v1/`` when keys are set —
the page asks for one and keeps it in the tab's ``sessionStorage``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway import __version__
from gateway.api.convert import request_error
from gateway.api.exchange import ENGINE, read_json
from gateway.api.fields import from_validation_error, invalid
from gateway.api.guard import navigable
from gateway.api.http import ApiError
from gateway.api.openapi import JSON, STRING, Operation, Param, Reply, error_reply, json_reply
from gateway.engine.activity import TurnActivity
from gateway.engine.api import EngineAPI
from gateway.engine.approvals import ApprovalRequest
from gateway.engine.events import SessionInfo
from gateway.scheduler import JobError, JobView, Scheduler

log = logging.getLogger(__name__)

#: the most conversations one status lists (busy ones first, then by last activity)
MAX_CONVERSATIONS = 50
#: the most errors and notices one status lists
MAX_EVENTS = 30
#: the most transcript messages a page may ask for
MAX_TRANSCRIPT = 50
#: the usage endpoint the page reads when it is served (hours: three days of the chart)
USAGE_PATH = "/v1/usage"
USAGE_URL = USAGE_PATH + "?hours=72"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
#: the page's files: URL name -> content type
ASSETS = {
    "index.html": "text/html",
    "status.js": "text/javascript",
    "status.css": "text/css",
    "icon.svg": "image/svg+xml",
}


@dataclass
class StatusSources:
    """What the status needs besides the engine; ``gateway.app`` fills it in."""

    scheduler: Scheduler | None = None
    #: ``claude auth status`` as JSON, None while it is not known yet
    login: Callable[[], dict[str, Any] | None] = lambda: None
    config_file: str | None = None
    started_at: float = field(default_factory=time.time)


SOURCES: web.AppKey[StatusSources] = web.AppKey("status_sources", StatusSources)


# --------------------------------------------------------------------------- wire format


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


_M = TypeVar("_M", bound=_Model)


class CliStatus(_Model):
    path: str | None
    version: str | None
    source: str | None
    logged_in: bool | None  # None: not checked yet
    auth: str | None  # how it is logged in (e.g. "claude.ai", "api key")


class Tokens(_Model):
    input: int
    output: int
    cache_read: int
    cache_creation: int


class WaitingApproval(_Model):
    id: str
    tool: str
    summary: str
    since: float
    timeout_s: float


class ConversationStatus(_Model):
    key: str
    frontend: str  # the part of the key before the first ":" (openai, telegram, cron, …)
    project: str  # its project's name ("default" = claude.workspace; see [[projects]])
    folder: str  # Claude Code's working directory (the project's folder or its worktree)
    model: str | None
    state: Literal["idle", "starting", "running", "waiting_approval", "queued"]
    #: the tool call waiting for a person's yes or no (state waiting_approval)
    approval: WaitingApproval | None
    turn_started_at: float | None
    tool: str | None
    tool_summary: str | None
    tool_started_at: float | None
    queued: int
    turns: int
    tokens: Tokens
    cost_usd: float
    last_activity: float
    live: bool
    pid: int | None


class ProcessStatus(_Model):
    pid: int | None
    conversation: str | None  # None: a pre-started spare
    model: str | None
    rss_bytes: int | None


class ProcessesStatus(_Model):
    max_live: int
    spares_wanted: int
    spares: int
    total_rss_bytes: int
    items: list[ProcessStatus]


class RateLimitWindow(_Model):
    status: str
    type: str | None
    resets_at: float | None
    utilization: float | None
    seen_at: float


class LastRun(_Model):
    status: str
    trigger: str
    started_at: float
    duration_ms: int | None
    cost_usd: float | None
    error: str | None


class JobStatus(_Model):
    name: str
    source: str
    cron: str
    target: str
    enabled: bool
    running: bool
    held: str | None  # why it cannot run (not scheduled), if it cannot
    next_run: float | None
    last_run: LastRun | None


class EventStatus(_Model):
    at: float
    conversation: str
    origin: str
    level: Literal["error", "notice"]
    kind: str
    message: str


class StatusReport(_Model):
    version: str
    now: float
    started_at: float
    uptime_s: float
    config_file: str | None
    #: where the usage and limits are read (per hour, today, the limit windows), when
    #: the gateway serves them
    usage_url: str | None
    cli: CliStatus
    running_turns: int
    queued_turns: int
    conversations_total: int
    conversations: list[ConversationStatus]
    processes: ProcessesStatus
    rate_limit: RateLimitWindow | None
    scheduler_enabled: bool
    jobs: list[JobStatus]
    events: list[EventStatus]


class StopRequest(_Model):
    conversation: str


class RunRequest(_Model):
    job: str


class Stopped(_Model):
    conversation: str
    stopped: bool


class Started(_Model):
    job: str
    started: bool


class TranscriptMessage(_Model):
    role: str
    text: str


class Transcript(_Model):
    conversation: str
    messages: list[TranscriptMessage]


# --------------------------------------------------------------------------- building


State = Literal["idle", "starting", "running", "waiting_approval", "queued"]


def _state(
    info: SessionInfo | None, turn: TurnActivity | None, approval: ApprovalRequest | None
) -> State:
    if approval is not None:
        return "waiting_approval"
    if turn is not None:
        return "running"
    if info is not None and info.busy:
        return "starting"  # left the queue, waiting for a turn slot or a process
    if info is not None and info.queued:
        return "queued"
    return "idle"


def _conversation(
    info: SessionInfo, turn: TurnActivity | None, approval: ApprovalRequest | None = None
) -> ConversationStatus:
    u = info.usage
    return ConversationStatus(
        key=info.key,
        frontend=info.key.split(":", 1)[0],
        project=info.project,
        folder=info.cwd,
        model=info.effective_model,
        state=_state(info, turn, approval),
        approval=None if approval is None else WaitingApproval(
            id=approval.id, tool=approval.tool, summary=approval.summary,
            since=approval.created_at, timeout_s=approval.timeout),
        turn_started_at=turn.started_at if turn else None,
        tool=turn.tool if turn else None,
        tool_summary=turn.tool_summary if turn else None,
        tool_started_at=turn.tool_started_at if turn else None,
        queued=info.queued,
        turns=info.turns,
        tokens=Tokens(input=u.input_tokens, output=u.output_tokens,
                      cache_read=u.cache_read_tokens, cache_creation=u.cache_creation_tokens),
        cost_usd=info.cost_usd,
        last_activity=max(info.last_used_at, turn.started_at if turn else 0.0),
        live=info.live,
        pid=info.pid,
    )


def _job(view: JobView) -> JobStatus:
    spec, last = view.spec, view.last_run
    return JobStatus(
        name=spec.name, source=spec.source.value, cron=spec.cron, target=spec.target,
        enabled=spec.enabled, running=view.running, held=view.problem,
        next_run=view.next_run.timestamp() if view.next_run else None,
        last_run=None if last is None else LastRun(
            status=last.status, trigger=last.trigger, started_at=last.started_at,
            duration_ms=last.duration_ms, cost_usd=last.cost_usd, error=last.error,
        ),
    )


def _cli(engine: EngineAPI, sources: StatusSources) -> CliStatus:
    status = engine.status()
    login = sources.login()
    auth = None
    if login:
        raw = login.get("authMethod") or login.get("apiKeySource")
        auth = str(raw) if raw else None
    return CliStatus(
        path=status.cli_path, version=status.cli_version, source=status.cli_source,
        logged_in=None if login is None else bool(login.get("loggedIn")), auth=auth,
    )


async def build_status(
    engine: EngineAPI, sources: StatusSources, usage_url: str | None = None
) -> StatusReport:
    now = time.time()
    status = engine.status()
    turns = engine.activity()
    infos = {info.key: info for info in await engine.list_sessions()}
    newest_first = sorted(engine.pending_approvals(), key=lambda a: -a.created_at)
    waiting = {a.key: a for a in newest_first}  # a conversation's oldest request wins
    rows = [_conversation(info, turns.get(key), waiting.get(key)) for key, info in infos.items()]
    rows.sort(key=lambda c: (c.state == "idle", -c.last_activity))
    report = await engine.processes()
    rl = status.rate_limit
    scheduler = sources.scheduler
    return StatusReport(
        version=__version__,
        now=now,
        started_at=sources.started_at,
        uptime_s=max(0.0, now - sources.started_at),
        config_file=sources.config_file,
        usage_url=usage_url,
        cli=_cli(engine, sources),
        running_turns=status.running_turns,
        queued_turns=status.queued_turns,
        conversations_total=len(rows),
        conversations=rows[:MAX_CONVERSATIONS],
        processes=ProcessesStatus(
            max_live=report.max_live, spares_wanted=report.spares_wanted,
            spares=report.spares,
            total_rss_bytes=sum(p.rss_bytes or 0 for p in report.processes),
            items=[ProcessStatus(pid=p.pid, conversation=p.key, model=p.model,
                                 rss_bytes=p.rss_bytes) for p in report.processes],
        ),
        rate_limit=None if rl is None else RateLimitWindow(
            status=rl.status, type=rl.rate_limit_type, resets_at=rl.resets_at,
            utilization=rl.utilization, seen_at=rl.seen_at,
        ),
        scheduler_enabled=bool(scheduler and scheduler.config.enabled),
        jobs=[_job(view) for view in scheduler.jobs()] if scheduler else [],
        events=[
            EventStatus(at=e.at, conversation=e.key, origin=e.origin,
                        level=e.level, kind=e.kind, message=e.message)  # type: ignore[arg-type]
            for e in engine.recent_events(MAX_EVENTS)
        ],
    )


# --------------------------------------------------------------------------- handlers


def _parser(model: type[_M]) -> Callable[[Any], _M]:
    def parse(body: Any) -> _M:
        if not isinstance(body, dict):
            raise invalid("body", "must be a JSON object")
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            raise from_validation_error(exc, body) from None

    return parse


def _not_found(code: str, message: str) -> ApiError:
    return ApiError(request_error(404, code, message))


async def status_json(request: web.Request) -> web.Response:
    served = any(r.canonical == USAGE_PATH for r in request.app.router.resources())
    report = await build_status(request.app[ENGINE], request.app[SOURCES],
                                USAGE_URL if served else None)
    return web.json_response(report.model_dump(mode="json"))


async def stop(request: web.Request) -> web.Response:
    body = await read_json(request, _parser(StopRequest))
    engine = request.app[ENGINE]
    if await engine.describe(body.conversation) is None and body.conversation not in (
        engine.activity()
    ):
        raise _not_found("conversation_not_found",
                         f"conversation: no conversation {body.conversation!r}")
    stopped = await engine.interrupt(body.conversation)
    log.info("status page: stop %s -> %s", body.conversation, stopped)
    return web.json_response(Stopped(conversation=body.conversation, stopped=stopped).model_dump())


async def run_now(request: web.Request) -> web.Response:
    body = await read_json(request, _parser(RunRequest))
    scheduler = request.app[SOURCES].scheduler
    spec = scheduler.get(body.job) if scheduler else None
    if scheduler is None or spec is None:
        raise _not_found("job_not_found", f"job: no scheduled job {body.job!r}")
    try:
        started = scheduler.run_now(spec)
    except JobError as exc:
        raise ApiError(request_error(
            409, "job_held", f"job: {spec.name} cannot run: {exc.field}: {exc}")) from None
    log.info("status page: run %s now -> %s", spec.name, started)
    return web.json_response(Started(job=spec.name, started=started).model_dump())


async def transcript(request: web.Request) -> web.Response:
    key = request.query.get("conversation", "")
    if not key:
        raise invalid("conversation", "is required (a conversation key from /v1/status)")
    raw_limit = request.query.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_TRANSCRIPT:
        raise invalid("limit", f"must be a whole number from 1 to {MAX_TRANSCRIPT}")
    engine = request.app[ENGINE]
    if await engine.describe(key) is None:
        raise _not_found("conversation_not_found", f"conversation: no conversation {key!r}")
    entries = await engine.transcript(key, int(raw_limit))
    body = Transcript(conversation=key, messages=[
        TranscriptMessage(role=e.role, text=e.text) for e in entries])
    return web.json_response(body.model_dump(mode="json"))


def _assets() -> dict[str, bytes]:
    folder = resources.files("gateway.api").joinpath("ui")
    return {name: folder.joinpath(name).read_bytes() for name in ASSETS}


_FILES: web.AppKey[dict[str, bytes]] = web.AppKey("status_files", dict)


def _files(request: web.Request) -> dict[str, bytes]:
    files = request.app.get(_FILES)
    if files is None:
        files = request.app[_FILES] = _assets()
    return files


@navigable
async def page(request: web.Request) -> web.Response:
    return web.Response(body=_files(request)["index.html"], content_type="text/html",
                        headers=PAGE_HEADERS)


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.Response(body=_files(request)[name], content_type=ASSETS[name],
                        headers=PAGE_HEADERS)


def setup_status(app: web.Application) -> None:
    """The status page's sources on ``app`` (``gateway.app`` fills them in); its files are
    read once, at start-up, so a broken install fails at once."""
    app[SOURCES] = StatusSources()
    app[_FILES] = _assets()


_PAGE = Reply("The status page (it holds no data; its script reads /v1/status).",
              {"text/html": STRING})
_CONVERSATION_404 = error_reply("No such conversation (code conversation_not_found).")

OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/", page, "statusPage", "The status page.", public=True,
              responses={200: _PAGE}),
    Operation("GET", "/ui", page, "statusPageUi", "The status page (same as /).", public=True,
              responses={200: _PAGE}),
    Operation(
        "GET", "/ui/{asset}", asset, "statusPageFile", "The status page's script, style, icon.",
        public=True,
        params=(Param("asset", "status.js, status.css, icon.svg or index.html.",
                      {"enum": list(ASSETS)}, where="path"),),
        responses={200: Reply("The file.", {t: STRING for t in sorted(set(ASSETS.values()))}),
                   404: error_reply("No such file.")},
    ),
    Operation(
        "GET", "/v1/status", status_json, "status",
        "What the gateway is doing: CLI, conversations and their state, processes, limits, "
        "scheduled jobs, the last errors and notices (no message text).",
        responses={200: json_reply("The status.", StatusReport)},
    ),
    Operation(
        "GET", "/v1/status/transcript", transcript, "statusTranscript",
        "The last messages of one conversation, shortened (the page's expanded view).",
        params=(Param("conversation", "A conversation key from /v1/status.", where="query",
                      required=True),
                Param("limit", f"How many messages, 1 to {MAX_TRANSCRIPT} (default 20).",
                      {"type": "integer", "minimum": 1, "maximum": MAX_TRANSCRIPT},
                      where="query")),
        responses={200: json_reply("Its messages, oldest first.", Transcript),
                   400: error_reply("A missing or bad parameter; the message names it."),
                   404: _CONVERSATION_404},
    ),
    Operation(
        "POST", "/v1/status/stop", stop, "statusStop",
        "Stop the running turn of a conversation (its client gets 409 interrupted).",
        body={JSON: StopRequest},
        responses={200: json_reply("Whether a turn was running and was stopped.", Stopped),
                   400: error_reply("A bad body; the message names the field."),
                   404: _CONVERSATION_404},
    ),
    Operation(
        "POST", "/v1/status/run", run_now, "statusRunJob",
        "Run a scheduled job now (no jitter).",
        body={JSON: RunRequest},
        responses={200: json_reply("Whether a run started (false: one is running).", Started),
                   400: error_reply("A bad body; the message names the field."),
                   404: error_reply("No such job (code job_not_found)."),
                   409: error_reply("The job is held; the message says why (code job_held).")},
    ),
)
