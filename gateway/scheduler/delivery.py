"""How a scheduled answer reaches its target: a tiny protocol the chat bridges implement.

A bridge registers one :data:`Deliverer` for its prefix (``telegram``, ``discord``) with
:meth:`gateway.scheduler.Scheduler.register_target`; the scheduler calls it with a
:class:`Delivery` after every run. The bridge splits and formats the text the way it does
its own answers. ``log`` is built in: the answer is written to the gateway's log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.engine import TurnError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """The outcome of one run, for its target. Exactly one of ``text``/``error`` is set."""

    job: str  # the job's name
    target: str  # "telegram:123", "discord:456", "log"
    text: str | None = None
    error: TurnError | None = None
    #: "cron", "catch-up" (a missed run made up at start-up) or "manual" (/schedule run)
    trigger: str = "cron"


#: ``await deliver(delivery)``; raises if the answer did not go out.
Deliverer = Callable[[Delivery], Awaitable[None]]


async def deliver_to_log(delivery: Delivery) -> None:
    """The ``log`` target: the owner asked for the answer in the log, so it is written there."""
    if delivery.error is not None:
        log.warning(
            "schedule %s failed: %s: %s",
            delivery.job, delivery.error.kind.value, delivery.error.message,
        )
    else:
        log.info("schedule %s answered:\n%s", delivery.job, delivery.text or "(empty answer)")
