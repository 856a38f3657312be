"""The OpenAI Chat Completions wire format as pydantic models: the request the gateway
validates (every problem a 400 naming the field, see :mod:`gateway.api.fields`) and the
objects it answers with (documentation and the tests' oracle: the handlers build those
dicts directly, :class:`gateway.api.convert.ChunkFactory`).

:func:`parse_chat_request` validates a request and converts it to
the neutral :class:`~gateway.api.convert.ChatRequest` (messages as
:class:`~gateway.api.convert.Message`, data-URL images decoded, the client's functions as
engine :class:`~gateway.engine.client_tools.ClientTool`, ``response_format`` checked as a
JSON Schema). Unknown fields are ignored, as OpenAI does; what the gateway cannot honour
(``n`` > 1, log probabilities, audio output) is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Tag,
    WithJsonSchema,
    with_config,
)
from typing_extensions import TypedDict

from gateway.api.convert import ROLES, ChatRequest, Message, ToolCall, parse_data_url
from gateway.api.fields import (
    PATTERN_WORDS,
    TAG,
    choice,
    discriminator,
    invalid,
    problem,
    register_union,
    type_name,
    union_of_objects,
    validate,
)
from gateway.api.structured import ResponseFormat, check_schema
from gateway.api.wire import Error
from gateway.engine.client_tools import NAME_RE, ClientTool, ToolMode
from gateway.engine.events import ImagePart, StreamMode

CHOICES = ("auto", "none", "required")
FORMAT_TYPES = ("text", "json_object", "json_schema")
_NAME_RULE = "must be 1-64 letters, digits, '_' or '-'"
_NAME_PATTERN = NAME_RE.pattern  # the engine's rule for a client tool's name

register_union("role_union", lambda v: (".role", f"must be one of {', '.join(ROLES)} (got "
                                        f"{v.get('role')!r})") if isinstance(v, dict) else (
    "", f"must be an object, not {type_name(v)}"))
union_of_objects(
    "format_union", "type",
    "is not supported; use 'text', 'json_object' or 'json_schema'",
)


class _Wire(BaseModel):
    """Strict JSON types (no "yes" for true); unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


def _tagged(key: str, tags: dict[str, str], default: str = "") -> Callable[[Any], Any]:
    """A discriminator: the tag of an object's ``key`` value (None when there is none)."""

    def discriminate(value: Any) -> str | None:
        if isinstance(value, dict):
            found = value.get(key, default)
        elif isinstance(value, BaseModel):
            found = getattr(value, key, None)
        else:
            return None
        return tags.get(found) if isinstance(found, str) else None

    return discriminate


# --------------------------------------------------------------------------- content parts


# Messages and parts are TypedDicts: a history of thousands is validated in a fraction of
# the time model instances would take (the neutral Message is built from them anyway).
_PARTS = ConfigDict(strict=True, extra="ignore")


@with_config(_PARTS)
class TextPart(TypedDict):
    type: Literal["text", "input_text", "output_text"]
    text: str


@with_config(_PARTS)
class RefusalPart(TypedDict):
    type: Literal["refusal"]
    refusal: str


@with_config(_PARTS)
class ImageUrl(TypedDict):
    url: Annotated[str, Field(description="A data:image/...;base64 URL (remote URLs are not "
                              "fetched); PNG, JPEG, GIF or WebP. detail is accepted and ignored.")]


@with_config(_PARTS)
class ImageUrlPart(TypedDict):
    type: Literal["image_url"]
    image_url: Annotated[
        Annotated[ImageUrl, Tag(f"{TAG}object")] | Annotated[str, Tag(f"{TAG}string")],
        Discriminator(lambda v: f"{TAG}string" if isinstance(v, str) else f"{TAG}object"),
    ]


_TEXT_TAGS = {t: f"{TAG}text" for t in ("text", "input_text", "output_text")} | {
    "refusal": f"{TAG}refusal"}
TextContentPart = Annotated[
    Annotated[TextPart, Tag(f"{TAG}text")] | Annotated[RefusalPart, Tag(f"{TAG}refusal")],
    discriminator(_tagged("type", _TEXT_TAGS), "part_union"),
]
UserContentPart = Annotated[
    Annotated[TextPart, Tag(f"{TAG}text")]
    | Annotated[RefusalPart, Tag(f"{TAG}refusal")]
    | Annotated[ImageUrlPart, Tag(f"{TAG}image")],
    discriminator(_tagged("type", {**_TEXT_TAGS, "image_url": f"{TAG}image"}), "part_union"),
]


def _content_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return f"{TAG}string"
    if isinstance(value, list):
        return f"{TAG}parts"
    return None


_CONTENT = discriminator(_content_kind, "content_union")
TextContent = Annotated[
    Annotated[str, Tag(f"{TAG}string")] | Annotated[list[TextContentPart], Tag(f"{TAG}parts")],
    _CONTENT,
]
UserContent = Annotated[
    Annotated[str, Tag(f"{TAG}string")] | Annotated[list[UserContentPart], Tag(f"{TAG}parts")],
    _CONTENT,
]


# --------------------------------------------------------------------------- messages


@with_config(_PARTS)
class SystemMessage(TypedDict):
    role: Literal["system", "developer"]
    content: TextContent
    name: NotRequired[str | None]


@with_config(_PARTS)
class UserMessage(TypedDict):
    role: Literal["user"]
    content: UserContent
    name: NotRequired[str | None]


@with_config(ConfigDict(strict=False, extra="ignore"))
class AssistantToolCall(TypedDict):
    """A call of an earlier assistant reply (kept for the transcript; read leniently)."""

    id: NotRequired[Any]
    type: NotRequired[Any]
    function: NotRequired[Annotated[dict[str, Any] | None, Field(
        description="name and arguments (JSON text)")]]
    custom: NotRequired[Annotated[dict[str, Any] | None, Field(description="name and input")]]


@with_config(_PARTS)
class AssistantMessage(TypedDict):
    role: Literal["assistant"]
    content: NotRequired[Annotated[TextContent | None, Field(
        description="Required unless tool_calls (or refusal) is given.")]]
    name: NotRequired[str | None]
    refusal: NotRequired[Any]
    tool_calls: NotRequired[list[AssistantToolCall] | None]
    function_call: NotRequired[Annotated[Any, Field(description="Legacy: one call.")]]


@with_config(_PARTS)
class ToolMessage(TypedDict):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: NotRequired[str | None]
    name: NotRequired[str | None]


@with_config(_PARTS)
class FunctionMessage(TypedDict):
    role: Literal["function"]
    content: TextContent
    name: NotRequired[str | None]


ChatMessage = Annotated[
    Annotated[SystemMessage, Tag(f"{TAG}system")]
    | Annotated[UserMessage, Tag(f"{TAG}user")]
    | Annotated[AssistantMessage, Tag(f"{TAG}assistant")]
    | Annotated[ToolMessage, Tag(f"{TAG}tool")]
    | Annotated[FunctionMessage, Tag(f"{TAG}function")],
    discriminator(_tagged("role", {"developer": f"{TAG}system"} | {
        role: f"{TAG}{role}" for role in ("system", "user", "assistant", "tool", "function")}),
        "role_union"),
]


# --------------------------------------------------------------------------- tools


#: checked by pydantic-core's regex, not a Python validator (a request may carry dozens of
#: tools, and the check runs on every turn)
ToolName = Annotated[str, Field(pattern=_NAME_PATTERN)]
PATTERN_WORDS[_NAME_PATTERN] = _NAME_RULE


def _parameters(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is not None and schema.get("type", "object") != "object":
        raise problem("must be 'object' (tool input is an object)", at=".type")
    return schema


class FunctionDefinition(_Wire):
    name: ToolName
    description: str | None = None
    parameters: Annotated[dict[str, Any] | None, AfterValidator(_parameters)] = Field(
        default=None, description="A JSON Schema of type object (default: no arguments).")
    strict: Any = None


class FunctionTool(_Wire):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Wire):
    name: str


class ToolChoiceFunction(_Wire):
    type: Literal["function"] = "function"
    function: NamedFunction


def _string_or_object(value: Any) -> str | None:
    if isinstance(value, str):
        return f"{TAG}string"
    return f"{TAG}object" if isinstance(value, dict | BaseModel) else None


_STRING_OR_OBJECT = discriminator(_string_or_object, "string_or_object")
ToolChoice = Annotated[
    Annotated[str, Tag(f"{TAG}string")] | Annotated[ToolChoiceFunction, Tag(f"{TAG}object")],
    _STRING_OR_OBJECT,
]
LegacyFunctionCall = Annotated[
    Annotated[str, Tag(f"{TAG}string")] | Annotated[NamedFunction, Tag(f"{TAG}object")],
    _STRING_OR_OBJECT,
]


# --------------------------------------------------------------------------- response_format


class TextFormat(_Wire):
    type: Literal["text"] = "text"


class JsonObjectFormat(_Wire):
    type: Literal["json_object"]


class JsonSchemaSpec(_Wire):
    name: ToolName = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(
        alias="schema", description="A JSON Schema; its $ref must point inside it.")
    strict: bool | None = None


class JsonSchemaFormat(_Wire):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormatField = Annotated[
    Annotated[TextFormat, Tag(f"{TAG}text")]
    | Annotated[JsonObjectFormat, Tag(f"{TAG}json_object")]
    | Annotated[JsonSchemaFormat, Tag(f"{TAG}json_schema")],
    discriminator(_tagged("type", {t: f"{TAG}{t}" for t in FORMAT_TYPES}, default="text"),
                  "format_union"),
    Field(description="json_object: the answer is a JSON object; json_schema: it validates "
          "against json_schema.schema (strict true or false alike). Claude is told so for "
          "this turn only; the answer is checked (a Markdown code fence is removed) and, if "
          "it fails, asked for once more in the same conversation. A second failure is a 422 "
          "invalid_json_output. The answer is the final step's text (stream mode final); a "
          "stream sends it in one piece once it passed the check."),
]


# --------------------------------------------------------------------------- the request


def _refuse_unless(ok: Callable[[Any], bool], why: str) -> AfterValidator:
    """A field the gateway takes only in the value(s) ``ok`` accepts (or absent)."""

    def check(value: Any) -> Any:
        if value is not None and not ok(value):
            raise problem(why)
        return value

    return AfterValidator(check)


def _non_empty(value: str) -> str:
    if not value.strip():
        raise problem("must be a non-empty string")
    return value.strip()


def _some_messages(messages: list[Any]) -> list[Any]:
    if not messages:
        raise problem("must contain at least one message")
    return messages


_NO_LOGPROBS = "log probabilities are not available through Claude Code"


class StreamOptions(_Wire):
    include_usage: bool | None = None


class ChatCompletionRequest(_Wire):
    """What the gateway reads of a request; other OpenAI fields (temperature, max_tokens,
    seed, stop, metadata, store, reasoning_effort, ...) are accepted and ignored. tools and
    tool_choice are used in the client and hybrid tool modes (server.tool_mode,
    X-Tool-Mode, tool_mode) and ignored in agent mode."""

    model_config = ConfigDict(title="ChatCompletionRequest")

    model: Annotated[str, AfterValidator(_non_empty)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stream_mode: Annotated[StreamMode | None, *choice(StreamMode)] = Field(
        default=None, description="Gateway extension: how answer text streams.")
    n: Annotated[Any, _refuse_unless(lambda n: n == 1 and not isinstance(n, bool),
                                     "only 1 completion per request is supported"),
                 WithJsonSchema({"enum": [1, None]})] = None
    logprobs: Annotated[Any, _refuse_unless(lambda v: v is False, _NO_LOGPROBS),
                        WithJsonSchema({"enum": [False, None]})] = None
    top_logprobs: Annotated[
        Any, _refuse_unless(lambda v: v == 0 and not isinstance(v, bool), _NO_LOGPROBS),
        WithJsonSchema({"enum": [0, None]})] = None
    modalities: Annotated[
        Any, _refuse_unless(lambda v: isinstance(v, list) and all(m == "text" for m in v),
                            "only ['text'] is supported"),
        WithJsonSchema({"type": ["array", "null"], "items": {"const": "text"}})] = None
    audio: Annotated[Any, _refuse_unless(lambda v: False, "audio output is not supported"),
                     WithJsonSchema({"type": "null"})] = None
    messages: Annotated[list[ChatMessage], AfterValidator(_some_messages)] = Field(
        json_schema_extra={"minItems": 1})
    tools: list[FunctionTool] | None = None
    functions: list[FunctionDefinition] | None = Field(
        default=None, description="Legacy: the same as tools.")
    tool_choice: ToolChoice | None = Field(
        default=None, description="auto, none, required or one function. Not enforced by the "
        "CLI: anything but auto becomes an instruction to Claude.")
    function_call: LegacyFunctionCall | None = Field(
        default=None, description="Legacy: the same as tool_choice.")
    parallel_tool_calls: bool | None = None
    tool_mode: Annotated[ToolMode | None, *choice(ToolMode)] = Field(
        default=None, description="Gateway extension: how the client's tools are used.")
    prompt_cache_key: str | None = Field(
        default=None, description="Names the conversation unless X-Conversation-Id is sent.")
    user: str | None = Field(
        default=None, description="Names the conversation unless a header or "
        "prompt_cache_key does.")
    response_format: ResponseFormatField | None = None


# --------------------------------------------------------------------------- -> ChatRequest


def parse_chat_request(body: object) -> ChatRequest:
    """A decoded JSON body as a :class:`ChatRequest`, or a 400 naming the field."""
    return _convert(validate(ChatCompletionRequest, body))


def _blank_none(value: str | None) -> str | None:
    return value if value is not None and value.strip() else None


def _convert(wire: ChatCompletionRequest) -> ChatRequest:
    tools = _tools(wire)
    return ChatRequest(
        model=wire.model,
        messages=tuple(_message(m, i) for i, m in enumerate(wire.messages)),
        stream=bool(wire.stream),
        include_usage=bool(wire.stream_options and wire.stream_options.include_usage),
        stream_mode=wire.stream_mode,
        prompt_cache_key=_blank_none(wire.prompt_cache_key),
        user=_blank_none(wire.user),
        tools=tools,
        tool_choice=_tool_choice(wire, tools),
        tool_mode=wire.tool_mode,
        response_format=_response_format(wire.response_format),
    )


def _text(content: str | list[Any] | None, index: int) -> tuple[str, tuple[ImagePart, ...]]:
    if content is None:
        return "", ()
    if isinstance(content, str):
        return content, ()
    texts: list[str] = []
    images: list[ImagePart] = []
    for j, part in enumerate(content):
        kind = part["type"]
        if kind == "image_url":
            image = part["image_url"]
            url = image if isinstance(image, str) else image["url"]
            images.append(parse_data_url(url, f"messages[{index}].content[{j}].image_url.url"))
        else:
            texts.append(part["refusal"] if kind == "refusal" else part["text"])
    return "\n".join(texts), tuple(images)


def _arguments(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _calls(message: AssistantMessage) -> tuple[ToolCall, ...]:
    if not message.get("tool_calls") and not message.get("function_call"):
        return ()
    calls = [
        ToolCall(
            id=str(call.get("id") or ""),
            name=str(fn.get("name") or "?"),
            arguments=_arguments(fn.get("arguments", fn.get("input", ""))),
        )
        for call in message.get("tool_calls") or ()
        for fn in (call.get("function") or call.get("custom") or {},)
    ]
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        calls.append(ToolCall("", str(legacy.get("name") or "?"),
                              _arguments(legacy.get("arguments", ""))))
    return tuple(calls)


def _message(message: Any, index: int) -> Message:
    role = message["role"]
    content = message.get("content")
    if isinstance(content, str) and role in ("user", "system", "developer"):
        # most of a resent history: no parts, images or calls to look at
        return Message(role=role, text=content, name=message.get("name"), index=index)
    tool_calls: tuple[ToolCall, ...] = ()
    if role == "assistant":
        tool_calls = _calls(message)
        refusal = message.get("refusal")
        if content is None and not tool_calls and refusal is None:
            raise invalid(f"messages[{index}].content", "is required unless tool_calls is given")
        if content is None and isinstance(refusal, str):
            content = refusal
    text, images = _text(content, index)
    return Message(
        role=role,
        text=text,
        images=images,
        tool_calls=tool_calls,
        tool_call_id=message.get("tool_call_id") if role == "tool" else None,
        name=message.get("name"),
        index=index,
    )


def _client_tool(fn: FunctionDefinition) -> ClientTool:
    parameters = fn.parameters if fn.parameters is not None else {
        "type": "object", "properties": {}}
    return ClientTool(fn.name, fn.description or "", parameters)


def _tools(wire: ChatCompletionRequest) -> tuple[ClientTool, ...]:
    tools = [_client_tool(t.function) for t in wire.tools or ()]
    tools += [_client_tool(f) for f in wire.functions or ()]
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            raise invalid("tools", f"the function name {tool.name!r} appears twice")
        seen.add(tool.name)
    return tuple(tools)


def _tool_choice(wire: ChatCompletionRequest, tools: Sequence[ClientTool]) -> str:
    """``auto``, ``none``, ``required`` or the name of one of ``tools``."""
    path, raw = ("tool_choice", wire.tool_choice) if wire.tool_choice is not None else (
        "function_call", wire.function_call)
    if raw is None:
        return "auto"
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word not in CHOICES:
            raise invalid(path, f"must be one of {', '.join(CHOICES)} or a function (got {raw!r})")
        if word == "required" and not tools:
            raise invalid(path, "'required' needs at least one tool in tools")
        return word
    name = raw.function.name if isinstance(raw, ToolChoiceFunction) else raw.name
    if name not in {t.name for t in tools}:
        raise invalid(path, f"names the function {name!r}, which is not in tools")
    return name


def _response_format(
    value: TextFormat | JsonObjectFormat | JsonSchemaFormat | None,
) -> ResponseFormat | None:
    if value is None or isinstance(value, TextFormat):
        return None
    if isinstance(value, JsonObjectFormat):
        return ResponseFormat("json_object")
    spec = value.json_schema
    check_schema(spec.schema_, "response_format.json_schema.schema")
    return ResponseFormat("json_schema", spec.name, spec.description or "", spec.schema_,
                          bool(spec.strict))


class _FormatOnly(_Wire):
    response_format: ResponseFormatField | None = None


def parse_response_format(value: object) -> ResponseFormat | None:
    """A ``response_format`` on its own (None for an absent or ``text`` one), or a 400."""
    return _response_format(validate(_FormatOnly, {"response_format": value}).response_format)


# --------------------------------------------------------------------------- responses


class _Reply(BaseModel):
    """A response object (documented; the handlers build the dicts directly)."""


class PromptTokensDetails(_Reply):
    cached_tokens: int = Field(ge=0)


class Usage(_Reply):
    prompt_tokens: int = Field(ge=0, description="Input, cache read and cache write tokens.")
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    prompt_tokens_details: PromptTokensDetails


FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]


class FunctionCall(_Reply):
    name: str
    arguments: str = Field(description="JSON text.")


class ChatToolCall(_Reply):
    model_config = ConfigDict(title="ToolCall")

    id: str
    type: Literal["function"]
    function: FunctionCall


class CompletionMessage(_Reply):
    role: Literal["assistant"]
    content: str | None
    refusal: None = None
    tool_calls: list[ChatToolCall] = Field(
        default_factory=list, description="Only when finish_reason is tool_calls.")


class Choice(_Reply):
    index: Literal[0]
    message: CompletionMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(_Reply):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str = Field(description="The model id the request named.")
    choices: list[Choice] = Field(min_length=1, max_length=1)
    usage: Usage


class FunctionDelta(_Reply):
    name: str = ""
    arguments: str = ""


class ToolCallDelta(_Reply):
    index: int = Field(ge=0)
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionDelta | None = None


class Delta(_Reply):
    model_config = ConfigDict(extra="forbid")

    role: Literal["assistant"] = "assistant"
    content: str = ""
    tool_calls: list[ToolCallDelta] = Field(default_factory=list)


class ChunkChoice(_Reply):
    index: Literal[0]
    delta: Delta
    finish_reason: FinishReason | None


class ChatCompletionChunk(_Reply):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice] = Field(
        max_length=1, description="Empty only in the final usage chunk.")
    usage: Usage | None = Field(
        default=None, description="Only in the final chunk, with stream_options.include_usage.")


class ChatStreamEvent(RootModel[ChatCompletionChunk | Error]):
    """The JSON of one ``data:`` line of the stream; the stream ends with ``data: [DONE]``."""
