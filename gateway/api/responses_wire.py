"""The OpenAI Responses API (``POST /v1/responses``) wire format, as pydantic models.

Requests: :class:`ResponsesRequest` (``input`` as a string or items: messages with
``input_text``/``input_image``/``output_text`` parts, ``function_call`` and
``function_call_output`` items; ``tools`` of type ``function``). :func:`parse_request` turns
a decoded JSON body into one, or raises a 400 naming the field (``input[2].call_id: is
required``).

What the gateway cannot serve is accepted and ignored where a client sends it by default,
and refused with a 400 where ignoring it would change the answer silently:

* ignored: tools of other types (Codex's ``namespace`` and ``web_search``, hosted tools),
  ``reasoning`` items sent back, ``include``, ``reasoning``, ``client_metadata``,
  ``max_output_tokens``, ``temperature``, ``top_p``, ``truncation``, ``service_tier``,
  ``parallel_tool_calls``, ``safety_identifier``, ``stream_options``;
* refused: ``background``, ``conversation``, ``item_reference`` items, ``input_file``
  parts, images by ``file_id`` or remote URL, ``tool_choice`` naming a hosted tool.

Responses: :class:`Response` and the stream events mirror the ``openai`` SDK's own models
(``openai.types.responses``), required fields included (``usage.input_tokens_details``,
``logprobs`` of the text events); the tests validate every body against them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Tag,
    ValidationError,
    field_validator,
)

from gateway.api.fields import choice, from_validation_error, invalid
from gateway.engine.client_tools import ToolMode
from gateway.engine.events import StreamMode
from gateway.errors import ErrorKind, GatewayError

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class _In(BaseModel):
    """Request parts: unknown fields are ignored, as OpenAI's clients add new ones often."""

    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- input content


class ResponsesInputText(_In):
    type: Literal["input_text"]
    text: str


class ResponsesInputImage(_In):
    type: Literal["input_image"]
    #: a ``data:image/...;base64,...`` URL (remote URLs and ``file_id`` are refused)
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class ResponsesOutputTextIn(_In):
    """Assistant text sent back as history."""

    type: Literal["output_text"]
    text: str


class ResponsesRefusalIn(_In):
    type: Literal["refusal"]
    refusal: str


class ResponsesInputFile(_In):
    type: Literal["input_file"]


def _part_type(value: Any) -> str | None:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


ResponsesContentPart = Annotated[
    Annotated[ResponsesInputText, Tag("input_text")]
    | Annotated[ResponsesInputImage, Tag("input_image")]
    | Annotated[ResponsesOutputTextIn, Tag("output_text")]
    | Annotated[ResponsesRefusalIn, Tag("refusal")]
    | Annotated[ResponsesInputFile, Tag("input_file")],
    Discriminator(_part_type),
]


def _or_string(schema: dict[str, Any]) -> None:
    """The JSON Schema of a list a string may stand for (the ``before`` validators)."""
    listed = dict(schema)
    schema.clear()
    schema["anyOf"] = [{"type": "string"}, listed]


def _text_parts(value: Any) -> Any:
    """A string content is one ``input_text`` part."""
    if isinstance(value, str):
        return [{"type": "input_text", "text": value}]
    return value


P = TypeVar("P")
#: a list of parts, for which a string may stand (one ``input_text`` part)
PartsOrString = Annotated[
    list[P], BeforeValidator(_text_parts), Field(json_schema_extra=_or_string)
]


class ResponsesMessageItem(_In):
    """``{"role", "content"}`` with or without ``type: "message"``."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: PartsOrString[ResponsesContentPart]


class ResponsesFunctionCallItem(_In):
    """A call the model made earlier (the client sends it back with the history)."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


ResponsesOutputPart = Annotated[
    Annotated[ResponsesInputText, Tag("input_text")]
    | Annotated[ResponsesInputImage, Tag("input_image")]
    | Annotated[ResponsesInputFile, Tag("input_file")],
    Discriminator(_part_type),
]


class ResponsesFunctionCallOutputItem(_In):
    """The client's result for a function call."""

    type: Literal["function_call_output"]
    call_id: str
    output: PartsOrString[ResponsesOutputPart]


class ResponsesReasoningItem(_In):
    """Sent back by clients that asked for ``reasoning.encrypted_content``; ignored."""

    type: Literal["reasoning"]


class ResponsesItemReference(_In):
    type: Literal["item_reference"]
    id: str


def _item_type(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type", "message")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


ResponsesInputItem = Annotated[
    Annotated[ResponsesMessageItem, Tag("message")]
    | Annotated[ResponsesFunctionCallItem, Tag("function_call")]
    | Annotated[ResponsesFunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ResponsesReasoningItem, Tag("reasoning")]
    | Annotated[ResponsesItemReference, Tag("item_reference")],
    Discriminator(_item_type),
]


# --------------------------------------------------------------------------- tools


class ResponsesFunctionTool(_In):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"must be 1-64 letters, digits, '_' or '-' (got {value!r})")
        return value

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type", "object") != "object":
            raise ValueError("type must be 'object' (tool input is an object)")
        return value


class ResponsesOtherTool(_In):
    """A tool type the gateway cannot serve (``namespace``, ``web_search``, hosted tools):
    accepted and left out of what Claude is offered."""

    model_config = ConfigDict(extra="allow")
    type: str


def _tool_type(value: Any) -> str:
    kind = _part_type(value)
    return "function" if kind == "function" else "other"


ResponsesToolSpec = Annotated[
    Annotated[ResponsesFunctionTool, Tag("function")] | Annotated[ResponsesOtherTool, Tag("other")],
    Discriminator(_tool_type),
]


class ResponsesToolChoiceFunction(_In):
    type: Literal["function"]
    name: str


class ResponsesTextFormat(_In):
    """``text.format``: ``text``, ``json_object`` or ``json_schema`` (name, schema, strict)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"] = "text"


class ResponsesTextConfig(_In):
    format: ResponsesTextFormat | None = None


# --------------------------------------------------------------------------- the request


class ResponsesRequest(_In):
    """``POST /v1/responses``. The gateway's own extensions, as in Chat Completions:
    ``stream_mode`` (smart/final/verbose) and ``tool_mode`` (agent/client/hybrid)."""

    model: str = Field(min_length=1)
    input: list[ResponsesInputItem] = Field(json_schema_extra=_or_string)
    instructions: str | None = None
    tools: list[ResponsesToolSpec] = []
    tool_choice: Literal["auto", "none", "required"] | ResponsesToolChoiceFunction | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    prompt_cache_key: str | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    include: list[str] | None = None
    client_metadata: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: ResponsesTextConfig | None = None
    background: bool | None = None
    conversation: Any = None
    stream_mode: Annotated[StreamMode | None, *choice(StreamMode)] = None
    tool_mode: Annotated[ToolMode | None, *choice(ToolMode)] = None

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [{"type": "message", "role": "user", "content": value}]
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value.strip()

    @property
    def functions(self) -> list[ResponsesFunctionTool]:
        return [t for t in self.tools if isinstance(t, ResponsesFunctionTool)]


def _normalized(body: dict[str, Any]) -> dict[str, Any]:
    """The body with its shorthands spelled out (a string ``input`` is one user message, a
    message without ``type`` is ``type: "message"``, a string ``content``/``output`` is one
    ``input_text`` part), so error paths name what pydantic validated."""
    value = body.get("input")
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        return body
    items: list[Any] = []
    for item in value:
        if isinstance(item, dict):
            item = {"type": "message", **item}
            for name in ("content", "output"):
                if isinstance(item.get(name), str):
                    item[name] = [{"type": "input_text", "text": item[name]}]
        items.append(item)
    return {**body, "input": items}


def parse_request(body: object) -> ResponsesRequest:
    """Validate a decoded JSON body; a ``GatewayError(INVALID_REQUEST)`` naming the field."""
    if not isinstance(body, dict):
        raise GatewayError(ErrorKind.INVALID_REQUEST, "body: must be a JSON object")
    try:
        request = ResponsesRequest.model_validate(body)
    except ValidationError:
        # the validators spell the shorthands out themselves; the paths of the 400 are
        # found in the spelled-out body (no copy of a valid one: a resent history is large)
        spelled = _normalized(body)
        try:
            ResponsesRequest.model_validate(spelled)
        except ValidationError as exc:
            raise from_validation_error(exc, spelled) from None
        raise AssertionError("a body valid only once spelled out") from None
    _refuse_unsupported(request)
    return request


def _refuse_unsupported(request: ResponsesRequest) -> None:
    if request.background:
        raise invalid("background", "background responses are not supported; omit it")
    if request.conversation is not None:
        raise invalid(
            "conversation",
            "conversation objects are not supported; continue with previous_response_id or "
            "resend the history",
        )
    if not request.input:
        raise invalid("input", "must contain at least one item")
    for i, item in enumerate(request.input):
        if isinstance(item, ResponsesItemReference):
            raise invalid(f"input[{i}]", "item_reference is not supported; send the item itself")
        parts: list[Any] = []
        if isinstance(item, ResponsesMessageItem):
            parts, where = item.content, "content"
        elif isinstance(item, ResponsesFunctionCallOutputItem):
            parts, where = item.output, "output"
        for j, part in enumerate(parts):
            if isinstance(part, ResponsesInputFile):
                raise invalid(f"input[{i}].{where}[{j}].type",
                              "input_file is not supported; send text or images")
            if isinstance(part, ResponsesInputImage):
                path = f"input[{i}].{where}[{j}]"
                if isinstance(item, ResponsesMessageItem) and item.role != "user":
                    raise invalid(f"{path}.type", "images are only accepted in user messages")
                if part.image_url is None:
                    raise invalid(
                        f"{path}.image_url",
                        "is required: file ids are not supported; send the image as a data: URL",
                    )
    names = [t.name for t in request.functions]
    for name in names:
        if names.count(name) > 1:
            raise invalid("tools", f"the function name {name!r} appears twice")
    choice = request.tool_choice
    if isinstance(choice, ResponsesToolChoiceFunction) and choice.name not in names:
        raise invalid("tool_choice.name", f"names the function {choice.name!r}, which is not in"
                       " tools")
    if choice == "required" and not names:
        raise invalid("tool_choice", "'required' needs at least one function in tools")


# --------------------------------------------------------------------------- output models


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResponsesOutputText(_Out):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class ResponsesOutputMessage(_Out):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[ResponsesOutputText]


class ResponsesFunctionCall(_Out):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = Annotated[ResponsesOutputMessage | ResponsesFunctionCall, Field(discriminator="type")]


class ResponsesInputTokensDetails(_Out):
    cached_tokens: int
    cache_write_tokens: int


class ResponsesOutputTokensDetails(_Out):
    reasoning_tokens: int = 0


class ResponsesUsage(_Out):
    input_tokens: int
    input_tokens_details: ResponsesInputTokensDetails
    output_tokens: int
    output_tokens_details: ResponsesOutputTokensDetails
    total_tokens: int


#: the codes ``openai.types.responses.ResponseError`` knows that the gateway uses
ErrorCode = Literal["server_error", "rate_limit_exceeded", "invalid_prompt"]


class ResponsesErrorBody(_Out):
    code: ErrorCode
    message: str


class ResponsesIncompleteDetails(_Out):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponsesFunctionToolOut(_Out):
    """A function tool as the response echoes it."""

    type: Literal["function"] = "function"
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponsesToolChoiceOut(_Out):
    type: Literal["function"] = "function"
    name: str


class Response(_Out):
    """A response object (``object: "response"``), streamed or returned whole."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["in_progress", "completed", "failed", "incomplete"]
    model: str
    output: list[OutputItem] = []
    error: ResponsesErrorBody | None = None
    incomplete_details: ResponsesIncompleteDetails | None = None
    instructions: str | None = None
    metadata: dict[str, str] = {}
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None
    store: bool = True
    tool_choice: Literal["auto", "none", "required"] | ResponsesToolChoiceOut = "auto"
    tools: list[ResponsesFunctionToolOut] = []
    usage: ResponsesUsage | None = None
    user: str | None = None


# --------------------------------------------------------------------------- stream events


class ResponsesWireEvent(_Out):
    """What every stream event has."""

    type: str
    sequence_number: int


class ResponsesLifecycleEvent(ResponsesWireEvent):
    """``response.created`` / ``in_progress`` / ``completed`` / ``failed`` / ``incomplete``."""

    type: Literal[
        "response.created", "response.in_progress", "response.completed", "response.failed",
        "response.incomplete",
    ]
    response: Response


class ResponsesItemEvent(ResponsesWireEvent):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ResponsesPartEvent(ResponsesWireEvent):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int = 0
    part: ResponsesOutputText


class ResponsesTextDeltaEvent(ResponsesWireEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int = 0
    delta: str
    logprobs: list[Any] = []


class ResponsesTextDoneEvent(ResponsesWireEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int = 0
    text: str
    logprobs: list[Any] = []


class ResponsesArgumentsDeltaEvent(ResponsesWireEvent):
    type: Literal["response.function_call_arguments.delta"] = (
        "response.function_call_arguments.delta"
    )
    item_id: str
    output_index: int
    delta: str


class ResponsesArgumentsDoneEvent(ResponsesWireEvent):
    type: Literal["response.function_call_arguments.done"] = (
        "response.function_call_arguments.done"
    )
    item_id: str
    output_index: int
    name: str
    arguments: str


class ResponsesErrorEvent(ResponsesWireEvent):
    type: Literal["error"] = "error"
    code: str | None = None
    message: str
    param: str | None = None


StreamEvent = Annotated[
    ResponsesLifecycleEvent | ResponsesItemEvent | ResponsesPartEvent | ResponsesTextDeltaEvent
    | ResponsesTextDoneEvent | ResponsesArgumentsDeltaEvent | ResponsesArgumentsDoneEvent
    | ResponsesErrorEvent,
    Field(discriminator="type"),
]


class ResponsesStreamEvent(RootModel[StreamEvent]):
    """The ``data`` of one event of a ``/v1/responses`` stream (its ``event:`` is the type)."""
