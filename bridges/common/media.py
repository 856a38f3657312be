"""Facts about media files that the platforms ask for when a bot sends them (pure)."""

from __future__ import annotations

import struct


def ogg_duration(data: bytes) -> float | None:
    """Seconds of audio in an Ogg/Opus (or Ogg/Vorbis) file, from its last page's granule
    position; ``None`` if ``data`` is not such a file.

    Telegram shows a voice note's length from the ``duration`` the bot sends (0:00
    without it), and Discord needs it for voice messages.
    """
    if not data.startswith(b"OggS") or len(data) < 28:
        return None
    first = _first_packet(data)
    if first.startswith(b"OpusHead") and len(first) >= 12:
        rate, pre_skip = 48000, struct.unpack_from("<H", first, 10)[0]
    elif first.startswith(b"\x01vorbis") and len(first) >= 16:
        rate, pre_skip = struct.unpack_from("<I", first, 12)[0], 0
    else:
        return None
    last = data.rfind(b"OggS")
    while last > 0 and len(data) - last < 27:
        last = data.rfind(b"OggS", 0, last)
    if last < 0 or rate <= 0:
        return None
    granule: int = struct.unpack_from("<q", data, last + 6)[0]
    if granule < 0:
        return None
    return max(0.0, float(granule - pre_skip) / float(rate))


def _first_packet(data: bytes) -> bytes:
    segments = data[26]
    start = 27 + segments
    size = sum(data[27 : 27 + segments])
    return data[start : start + size]
