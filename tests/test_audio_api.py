"""The OpenAI-compatible audio endpoints end to end: the official ``openai`` client over
127.0.0.1 → the gateway's aiohttp app → VoiceService → real faster-whisper / Piper.
JSON responses are validated against ``/openapi.json``.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import av
import jsonschema
import openai
import pytest
from aiohttp import web

from bench.voice_data import PROMPT_5S, silence_note, telegram_voice_note, wer
from gateway.api import ApiConfig, create_app
from gateway.api.routes import openapi_document
from gateway.config import VoiceSettings
from gateway.engine import Engine, EngineConfig
from gateway.store import Store
from gateway.voice import VOICE_EXTRA, VoiceService
from gateway.voice.stt import FasterWhisperEngine, bundled_model_path
from gateway.voice.tts import EspeakEngine, PiperEngine
from tests.conftest import skip_unless_whole_module

DOC = openapi_document()
SEEN: set[tuple[str, str]] = set()  # (path, status) of the audio endpoints met in this module
AUDIO_PATHS = ("/v1/audio/transcriptions", "/v1/audio/speech")


def check_openapi(path: str, status: int, content_type: str, body: bytes) -> None:
    """The response is documented; a JSON body matches its schema."""
    operation = DOC["paths"][path]["post"]
    response = operation["responses"].get(str(status))
    assert response is not None, f"POST {path} -> {status} is not documented"
    media = response["content"].get(content_type)
    assert media is not None, f"POST {path} -> {status} {content_type} is not documented"
    if content_type == "application/json":
        validator = jsonschema.Draft202012Validator(
            {**media["schema"], "components": DOC["components"]}
        )
        errors = sorted(validator.iter_errors(json.loads(body)), key=str)
        assert not errors, f"{path} {status}: {errors[0].message}"
    SEEN.add((path, str(status)))


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class AudioApi:
    def __init__(self, url: str, voice: VoiceService | None, key: str = "sk-any") -> None:
        self.url = url
        self.voice = voice
        self.client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)

    async def post(self, path: str, **kwargs: Any) -> tuple[int, str, bytes]:
        """A raw POST; the response is checked against the OpenAPI document."""
        async with aiohttp.ClientSession() as session:
            async with session.post(self.url + path, **kwargs) as resp:
                body = await resp.read()
                ctype = resp.content_type
                status = resp.status
        check_openapi(path, status, ctype, body)
        return status, ctype, body

    async def transcribe(self, data: bytes, name: str = "voice.ogg", **fields: str) -> Any:
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name, content_type="audio/ogg")
        form.add_field("model", "whisper-1")
        for key, value in fields.items():
            form.add_field(key, value)
        return await self.post("/v1/audio/transcriptions", data=form)


ApiFactory = Callable[..., Awaitable[AudioApi]]


@pytest.fixture(scope="module")
def fw_engine() -> FasterWhisperEngine:
    engine = FasterWhisperEngine(bundled_model_path() or "")
    engine.load()
    return engine


@pytest.fixture(scope="module")
def piper() -> PiperEngine:
    engine = PiperEngine()
    engine.load()
    return engine


@pytest.fixture(scope="module")
def prompt_note(piper: PiperEngine) -> bytes:
    speech = piper.synthesize(PROMPT_5S)
    return telegram_voice_note(speech.pcm, speech.rate)


@pytest.fixture
async def make_api(
    tmp_path: Path, fw_engine: FasterWhisperEngine, piper: PiperEngine
) -> AsyncIterator[ApiFactory]:
    """``await make_api(voice=..., voice_settings={...}, **ApiConfig)``: the API app served on
    127.0.0.1 with a VoiceService over the loaded engines (the chat engine is never started:
    the audio endpoints do not use it)."""
    engine = Engine(EngineConfig(workspace=tmp_path / "ws"), Store(tmp_path / "db.sqlite3"))
    async with AsyncExitStack() as stack:

        async def factory(
            voice: VoiceService | str | None = "default",
            voice_settings: dict[str, Any] | None = None,
            key: str = "sk-any",
            **config: Any,
        ) -> AudioApi:
            if voice == "default":
                voice = VoiceService(
                    VoiceSettings(**(voice_settings or {})),
                    stt=fw_engine,
                    tts=[piper, EspeakEngine()],
                )
            assert not isinstance(voice, str)
            if voice is not None:
                stack.callback(voice.close)
            url = await stack.enter_async_context(
                serve(create_app(engine, ApiConfig(**config), voice))
            )
            api = AudioApi(url, voice, key)
            stack.push_async_callback(api.client.close)
            return api

        yield factory


# --------------------------------------------------------------------------- transcriptions


async def test_openai_client_transcribes_a_voice_note(
    make_api: ApiFactory, prompt_note: bytes
) -> None:
    api = await make_api()
    result = await api.client.audio.transcriptions.create(
        file=("voice.ogg", prompt_note, "audio/ogg"), model="whisper-1"
    )
    assert wer(PROMPT_5S, result.text) <= 0.15, result.text
    status, ctype, body = await api.transcribe(prompt_note)
    assert (status, ctype) == (200, "application/json")
    data = json.loads(body)
    assert data["usage"]["type"] == "duration" and 4 <= data["usage"]["seconds"] <= 8


async def test_response_formats(make_api: ApiFactory, prompt_note: bytes) -> None:
    api = await make_api()
    text = await api.client.audio.transcriptions.create(
        file=("voice.ogg", prompt_note), model="whisper-1", response_format="text"
    )
    assert isinstance(text, str) and wer(PROMPT_5S, text) <= 0.15
    verbose = await api.client.audio.transcriptions.create(
        file=("voice.ogg", prompt_note), model="whisper-1", response_format="verbose_json",
        language="en",
    )
    assert verbose.language == "english"
    assert 3 < verbose.duration < 8
    assert verbose.segments and verbose.segments[0].text
    assert verbose.segments[-1].end <= verbose.duration + 0.5
    status, ctype, body = await api.transcribe(prompt_note, response_format="verbose_json")
    assert status == 200 and json.loads(body)["task"] == "transcribe"
    status, ctype, body = await api.transcribe(prompt_note, response_format="srt")
    assert (status, ctype) == (200, "text/plain")
    assert body.decode().startswith("1\n00:00:0") and " --> " in body.decode()
    status, ctype, body = await api.transcribe(prompt_note, response_format="vtt")
    assert (status, ctype) == (200, "text/vtt") and body.startswith(b"WEBVTT\n")


async def test_silence_is_an_empty_text(make_api: ApiFactory) -> None:
    api = await make_api()
    result = await api.client.audio.transcriptions.create(
        file=("silence.ogg", silence_note(3.0)), model="whisper-1"
    )
    assert result.text == ""
    status, _, body = await api.transcribe(silence_note(3.0), response_format="verbose_json")
    assert status == 200 and json.loads(body)["segments"] == []


async def test_audio_that_cannot_be_decoded_is_400(make_api: ApiFactory) -> None:
    api = await make_api()
    with pytest.raises(openai.BadRequestError) as caught:
        await api.client.audio.transcriptions.create(
            file=("notes.ogg", b"just text, not audio\n" * 10), model="whisper-1"
        )
    assert caught.value.code == "audio_undecodable"
    assert "notes.ogg" in caught.value.message
    status, _, body = await api.transcribe(b"\x00" * 100)
    assert status == 400 and json.loads(body)["error"]["code"] == "audio_undecodable"


async def test_too_long_audio_is_400_naming_the_limit(
    make_api: ApiFactory, prompt_note: bytes
) -> None:
    api = await make_api(voice_settings={"max_seconds": 2})
    with pytest.raises(openai.BadRequestError) as caught:
        await api.client.audio.transcriptions.create(
            file=("voice.ogg", prompt_note), model="whisper-1"
        )
    assert caught.value.code == "audio_too_long"
    assert "the limit is 2 s" in caught.value.message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"response_format": "xml"}, "response_format:"),
        ({"language": "english!"}, "language:"),
    ],
)
async def test_invalid_fields_are_400_naming_the_field(
    make_api: ApiFactory, prompt_note: bytes, fields: dict[str, str], message: str
) -> None:
    api = await make_api()
    status, _, body = await api.transcribe(prompt_note, **fields)
    assert status == 400
    assert json.loads(body)["error"]["message"].startswith(message)


async def test_missing_file_is_400_and_a_wrong_content_type_415(make_api: ApiFactory) -> None:
    api = await make_api()
    form = aiohttp.FormData()
    form.add_field("model", "whisper-1")
    form.add_field("other", b"x", filename="x.bin")
    status, _, body = await api.post("/v1/audio/transcriptions", data=form)
    assert status == 400 and "file: is required" in json.loads(body)["error"]["message"]
    status, _, body = await api.post("/v1/audio/transcriptions", json={"file": "x"})
    error = json.loads(body)["error"]
    assert status == 415 and error["code"] == "unsupported_media_type"
    assert "multipart/form-data" in error["message"] and "application/json" in error["message"]
    status, _, body = await api.post(
        "/v1/audio/speech", data=json.dumps({"input": "hi"}), headers={"Content-Type": "text/plain"}
    )
    error = json.loads(body)["error"]
    assert status == 415 and "'Content-Type: application/json'" in error["message"]


# --------------------------------------------------------------------------- speech


def _probe(data: bytes) -> tuple[str, str, float]:
    with av.open(io.BytesIO(data)) as c:
        return c.format.name, c.streams.audio[0].codec_context.name, (c.duration or 0) / 1e6


async def test_openai_client_speech_round_trip(make_api: ApiFactory) -> None:
    api = await make_api()
    text = "The tests passed and the report is in your workspace."
    response = await api.client.audio.speech.create(
        model="tts-1", voice="alloy", input=text, response_format="opus"
    )
    ogg = response.content
    assert response.response.headers["content-type"] == "audio/opus"
    assert response.response.headers["x-voice-engine"] == "piper"
    fmt, codec, seconds = _probe(ogg)
    assert (fmt, codec) == ("ogg", "opus") and 2 < seconds < 8
    heard = await api.client.audio.transcriptions.create(file=("r.ogg", ogg), model="whisper-1")
    assert wer(text, heard.text) <= 0.2, heard.text


@pytest.mark.parametrize(
    ("fmt", "mime", "container"),
    [
        (None, "audio/mpeg", "mp3"),  # OpenAI's default is mp3
        ("wav", "audio/wav", "wav"),
        ("flac", "audio/flac", "flac"),
        ("aac", "audio/aac", "aac"),
    ],
)
async def test_speech_formats(
    make_api: ApiFactory, fmt: str | None, mime: str, container: str
) -> None:
    api = await make_api()
    body: dict[str, Any] = {"model": "tts-1", "voice": "alloy", "input": "One two three."}
    if fmt:
        body["response_format"] = fmt
    status, ctype, data = await api.post("/v1/audio/speech", json=body)
    assert (status, ctype) == (200, mime)
    assert _probe(data)[0] == container


async def test_speech_pcm_is_raw_24khz(make_api: ApiFactory) -> None:
    # espeak-ng speaks the same text identically every time (Piper varies its timing a little)
    voice = VoiceService(VoiceSettings(tts_engine="espeak"), tts=[EspeakEngine()])
    api = await make_api(voice=voice)
    wav = await api.client.audio.speech.create(
        model="tts-1", voice="alloy", input="One two three.", response_format="wav"
    )
    pcm = await api.client.audio.speech.create(
        model="tts-1", voice="alloy", input="One two three.", response_format="pcm"
    )
    seconds = _probe(wav.content)[2]
    assert len(pcm.content) % 2 == 0
    assert len(pcm.content) == pytest.approx(seconds * 24000 * 2, rel=0.01)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"voice": "alloy"}, "input:"),
        ({"input": "   "}, "input:"),
        ({"input": "x" * 4097}, "input: is 4097 characters long; the limit is 4096"),
        ({"input": "hi", "response_format": "ogg-vorbis"}, "response_format:"),
        ({"input": "hi", "speed": 9}, "speed:"),
        ({"input": "hi", "speed": True}, "speed:"),
        ({"input": "hi", "stream_format": "sse"}, "stream_format:"),
        ([1, 2], "body: must be a JSON object"),
    ],
)
async def test_invalid_speech_requests_are_400(
    make_api: ApiFactory, body: Any, message: str
) -> None:
    api = await make_api()
    status, _, data = await api.post("/v1/audio/speech", json=body)
    assert status == 400
    assert json.loads(data)["error"]["message"].startswith(message)


async def test_synthesis_failure_is_500(make_api: ApiFactory) -> None:
    voice = VoiceService(VoiceSettings(tts_engine="espeak"), tts=[EspeakEngine("xx-nope")])
    api = await make_api(voice=voice)
    status, _, data = await api.post("/v1/audio/speech", json={"input": "hello"})
    assert status == 500
    assert json.loads(data)["error"]["code"] == "synthesis_failed"


# --------------------------------------------------------------------------- limits, auth, 503


async def test_same_auth_as_chat(make_api: ApiFactory, prompt_note: bytes) -> None:
    api = await make_api(api_keys=("sk-right",), key="sk-wrong")
    with pytest.raises(openai.AuthenticationError) as caught:
        await api.client.audio.transcriptions.create(file=("v.ogg", prompt_note),
                                                     model="whisper-1")
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await api.client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert (await api.transcribe(prompt_note))[0] == 401
    assert (await api.post("/v1/audio/speech", json={"input": "hi"}))[0] == 401
    good = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="sk-right", max_retries=0)
    try:
        result = await good.audio.transcriptions.create(file=("v.ogg", prompt_note),
                                                        model="whisper-1")
        assert wer(PROMPT_5S, result.text) <= 0.15
        assert (await good.audio.speech.create(model="tts-1", voice="a", input="hi")).content
    finally:
        await good.close()


async def test_same_body_size_limit_as_chat(make_api: ApiFactory, prompt_note: bytes) -> None:
    api = await make_api(max_body_bytes=len(prompt_note) // 2)
    with pytest.raises(openai.APIStatusError) as caught:
        await api.client.audio.transcriptions.create(file=("v.ogg", prompt_note),
                                                     model="whisper-1")
    assert caught.value.status_code == 413
    assert "larger than the limit" in caught.value.message
    status, _, body = await api.transcribe(prompt_note)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    status, _, body = await api.post(
        "/v1/audio/speech", json={"input": "x" * 4000, "voice": "v" * len(prompt_note)}
    )
    assert status == 413


async def test_no_engine_installed_is_503_naming_the_extra(
    make_api: ApiFactory, prompt_note: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # as if not installed
    missing_stt = FasterWhisperEngine(bundled_model_path() or "")
    no_voice = PiperEngine(str(tmp_path / "none.onnx"))
    voice = VoiceService(
        VoiceSettings(), stt=missing_stt, tts=[no_voice, EspeakEngine(program="no-espeak")]
    )
    api = await make_api(voice=voice)
    with pytest.raises(openai.InternalServerError) as caught:
        await api.client.audio.transcriptions.create(file=("v.ogg", prompt_note),
                                                     model="whisper-1")
    assert caught.value.status_code == 503
    assert caught.value.code == "voice_unavailable"
    assert VOICE_EXTRA in caught.value.message
    status, _, body = await api.post("/v1/audio/speech", json={"input": "hi"})
    assert status == 503
    assert "apt-get install espeak-ng" in json.loads(body)["error"]["message"]


async def test_without_a_voice_service_the_endpoints_are_503(
    make_api: ApiFactory, prompt_note: bytes
) -> None:
    api = await make_api(voice=None)
    status, _, body = await api.transcribe(prompt_note)
    assert status == 503 and json.loads(body)["error"]["code"] == "voice_unavailable"
    status, _, _ = await api.post("/v1/audio/speech", json={"input": "hi"})
    assert status == 503


async def test_request_cap_is_503_server_busy(make_api: ApiFactory, prompt_note: bytes) -> None:
    import asyncio

    api = await make_api(max_concurrent_requests=1)
    first = asyncio.create_task(api.transcribe(prompt_note))
    await asyncio.sleep(0.05)
    status, _, body = await api.transcribe(prompt_note)
    assert status == 503 and json.loads(body)["error"]["code"] == "server_busy"
    assert (await first)[0] == 200


def test_every_documented_audio_status_was_seen(request: pytest.FixtureRequest) -> None:
    """Runs last in this module: each documented audio response met a real one."""
    skip_unless_whole_module(request, __name__)
    documented = {  # 403 and 421 (the request guard) are produced by tests/test_http_guard.py
        (path, status)
        for path in AUDIO_PATHS
        for status in DOC["paths"][path]["post"]["responses"]
        if status not in ("403", "421")
    }
    assert not documented - SEEN, f"documented but never produced: {sorted(documented - SEEN)}"
