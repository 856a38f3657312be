"""The error report of :func:`~gateway.config.load_settings`: one line per problem, each
naming where the value came from (file or environment variable) and its dotted key."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import (
    BaseModel,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from gateway.config.paths import _SECRET_KEYS, ENV_NESTED_DELIMITER, ENV_PREFIX
from gateway.config.sections import _flatten, _show
from gateway.config.settings import _NAMED_ENV_VARS, Settings

_MISSING = object()


def _walk(data: Any, loc: tuple[str | int, ...]) -> Any:
    for part in loc:
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and str(part).isdigit() and int(part) < len(data):
            data = data[int(part)]  # an entry of an array of tables ([[schedules]])
        else:
            return _MISSING
    return data


class _Report:
    """Collects configuration problems and attributes each to the source that gave it."""

    def __init__(self, toml_label: str, toml_data: dict[str, Any]) -> None:
        self.toml_label = toml_label
        self.toml_data = toml_data
        self.problems: list[str] = []
        self.reported: set[str] = set()
        #: path in the config → (environment variable that set it, its value)
        self.env_origins: dict[tuple[str, ...], tuple[str, Any]] = {}
        #: variables that came from the env file → that file (named in the problem's line)
        self.env_file_names: dict[str, str] = {}

    def env_label(self, name: str) -> str:
        where = self.env_file_names.get(name)
        return f"{where}: {name}" if where else name

    def add(self, source: str, dotted: str, text: str) -> None:
        source = ", ".join(self.env_label(part) for part in source.split(", "))
        line = f"{source}: {dotted}: {text}" if dotted else f"{source}: {text}"
        if line not in self.problems:
            self.problems.append(line)
        self.reported.add(dotted)

    # -- checks before validation

    def check_toml_secrets(self) -> None:
        for loc, env_var in _SECRET_KEYS.items():
            if _walk(self.toml_data, loc) is not _MISSING:
                self.add(
                    self.toml_label,
                    ".".join(loc),
                    f"secrets do not belong in the config file; set the {env_var}"
                    " environment variable instead",
                )

    def check_env(self, environ: Mapping[str, str]) -> None:
        for name, (section, key) in _NAMED_ENV_VARS.items():
            if environ.get(name, "").strip():
                self.env_origins[(section, key)] = (name, environ[name].strip())
        for name, value in sorted(environ.items()):
            if name.upper().startswith(ENV_PREFIX):
                self._check_prefixed(name, value)

    def _check_prefixed(self, name: str, value: str) -> None:
        parts = tuple(name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER))
        dotted = ".".join(parts)
        if not all(parts):
            self.add(
                name, dotted, "malformed name; use CMG_<SECTION>__<KEY>, e.g. CMG_SERVER__PORT"
            )
            return
        model: type[BaseModel] = Settings
        for depth, part in enumerate(parts):
            fields = model.model_fields
            if part not in fields:
                self.add(
                    name,
                    dotted,
                    _unknown_key_text(
                        model, parts[:depth], part, env=True, rest=parts[depth + 1 :]
                    ),
                )
                return
            annotation = fields[part].annotation
            here = parts[: depth + 1]
            rest = parts[depth + 1 :]
            if here in _SECRET_KEYS:
                self.add(name, dotted, f"is a secret; set {_SECRET_KEYS[here]} instead")
                return
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                if not rest:
                    self._check_json_section(name, here, value)
                    return
                model = annotation
                continue
            if rest:
                if get_origin(annotation) is dict:
                    self.add(
                        name,
                        dotted,
                        "keys inside a table cannot be set one variable each (variable names are"
                        f" read case-insensitively); set {ENV_PREFIX}"
                        f"{ENV_NESTED_DELIMITER.join(p.upper() for p in here)} to a JSON object,"
                        ' e.g. \'{"NAME": "value"}\'',
                    )
                else:
                    self.add(name, dotted, f"unknown key: {'.'.join(here)} has no sub-keys")
                return
            if get_origin(annotation) is dict:
                self._check_json_section(name, here, value)
                return
            self.env_origins[here] = (name, value)
            return

    def _check_json_section(self, name: str, loc: tuple[str, ...], value: str) -> None:
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = _MISSING
        if not isinstance(decoded, dict):
            self.add(name, ".".join(loc), f"expected a JSON object, got {_show(value)}")
            return
        for secret_loc, env_var in _SECRET_KEYS.items():
            if secret_loc[: len(loc)] == loc and _walk(decoded, secret_loc[len(loc) :]) is not (
                _MISSING
            ):
                self.add(name, ".".join(secret_loc), f"is a secret; set {env_var} instead")
        self.env_origins[loc] = (name, decoded)

    # -- after validation

    def add_validation_errors(self, errors: list[ErrorDetails]) -> None:
        for error in errors:
            loc = tuple(str(part) for part in error["loc"])
            kind = error["type"]
            ctx = error.get("ctx") or {}
            if kind == "cmg_cross_field":
                section = loc
                fields = tuple(str(ctx.get("fields", "")).split(","))
                dotted = ".".join((*section, fields[0]))
                sources = self._sources_for([(*section, f) for f in fields])
                self.add(sources, dotted, error["msg"])
                continue
            dotted = ".".join(loc)
            if dotted in self.reported:
                continue
            source = self._sources_for([loc])
            if kind == "extra_forbidden":
                model = _model_at(loc[:-1])
                text = (
                    _unknown_key_text(model, loc[:-1], loc[-1], env=False)
                    if model is not None
                    else "unknown key"
                )
                self.add(source, dotted, text)
                continue
            if loc in _SECRET_KEYS:
                self.add(source, dotted, f"invalid value (not shown): {error['msg']}")
                continue
            expected = _expected_text(loc)
            got = _show(error["input"])
            if kind.startswith("cmg_"):
                self.add(source, dotted, error["msg"])
            elif expected is None:
                self.add(source, dotted, f"{_lower_first(error['msg'])}, got {got}")
            else:
                self.add(source, dotted, f"expected {expected}, got {got}")

    def _sources_for(self, locs: list[tuple[str, ...]]) -> str:
        labels: list[str] = []
        for loc in locs:
            label = self._source_for(loc)
            if label and label not in labels:
                labels.append(label)
        return ", ".join(labels) if labels else "defaults"

    def _source_for(self, loc: tuple[str, ...]) -> str | None:
        for depth in range(len(loc), 0, -1):
            origin = self.env_origins.get(loc[:depth])
            if origin is not None:
                name, value = origin
                if depth == len(loc) or _walk(value, loc[depth:]) is not _MISSING:
                    return name
        if _walk(self.toml_data, loc) is not _MISSING:
            return self.toml_label
        # a section-level problem: whoever set something inside it
        inside = [name for path, (name, _) in self.env_origins.items() if path[: len(loc)] == loc]
        if inside:
            return inside[0]
        return None


def _model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Settings
    for part in loc:
        info = model.model_fields.get(part)
        if info is None or not (
            isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        ):
            return None
        model = info.annotation
    return model


def _field_at(loc: tuple[str, ...]) -> tuple[FieldInfo, tuple[str, ...]] | None:
    """The field named by ``loc`` and what is left of ``loc`` below it (inside a table)."""
    model: type[BaseModel] = Settings
    for depth, part in enumerate(loc):
        info = model.model_fields.get(part)
        if info is None:
            return None
        annotation = info.annotation
        if (
            depth + 1 < len(loc)
            and isinstance(annotation, type)
            and issubclass(annotation, BaseModel)
        ):
            model = annotation
            continue
        return info, loc[depth + 1 :]
    return None


def _unknown_key_text(
    model: type[BaseModel],
    parent: tuple[str, ...],
    key: str,
    *,
    env: bool,
    rest: tuple[str, ...] = (),
) -> str:
    known = [name for name in model.model_fields if (*parent, name) not in _SECRET_KEYS]
    where = f"[{'.'.join(parent)}]" if parent else "the top level"
    guess: tuple[str, ...] | None = None
    for name in known:  # CMG_SERVER_PORT: one underscore where two belong
        if env and key.startswith(name + "_"):
            guess = (*parent, name, key[len(name) + 1 :], *rest)
            break
    if guess is None:
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            guess = (*parent, close[0], *rest)
    if guess is not None:
        hint = (
            ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in guess)
            if env
            else ".".join(guess)
        )
        return f"unknown key (did you mean {hint}?)"
    return f"unknown key; {where} accepts: {', '.join(known)}"


_TYPE_WORDS: dict[Any, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    Path: "a path",
}


def _expected_text(loc: tuple[str, ...]) -> str | None:
    """What the field at ``loc`` accepts, in words: "an integer from 1 to 65535"."""
    found = _field_at(loc)
    if found is None:
        return None
    info, below = found
    annotation = info.annotation
    if below:  # inside a table: describe its values
        if get_origin(annotation) is dict and len(below) == 1:
            return _TYPE_WORDS.get(get_args(annotation)[1])
        return None
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(json.dumps(v) for v in get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"a table [{'.'.join(loc)}]"
    if get_origin(annotation) is dict:
        return "a table of strings"
    plain = _flatten(annotation) - {type(None)}
    if len(plain) != 1:
        return None
    (base,) = plain
    words = _TYPE_WORDS.get(base)
    if words is None:
        return None
    ge = le = gt = min_len = None
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            ge = bound.ge
        elif isinstance(bound, annotated_types.Le):
            le = bound.le
        elif isinstance(bound, annotated_types.Gt):
            gt = bound.gt
        elif isinstance(bound, annotated_types.MinLen):
            min_len = bound.min_length
    if ge is not None and le is not None:
        words += f" from {ge} to {le}"
    elif ge is not None:
        words += f" of at least {ge}"
    elif gt is not None:
        words += f" greater than {gt}"
    elif le is not None:
        words += f" of at most {le}"
    if min_len:
        words = "a non-empty string" if base is str else words
    if type(None) in _flatten(annotation):
        words += " (or leave it unset)"
    return words


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text
