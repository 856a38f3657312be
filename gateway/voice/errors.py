"""The voice errors: :class:`~gateway.errors.GatewayError` subclasses with a stable ``code``.

Every message is a sentence a person can act on, so a chat bridge may show it as is. The
HTTP API answers with the status of the kind and ``code`` as the OpenAI error code
(:func:`gateway.api.convert.http_error_from_exc`).
"""

from __future__ import annotations

from typing import ClassVar

from gateway.errors import ErrorKind, GatewayError
from gateway.install import install_command

#: What to install for each part of the voice support (named in the messages): the command
#: that fits this installation (a checkout, pipx, uv tool; the package is not on PyPI).
VOICE_EXTRA = install_command("voice")
WHISPER_EXTRA = install_command("whisper", first="torch==2.13.0")
ESPEAK_INSTALL = "apt-get install espeak-ng (Debian/Ubuntu) or brew install espeak-ng (macOS)"


class VoiceError(GatewayError):
    """Base of the voice errors. ``code`` names the case for programs."""

    code: ClassVar[str | None] = "voice_error"

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(kind, message)


class VoiceUnavailable(VoiceError):
    """A package, model or program the voice support needs is not installed or not usable.

    ``install`` is the command that fixes it (also part of the message).
    """

    code = "voice_unavailable"

    def __init__(self, message: str, *, install: str = "") -> None:
        super().__init__(ErrorKind.UNAVAILABLE, message)
        self.install = install


class AudioDecodeError(VoiceError):
    """The data is not audio that can be decoded (or it holds no sound at all)."""

    code = "audio_undecodable"

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.INVALID_REQUEST, message)


class AudioTooLong(VoiceError):
    """The audio is longer than ``voice.max_seconds``."""

    code = "audio_too_long"

    def __init__(self, message: str, *, limit: float, duration: float | None) -> None:
        super().__init__(ErrorKind.INVALID_REQUEST, message)
        self.limit = limit
        #: the audio's length in seconds, when known (``None``: it was still going at the limit)
        self.duration = duration


class NoSpeech(VoiceError):
    """The audio decoded fine but nothing was said in it (silence, noise, an empty result)."""

    code = "no_speech"

    def __init__(self, message: str, *, duration: float, language: str | None = None) -> None:
        super().__init__(ErrorKind.INVALID_REQUEST, message)
        self.duration = duration
        self.language = language


class SynthesisFailed(VoiceError):
    """A text-to-speech engine that is installed failed on this text."""

    code = "synthesis_failed"

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.INTERNAL, message)
