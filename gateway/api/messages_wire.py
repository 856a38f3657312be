"""The Anthropic Messages API wire format as pydantic models (requests and responses).

Requests are validated with :func:`parse_messages_request` (every problem a 400 naming the
field, e.g. ``messages[0].content[1].source.data: is required``); responses are built
from the models here, so the bodies, the stream events and the OpenAPI document
(:mod:`gateway.api.openapi`, through the operations of :mod:`gateway.api.messages`)
cannot drift apart. Shapes follow the official ``anthropic`` SDK's
own types (``anthropic.types``).

Accepted and ignored (Claude Code runs its own model loop): ``max_tokens``, ``temperature``,
``top_p``, ``top_k``, ``thinking``, ``context_management``, ``output_config``,
``service_tier``, ``container``, ``mcp_servers``, ``cache_control`` on any block, and any
field this module does not know (the API adds fields often; clients such as Claude Code send
them at once).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from gateway.api.fields import choice, from_validation_error
from gateway.api.wire import Error, Model, ModelList
from gateway.engine.client_tools import ToolMode
from gateway.engine.events import StreamMode

# --------------------------------------------------------------------------- request


class _In(BaseModel):
    """A request object: unknown fields are accepted and ignored; known ones are strict
    (``"stream": "yes"`` is a 400, not true)."""

    model_config = ConfigDict(extra="allow", strict=True)


class TextBlockIn(_In):
    type: Literal["text"]
    text: str


class Base64Source(_In):
    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(_In):
    type: Literal["url"]
    url: str


class FileSource(_In):
    type: Literal["file"]
    file_id: str


class PlainTextSource(_In):
    type: Literal["text"]
    media_type: str = "text/plain"
    data: str


class ContentSource(_In):
    type: Literal["content"]
    content: str | list[TextBlockIn]


ImageSource = Annotated[Base64Source | UrlSource | FileSource, Field(discriminator="type")]
DocumentSource = Annotated[
    Base64Source | UrlSource | FileSource | PlainTextSource | ContentSource,
    Field(discriminator="type"),
]


class ImageBlockIn(_In):
    type: Literal["image"]
    source: ImageSource


class DocumentBlockIn(_In):
    type: Literal["document"]
    source: DocumentSource
    title: str | None = None
    context: str | None = None


class ToolUseBlockIn(_In):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


ToolResultPart = Annotated[
    TextBlockIn | ImageBlockIn | DocumentBlockIn, Field(discriminator="type")
]


class ToolResultBlockIn(_In):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ToolResultPart] | None = None
    is_error: bool | None = None


class ThinkingBlockIn(_In):
    """Claude's thinking in a resent assistant message (ignored)."""

    type: Literal["thinking"]
    thinking: str = ""
    signature: str | None = None


class RedactedThinkingBlockIn(_In):
    type: Literal["redacted_thinking"]
    data: str = ""


ContentBlockIn = Annotated[
    TextBlockIn
    | ImageBlockIn
    | DocumentBlockIn
    | ToolUseBlockIn
    | ToolResultBlockIn
    | ThinkingBlockIn
    | RedactedThinkingBlockIn,
    Field(discriminator="type"),
]


class MessageIn(_In):
    #: ``system`` entries are what Claude Code sends mid-conversation (its
    #: ``mid-conversation-system`` beta): they join the system text
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlockIn]


class ToolIn(_In):
    """A client tool. Anthropic's own server tools (``web_search_…``, ``bash_…``) carry a
    ``type`` and no ``input_schema``: they are accepted and left out (Claude Code has its
    own)."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoiceIn(_In):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class MetadataIn(_In):
    user_id: str | None = None


class MessagesRequest(_In):
    """``POST /v1/messages``."""

    model: str = Field(min_length=1)
    messages: list[MessageIn] = Field(min_length=1)
    max_tokens: int | None = None
    system: str | list[TextBlockIn] | None = None
    stream: bool = False
    stop_sequences: list[str] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoiceIn | None = None
    metadata: MetadataIn | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    #: the gateway's own: smart, final or verbose (also the X-Stream-Mode header)
    stream_mode: Annotated[StreamMode | None, *choice(StreamMode)] = None
    #: the gateway's own: agent, client or hybrid (also the X-Tool-Mode header)
    tool_mode: Annotated[ToolMode | None, *choice(ToolMode)] = None


class CountTokensRequest(_In):
    """``POST /v1/messages/count_tokens``: a messages request without the sampling fields."""

    model: str = Field(min_length=1)
    messages: list[MessageIn] = Field(min_length=1)
    system: str | list[TextBlockIn] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoiceIn | None = None


def parse_messages_request(body: object) -> MessagesRequest:
    """A decoded body as a :class:`MessagesRequest`, or a 400 naming the first bad field."""
    try:
        return MessagesRequest.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc, body) from None


def parse_count_tokens_request(body: object) -> CountTokensRequest:
    try:
        return CountTokensRequest.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc, body) from None


# --------------------------------------------------------------------------- response

StopReason = Literal[
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
    "model_context_window_exceeded",
]


class AnthropicDeltaUsage(BaseModel):
    """The usage of ``message_delta`` (cumulative, as the API sends it)."""

    input_tokens: int | None = None
    output_tokens: int
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class AnthropicUsage(AnthropicDeltaUsage):
    """The usage of a message: the same counts, the input always given."""

    input_tokens: int


class AnthropicTextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class AnthropicToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


AnthropicContentBlock = Annotated[
    AnthropicTextBlock | AnthropicToolUseBlock, Field(discriminator="type")
]


class AnthropicMessage(BaseModel):
    """A ``message`` object: the non-streamed answer (and, empty, ``message_start``'s)."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[AnthropicContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: AnthropicUsage


class MessageStartEvent(BaseModel):
    type: Literal["message_start"] = "message_start"
    message: AnthropicMessage


class PingEvent(BaseModel):
    type: Literal["ping"] = "ping"


class ContentBlockStartEvent(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: AnthropicContentBlock


class AnthropicTextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class AnthropicInputJsonDelta(BaseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ContentBlockDeltaEvent(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: Annotated[AnthropicTextDelta | AnthropicInputJsonDelta, Field(discriminator="type")]


class ContentBlockStopEvent(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class AnthropicMessageDelta(BaseModel):
    stop_reason: StopReason | None
    stop_sequence: str | None = None


class MessageDeltaEvent(BaseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: AnthropicMessageDelta
    usage: AnthropicDeltaUsage


class MessageStopEvent(BaseModel):
    type: Literal["message_stop"] = "message_stop"


ErrorType = Literal[
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "request_too_large", "rate_limit_error", "api_error", "overloaded_error", "timeout_error",
]


class AnthropicErrorDetail(BaseModel):
    type: ErrorType
    message: str


class AnthropicError(BaseModel):
    """An error body, and the ``error`` event of a stream that already started."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


class AnthropicTokenCount(BaseModel):
    input_tokens: int


class AnthropicModel(BaseModel):
    type: Literal["model"] = "model"
    id: str
    display_name: str
    created_at: str  # RFC 3339


class AnthropicModelList(BaseModel):
    data: list[AnthropicModel]
    has_more: bool
    first_id: str | None
    last_id: str | None


StreamEvent = Annotated[
    MessageStartEvent
    | PingEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | AnthropicError,
    Field(discriminator="type"),
]

class AnthropicStreamEvent(RootModel[StreamEvent]):
    """The ``data`` of one event of a streamed message (its ``event:`` line is its type)."""


# --------------------------------------------------------------------------- shared routes
# ``GET /v1/models`` answers in the shape of the client's dialect (gateway/api/routes.py)


class ModelListReply(RootModel[ModelList | AnthropicModelList]):
    """OpenAI's list, or Anthropic's when the request carries ``anthropic-version``."""


class ModelReply(RootModel[Model | AnthropicModel]):
    """OpenAI's model object, or Anthropic's when the request carries ``anthropic-version``."""


class ErrorReply(RootModel[Error | AnthropicError]):
    """OpenAI's error, or Anthropic's when the request carries ``anthropic-version``."""
