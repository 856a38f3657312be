"""Model names a person or client may use, and what the CLI is given for each.

* Family names ``claude-opus-4``, ``claude-sonnet-4``, ``claude-haiku-4`` and the short
  ``opus``/``sonnet``/``haiku`` become the CLI's own aliases, so they always mean the
  newest model of that family the subscription offers.
* Pinned ids (``claude-opus-4-5-20251101``, any ``claude-…`` id) pass through verbatim.
* Configured aliases (``[models] aliases``) map a name to any of the above.
* Anything else is a typed error that lists what is valid.

``/v1/models`` lists each model once (:meth:`ModelCatalog.listed_names`): the three family
ids and the configured aliases. The short names are accepted everywhere but not listed, so a
client's model picker does not show every model twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.errors import ErrorKind, GatewayError

FAMILIES: dict[str, str] = {
    "claude-opus-4": "opus",
    "claude-sonnet-4": "sonnet",
    "claude-haiku-4": "haiku",
    "opus": "opus",
    "sonnet": "sonnet",
    "haiku": "haiku",
}

#: one id per family: what a client's model picker shows
LISTED = ("claude-opus-4", "claude-sonnet-4", "claude-haiku-4")

PINNED = re.compile(r"^claude-[a-z0-9]+(?:[-.][a-z0-9]+)*(?:\[1m\])?$")
#: the longest model name accepted: the name goes to the CLI's command line (``--model``),
#: whose arguments Linux caps at 128 KiB, and real ids are under 40 characters
MAX_MODEL_NAME = 100


class ModelCatalog:
    def __init__(self, aliases: Mapping[str, str] | None = None, default: str = "") -> None:
        self.aliases: dict[str, str] = {}
        for name, target in (aliases or {}).items():
            if not name.strip():
                raise GatewayError(ErrorKind.CONFIG, "models.aliases: an alias name is empty")
            if target in self.aliases or target == name:
                raise GatewayError(
                    ErrorKind.CONFIG, f"models.aliases.{name}: must name a model, not an alias"
                )
            try:
                self._resolve_base(target)
            except GatewayError as exc:
                raise GatewayError(
                    ErrorKind.CONFIG, f"models.aliases.{name}: {exc.message}"
                ) from None
            self.aliases[name] = target
        self.default = self.resolve(default) if default else None

    def _resolve_base(self, name: str) -> str:
        key = name.strip()
        if len(key) > MAX_MODEL_NAME:
            raise GatewayError(
                ErrorKind.UNKNOWN_MODEL,
                f"unknown model {key[:40]!r}… ({len(key)} characters); a model name has at"
                f" most {MAX_MODEL_NAME}",
            )
        if key.lower() in FAMILIES:
            return FAMILIES[key.lower()]
        if PINNED.match(key):
            return key
        raise GatewayError(
            ErrorKind.UNKNOWN_MODEL,
            f"unknown model {name!r}; valid: {', '.join(self.public_names())}"
            " or a pinned id such as claude-opus-4-5-20251101",
        )

    def resolve(self, name: str | None) -> str | None:
        """The ``--model`` value for ``name``; ``None`` means the CLI's own default."""
        if name is None or not name.strip():
            return self.default
        key = name.strip()
        if key in self.aliases:
            return self._resolve_base(self.aliases[key])
        return self._resolve_base(key)

    def public_names(self) -> list[str]:
        """Every name a request may use (family ids, short names, configured aliases)."""
        return [*FAMILIES, *self.aliases]

    def listed_names(self) -> list[str]:
        """Each model once: the family ids and the configured aliases."""
        return [*LISTED, *(a for a in self.aliases if a not in LISTED)]
