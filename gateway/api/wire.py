"""Wire models every OpenAI-shaped endpoint shares: the error body, models, health.

Response models are documentation and test oracles: the handlers build their JSON with
plain dicts on the hot path, and the tests validate real responses against the schemas
these models generate (:mod:`gateway.api.openapi`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel


class ErrorDetail(BaseModel):
    model_config = ConfigDict(title="ErrorDetail")

    message: str
    type: str
    code: str | None
    param: str | None = None


class Error(BaseModel):
    """OpenAI error JSON: ``{"error": {"message", "type", "code", "param"}}``."""

    error: ErrorDetail = Field(description="What went wrong; code is the stable name.")


# --------------------------------------------------------------------------- models, health


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


HealthStatus = Literal["ok", "degraded", "unavailable", "error"]


class Health(BaseModel):
    """``/health`` with a key (or when no keys are configured). Further sections (e.g.
    ``scheduler``) are added by the application."""

    model_config = ConfigDict(extra="allow")

    status: HealthStatus = Field(
        description="degraded: up, but turns would fail (see problems); error: the engine's "
        "status itself failed."
    )
    version: str
    problems: list[str] = Field(
        default_factory=list, description="Why the status is degraded, each with its fix."
    )
    cli_path: str | None
    cli_version: str | None
    live_processes: int = Field(ge=0)
    sessions: int = Field(ge=0)
    running_turns: int = Field(ge=0)
    rate_limit: dict[str, Any] | None = Field(
        description="The last rate-limit status the CLI reported."
    )
    conversations: dict[str, dict[str, int]] | None = Field(
        default=None,
        description="lineage: chat requests since start by how their history related to "
        "their conversation (new, continuation, regenerate, edit, compaction, diverged).",
    )


class HealthPublic(BaseModel):
    """``/health`` without a key while GATEWAY_API_KEYS is set: status and version only."""

    model_config = ConfigDict(extra="forbid")

    status: HealthStatus
    version: str


class HealthReply(RootModel[Health | HealthPublic]):
    pass
