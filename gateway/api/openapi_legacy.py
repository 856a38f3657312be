"""The OpenAPI 3.1 document of the API, served at ``/openapi.json``.

The schemas are JSON Schema 2020-12 and describe what the handlers really send; the tests
validate real responses against them.
"""

from __future__ import annotations

import copy
from typing import Any

from gateway import __version__


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_CONVERSATION = {
    "X-Conversation-Id": {
        "description": "The conversation this request used; send it back in the "
        "X-Conversation-Id request header to pin the conversation.",
        "schema": {"type": "string"},
    }
}


def _error(description: str, *, retry: bool = False, conversation: bool = False) -> dict[str, Any]:
    response = _json("Error", description)
    headers: dict[str, Any] = {}
    if retry:
        headers.update(_RETRY_AFTER)
    if conversation:
        headers.update(_CONVERSATION)
    if headers:
        response["headers"] = headers
    return response


_AUTH_ERROR = _error("Missing or wrong gateway API key (only when GATEWAY_API_KEYS is set).")
#: the refusals of gateway/api/guard.py, which every operation can answer
_GUARD_ERRORS = {
    "403": _error(
        "A browser request from a web page whose origin is neither the gateway's own nor in "
        "server.allowed_origins (code forbidden_origin)."
    ),
    "421": _error(
        "The Host header names neither loopback, the bound address nor one of "
        "server.allowed_hosts (code host_not_allowed; DNS rebinding)."
    ),
}
_MEDIA_ERROR = _error(
    "The body's Content-Type is not the one the endpoint takes (code unsupported_media_type)."
)


def _guarded(paths: dict[str, Any]) -> dict[str, Any]:
    """``paths`` with the guard's refusals added to every operation (415 where a body is)."""
    for operations in paths.values():
        for operation in operations.values():
            responses = operation["responses"]
            responses.update(_GUARD_ERRORS)
            if "requestBody" in operation:
                responses["415"] = _MEDIA_ERROR
    return paths


_NULLABLE_STRING = {"type": ["string", "null"]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": _NULLABLE_STRING,
                    "param": _NULLABLE_STRING,
                },
            }
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("Model")},
        },
    },
    "Health": {
        "type": "object",
        "required": [
            "status",
            "version",
            "cli_path",
            "cli_version",
            "live_processes",
            "sessions",
            "running_turns",
            "rate_limit",
        ],
        "properties": {
            "status": {
                "enum": ["ok", "degraded", "unavailable"],
                "description": "degraded: up, but turns would fail (see problems).",
            },
            "version": {"type": "string"},
            "problems": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Why the status is degraded, each with its fix.",
            },
            "cli_path": _NULLABLE_STRING,
            "cli_version": _NULLABLE_STRING,
            "live_processes": {"type": "integer", "minimum": 0},
            "sessions": {"type": "integer", "minimum": 0},
            "running_turns": {"type": "integer", "minimum": 0},
            "rate_limit": {
                "type": ["object", "null"],
                "description": "The last rate-limit status the CLI reported.",
            },
        },
    },
    "HealthPublic": {
        "type": "object",
        "required": ["status", "version"],
        "additionalProperties": False,
        "properties": {
            "status": {"$ref": "#/components/schemas/Health/properties/status"},
            "version": {"type": "string"},
        },
    },
    "Usage": {
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"],
        "properties": {
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0},
            "prompt_tokens_details": {
                "type": "object",
                "required": ["cached_tokens"],
                "properties": {"cached_tokens": {"type": "integer", "minimum": 0}},
            },
        },
    },
    "FinishReason": {"enum": ["stop", "length", "content_filter", "tool_calls"]},
    "ToolCall": {
        "type": "object",
        "required": ["id", "type", "function"],
        "properties": {
            "id": {"type": "string"},
            "type": {"const": "function"},
            "function": {
                "type": "object",
                "required": ["name", "arguments"],
                "properties": {
                    "name": {"type": "string"},
                    "arguments": {"type": "string", "description": "JSON text."},
                },
            },
        },
    },
    "ToolCallDelta": {
        "type": "object",
        "required": ["index"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "id": {"type": "string"},
            "type": {"const": "function"},
            "function": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
            },
        },
    },
    "Tool": {
        "type": "object",
        "required": ["function"],
        "properties": {
            "type": {"const": "function"},
            "function": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                    "description": {"type": "string"},
                    "parameters": {"type": "object"},
                },
            },
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string", "description": "The model id the request named."},
            "choices": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"const": 0},
                        "message": {
                            "type": "object",
                            "required": ["role", "content"],
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": {"type": ["string", "null"]},
                                "refusal": {"type": "null"},
                                "tool_calls": {"type": "array", "items": _ref("ToolCall")},
                            },
                        },
                        "finish_reason": _ref("FinishReason"),
                        "logprobs": {"type": "null"},
                    },
                },
            },
            "usage": _ref("Usage"),
        },
    },
    "ChatCompletionChunk": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion.chunk"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "maxItems": 1,
                "description": "Empty only in the final usage chunk.",
                "items": {
                    "type": "object",
                    "required": ["index", "delta", "finish_reason"],
                    "properties": {
                        "index": {"const": 0},
                        "delta": {
                            "type": "object",
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": {"type": "string"},
                                "tool_calls": {"type": "array", "items": _ref("ToolCallDelta")},
                            },
                            "additionalProperties": False,
                        },
                        "finish_reason": {"oneOf": [_ref("FinishReason"), {"type": "null"}]},
                    },
                },
            },
            "usage": _ref("Usage"),
        },
    },
    "StreamEvent": {
        "description": "The JSON of one `data:` line of the stream; the stream ends with "
        "`data: [DONE]`.",
        "oneOf": [_ref("ChatCompletionChunk"), _ref("Error")],
    },
    "ContentPart": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"enum": ["text", "image_url", "input_text", "output_text", "refusal"]},
            "text": {"type": "string"},
            "image_url": {
                "type": "object",
                "required": ["url"],
                "properties": {
                    "url": {"type": "string", "description": "A data:image/...;base64 URL."}
                },
            },
        },
    },
    "ChatMessage": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
            "content": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": _ref("ContentPart")},
                    {"type": "null"},
                ]
            },
            "name": {"type": "string"},
            "tool_calls": {"type": "array", "items": {"type": "object"}},
            "tool_call_id": {"type": "string"},
        },
    },
    "TranscriptionRequest": {
        "type": "object",
        "required": ["file"],
        "description": "Other OpenAI fields (temperature, timestamp_granularities, ...) are "
        "accepted and ignored.",
        "properties": {
            "file": {
                "type": "string",
                "format": "binary",
                "description": "Audio in any format FFmpeg reads: OGG/Opus, MP3, M4A, WAV, "
                "FLAC, WebM, ...",
            },
            "model": {
                "type": "string",
                "description": "Accepted for compatibility; the configured voice.model answers.",
            },
            "language": {"type": "string", "description": "ISO-639-1 code, e.g. en."},
            "prompt": {"type": "string", "description": "Text to guide the model (names)."},
            "response_format": {"enum": ["json", "text", "verbose_json", "srt", "vtt"]},
        },
    },
    "Transcription": {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"type": "string"},
            "usage": _ref("AudioUsage"),
        },
    },
    "AudioUsage": {
        "type": "object",
        "required": ["type", "seconds"],
        "properties": {
            "type": {"const": "duration"},
            "seconds": {"type": "integer", "minimum": 0},
        },
    },
    "TranscriptionSegment": {
        "type": "object",
        "required": [
            "id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
            "compression_ratio", "no_speech_prob",
        ],
        "properties": {
            "id": {"type": "integer", "minimum": 0},
            "seek": {"type": "integer"},
            "start": {"type": "number"},
            "end": {"type": "number"},
            "text": {"type": "string"},
            "tokens": {"type": "array", "items": {"type": "integer"}},
            "temperature": {"type": "number"},
            "avg_logprob": {"type": "number"},
            "compression_ratio": {"type": "number"},
            "no_speech_prob": {"type": "number"},
        },
    },
    "TranscriptionVerbose": {
        "type": "object",
        "required": ["task", "language", "duration", "text", "segments"],
        "properties": {
            "task": {"const": "transcribe"},
            "language": {"type": "string", "description": "e.g. english"},
            "duration": {"type": "number", "minimum": 0},
            "text": {"type": "string"},
            "segments": {"type": "array", "items": _ref("TranscriptionSegment")},
            "usage": _ref("AudioUsage"),
        },
    },
    "SpeechRequest": {
        "type": "object",
        "required": ["input"],
        "description": "instructions is accepted and ignored.",
        "properties": {
            "input": {"type": "string", "minLength": 1, "maxLength": 4096},
            "model": {
                "type": "string",
                "description": "Accepted for compatibility; the configured voice speaks.",
            },
            "voice": {
                "description": "Accepted for compatibility; the configured voice speaks.",
            },
            "response_format": {
                "enum": ["mp3", "opus", "aac", "flac", "wav", "pcm"],
                "default": "mp3",
                "description": "opus is Ogg/Opus; pcm is raw 24 kHz 16-bit mono.",
            },
            "speed": {"type": "number", "minimum": 0.25, "maximum": 4.0, "default": 1.0},
            "stream_format": {"const": "audio"},
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "description": "Other OpenAI fields (temperature, max_completion_tokens, ...) are "
        "accepted and ignored. tools/tool_choice are used in the client and hybrid tool modes "
        "(server.tool_mode, X-Tool-Mode, tool_mode) and ignored in agent mode.",
        "properties": {
            "model": {"type": "string"},
            "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
            "stream": {"type": ["boolean", "null"]},
            "stream_options": {
                "type": ["object", "null"],
                "properties": {"include_usage": {"type": "boolean"}},
            },
            "stream_mode": {
                "enum": ["smart", "final", "verbose"],
                "description": "Gateway extension: how answer text streams.",
            },
            "prompt_cache_key": {
                "type": "string",
                "description": "Names the conversation unless X-Conversation-Id is sent.",
            },
            "user": {
                "type": "string",
                "description": "Names the conversation unless a header or prompt_cache_key does.",
            },
            "n": {"const": 1},
            "tools": {"type": "array", "items": _ref("Tool")},
            "tool_choice": {
                "oneOf": [
                    {"enum": ["auto", "none", "required"]},
                    {
                        "type": "object",
                        "required": ["function"],
                        "properties": {
                            "type": {"const": "function"},
                            "function": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}},
                            },
                        },
                    },
                ],
                "description": "Not enforced by the CLI: anything but auto becomes an "
                "instruction to Claude.",
            },
            "parallel_tool_calls": {"type": "boolean"},
            "tool_mode": {
                "enum": ["agent", "client", "hybrid"],
                "description": "Gateway extension: how the client's tools are used.",
            },
            "response_format": _ref("ResponseFormat"),
        },
    },
    "ResponseFormat": {
        "description": "json_object: the answer is a JSON object; json_schema: it validates "
        "against json_schema.schema (strict true or false alike). Claude is told so for this "
        "turn only; the answer is checked (a Markdown code fence is removed) and, if it fails, "
        "asked for once more in the same conversation. A second failure is a 422 "
        "invalid_json_output. The answer is the final step's text (stream mode final); a "
        "stream sends it in one piece once it passed the check.",
        "oneOf": [
            {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"enum": ["text", "json_object"]}},
            },
            {
                "type": "object",
                "required": ["type", "json_schema"],
                "properties": {
                    "type": {"const": "json_schema"},
                    "json_schema": {
                        "type": "object",
                        "required": ["name", "schema"],
                        "properties": {
                            "name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                            "description": {"type": "string"},
                            "schema": {
                                "type": "object",
                                "description": "A JSON Schema; its $ref must point inside it.",
                            },
                            "strict": {"type": ["boolean", "null"]},
                        },
                    },
                },
            },
        ],
    },
}


def _health(description: str) -> dict[str, Any]:
    schema = {"anyOf": [_ref("Health"), _ref("HealthPublic")]}
    return {
        "description": f"{description} Without a key while GATEWAY_API_KEYS is set: only "
        "HealthPublic (status and version).",
        "content": {"application/json": {"schema": schema}},
    }


def _chat_path() -> dict[str, Any]:
    header = {"in": "header", "required": False, "schema": {"type": "string"}}
    return {
        "post": {
            "operationId": "createChatCompletion",
            "summary": "Run one turn of a conversation through Claude Code.",
            "parameters": [
                {**header, "name": "X-Conversation-Id", "description": "Names the conversation."},
                {**header, "name": "X-Session-Id", "description": "Same as X-Conversation-Id."},
                {
                    **header,
                    "name": "X-Stream-Mode",
                    "schema": {"enum": ["smart", "final", "verbose"]},
                    "description": "How answer text streams (overrides the body's stream_mode).",
                },
                {
                    **header,
                    "name": "X-Tool-Mode",
                    "schema": {"enum": ["agent", "client", "hybrid"]},
                    "description": "How the client's tools are used (overrides tool_mode).",
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("ChatCompletionRequest")}},
            },
            "responses": {
                "200": {
                    "description": "A chat.completion, or with stream=true an SSE stream of "
                    "StreamEvent objects ending with `data: [DONE]`.",
                    "headers": _CONVERSATION,
                    "content": {
                        "application/json": {"schema": _ref("ChatCompletion")},
                        "text/event-stream": {
                            "schema": {"type": "string"},
                            "x-event-schema": _ref("StreamEvent"),
                        },
                    },
                },
                "400": _error("Invalid request; the message names the field."),
                "401": _AUTH_ERROR,
                "409": _error(
                    "The turn was interrupted (interrupt or reset of the conversation).",
                    conversation=True,
                ),
                "413": _error("The request body is larger than server.max_body_mb."),
                "422": _error(
                    "The answer did not match response_format even after one retry "
                    "(code invalid_json_output; the message names the problem).",
                    conversation=True,
                ),
                "429": _error("Claude usage limit reached.", retry=True, conversation=True),
                "502": _error(
                    "The Claude Code CLI crashed, or the Anthropic API failed.", conversation=True
                ),
                "503": _error(
                    "Overloaded, CLI unavailable or not logged in, shutting down, or the "
                    "gateway is at max_concurrent_requests (code server_busy).",
                    retry=True,
                ),
                "504": _error("The turn showed no activity for too long.", conversation=True),
            },
        }
    }


def _audio_paths() -> dict[str, Any]:
    """``/v1/audio/transcriptions`` and ``/v1/audio/speech`` (gateway/api/audio.py)."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    text = {"schema": {"type": "string"}}
    unavailable = _error(
        "No speech engine is installed (code voice_unavailable; the message names the extra "
        "to install), or the gateway is at max_concurrent_requests (code server_busy).",
        retry=True,
    )
    return {
        "/v1/audio/transcriptions": {
            "post": {
                "operationId": "createTranscription",
                "summary": "Transcribe audio with the gateway's Whisper model.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {"schema": _ref("TranscriptionRequest")}
                    },
                },
                "responses": {
                    "200": {
                        "description": "The transcript: JSON for json and verbose_json, "
                        "plain text for text and srt, WebVTT for vtt. Audio without speech "
                        "gives an empty text.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "anyOf": [
                                        _ref("TranscriptionVerbose"),
                                        _ref("Transcription"),
                                    ]
                                }
                            },
                            "text/plain": text,
                            "text/vtt": text,
                        },
                    },
                    "400": _error(
                        "Invalid request (the message names the field), audio that cannot "
                        "be decoded (audio_undecodable) or is longer than voice.max_seconds "
                        "(audio_too_long)."
                    ),
                    "401": _AUTH_ERROR,
                    "413": _error("The request body is larger than server.max_body_mb."),
                    "503": unavailable,
                },
            }
        },
        "/v1/audio/speech": {
            "post": {
                "operationId": "createSpeech",
                "summary": "Speak text with the gateway's voice (Piper, else espeak-ng).",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SpeechRequest")}},
                },
                "responses": {
                    "200": {
                        "description": "The audio, in the requested format.",
                        "headers": {
                            "X-Voice-Engine": {
                                "description": "The engine that spoke: piper or espeak.",
                                "schema": {"enum": ["piper", "espeak"]},
                            }
                        },
                        "content": {
                            mime: binary
                            for mime in (
                                "audio/mpeg",
                                "audio/opus",
                                "audio/aac",
                                "audio/flac",
                                "audio/wav",
                                "audio/pcm",
                            )
                        },
                    },
                    "400": _error("Invalid request; the message names the field."),
                    "401": _AUTH_ERROR,
                    "413": _error("The request body is larger than server.max_body_mb."),
                    "500": _error("The speech engine failed on this text (synthesis_failed)."),
                    "503": unavailable,
                },
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may modify it)."""
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "Claude Max Gateway",
                "version": __version__,
                "description": "An OpenAI-compatible endpoint in front of the real Claude Code "
                "CLI. Errors are OpenAI error JSON. When GATEWAY_API_KEYS is set, /v1/ needs "
                "one of its keys ('Authorization: Bearer <key>' or 'X-Api-Key: <key>') and "
                "/health without one shows only status and version. Browser requests from "
                "other origins (403) and requests addressed to other hosts (421) are refused "
                "first.",
            },
            "components": {
                "schemas": SCHEMAS,
                "securitySchemes": {
                    "bearer": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "One of the keys in the GATEWAY_API_KEYS environment "
                        "variable; needed only when it is set.",
                    }
                },
            },
            "security": [{}, {"bearer": []}],
            "paths": _guarded({
                "/v1/chat/completions": _chat_path(),
                **_audio_paths(),
            }),
        }
    )
