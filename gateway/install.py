"""How *this* installation of the gateway adds an extra (``voice``, ``whisper``).

The package is not published on PyPI, so ``pip install 'claude-max-gateway[voice]'`` would
fail (or find somebody else's). The command named here fits how the gateway was installed:

* from a checkout (``make run``, ``pip install -e .``):
  ``<this python> -m pip install -e '<checkout>[voice]'``;
* with pipx or ``uv tool install`` from a git URL: the same tool again, with the extra;
* with pip from a URL: ``<this python> -m pip install 'claude-max-gateway[voice] @ <url>'``.
"""

from __future__ import annotations

import json
import shlex
import sys
from importlib import metadata
from pathlib import Path

DIST_NAME = "claude-max-gateway"
#: Where the project lives when nothing better is known (what the README installs from).
CHECKOUT_HINT = "in the gateway's checkout: make run EXTRAS={extra}"


def _direct_url() -> dict[str, object]:
    try:
        text = metadata.distribution(DIST_NAME).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return {}
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def checkout_root() -> Path | None:
    """The source checkout this code runs from (an editable install), if any."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "gateway").is_dir() else None


def install_command(extra: str, first: str = "") -> str:
    """One shell command that adds ``extra`` to this installation; ``first`` is a requirement
    installed before it (``torch==2.13.0``: else pip picks the newest torch, with CUDA)."""
    python = shlex.quote(sys.executable)
    pip_first = f"{python} -m pip install {shlex.quote(first)} && " if first else ""
    root = checkout_root()
    if root is not None:
        return f"{pip_first}{python} -m pip install -e {shlex.quote(f'{root}[{extra}]')}"
    info = _direct_url()
    url = info.get("url")
    if isinstance(url, str) and url:
        vcs = info.get("vcs_info")
        if isinstance(vcs, dict) and isinstance(vcs.get("vcs"), str) and "://" in url:
            url = f"{vcs['vcs']}+{url}" if not url.startswith(f"{vcs['vcs']}+") else url
        spec = shlex.quote(f"{DIST_NAME}[{extra}] @ {url}")
        prefix = Path(sys.prefix)
        if (prefix / "uv-receipt.toml").is_file():
            with_first = f" --with {shlex.quote(first)}" if first else ""
            return f"uv tool install --force{with_first} {spec}"
        if (prefix / "pipx_metadata.json").is_file():
            preinstall = f" --preinstall {shlex.quote(first)}" if first else ""
            return f"pipx install --force{preinstall} {spec}"
        return f"{pip_first}{python} -m pip install {spec}"
    return CHECKOUT_HINT.format(extra=extra)
