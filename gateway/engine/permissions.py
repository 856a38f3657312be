"""Permission modes, one-line descriptions of what Claude wants to do, and "always allow"
rules per conversation.

A conversation runs in one of four modes (the gateway's names for Claude Code's):

* ``ask`` (``default``): every tool that Claude Code would ask about waits for a person;
* ``edits`` (``acceptEdits``): file edits in the workspace go ahead, shell and other tools ask;
* ``plan`` (``plan``): read-only planning, no tool changes anything;
* ``auto`` (``bypassPermissions``): everything goes ahead (the gateway's old behaviour).

An "always allow" :class:`Rule` lets one tool (``Edit``) or one command prefix (``Bash``
``npm test``) go ahead without asking in one conversation; the rules and each
conversation's chosen mode are kept in :class:`PermissionStore` (migration
``m004_permissions``), so they survive a restart and ``/new``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.errors import ErrorKind, GatewayError
from gateway.store import _Tables


class PermissionMode(StrEnum):
    ASK = "ask"
    EDITS = "edits"
    PLAN = "plan"
    AUTO = "auto"

    @property
    def cli(self) -> str:
        """Claude Code's name of the mode (``--permission-mode``, ``set_permission_mode``)."""
        return _CLI[self]

    @property
    def description(self) -> str:
        """What the mode lets Claude do unattended, in one line."""
        return _DESCRIPTIONS[self]

    @property
    def strictness(self) -> int:
        """auto 0 < edits 1 < ask 2 < plan 3."""
        return _ORDER.index(self)

    def stricter(self, other: PermissionMode | None) -> PermissionMode:
        """The stricter of the two (``other`` None: this one)."""
        if other is None or self.strictness >= other.strictness:
            return self
        return other

    @classmethod
    def from_cli(cls, value: str) -> PermissionMode:
        """The mode of a ``claude.permission_mode`` value ("dontAsk" counts as ask: it denies
        what it would ask about; Claude Code's own "auto" classifier counts as edits)."""
        for mode, name in _CLI.items():
            if name == value:
                return mode
        return {"dontAsk": cls.ASK, "auto": cls.EDITS}.get(value, cls.AUTO)

    @classmethod
    def parse(cls, text: str, *, what: str = "permission mode") -> PermissionMode:
        """``ask``/``edits``/``plan``/``auto`` (or Claude Code's names of them); anything else
        is an INVALID_REQUEST naming the choices."""
        value = text.strip()
        for mode in cls:
            if value.lower() == mode.value or value == mode.cli:
                return mode
        choices = ", ".join(m.value for m in cls)
        raise GatewayError(
            ErrorKind.INVALID_REQUEST, f"{value!r} is not a {what}; choose one of: {choices}"
        )


_CLI = {
    PermissionMode.ASK: "default",
    PermissionMode.EDITS: "acceptEdits",
    PermissionMode.PLAN: "plan",
    PermissionMode.AUTO: "bypassPermissions",
}
_ORDER = (PermissionMode.AUTO, PermissionMode.EDITS, PermissionMode.ASK, PermissionMode.PLAN)
_DESCRIPTIONS = {
    PermissionMode.ASK: "every command, edit or fetch waits for your approval",
    PermissionMode.EDITS: "file edits in the workspace go ahead; commands and the rest ask",
    PermissionMode.PLAN: "read-only: Claude plans and explains, runs and changes nothing",
    PermissionMode.AUTO: "everything goes ahead without asking (nobody can stop one action)",
}

#: Tools whose calls change files (shown as "Edit …"; "always allow" allows the tool).
EDIT_TOOLS = frozenset({"Edit", "MultiEdit", "Write", "NotebookEdit"})
#: Programs whose first argument is a sub-command: a rule keeps both words ("npm test").
_SUBCOMMAND_PROGRAMS = frozenset({
    "npm", "npx", "pnpm", "yarn", "bun", "git", "cargo", "go", "docker", "kubectl", "pip",
    "pip3", "uv", "poetry", "make", "python", "python3", "gh", "systemctl", "brew", "apt",
})
#: A command with any of these does more than one thing: no prefix rule allows it.
_SHELL_OPERATORS = re.compile(r"[;&|`<>\n\r]|\$\(")
_LINE = 160


@dataclass(frozen=True)
class Rule:
    """"Always allow" in one conversation: a whole tool (``prefix`` empty) or the Bash
    commands that are ``prefix`` or start with ``prefix`` and a space."""

    tool: str
    prefix: str = ""

    def matches(self, tool: str, tool_input: dict[str, Any]) -> bool:
        if tool != self.tool:
            return False
        if not self.prefix:
            return True
        command = str(tool_input.get("command") or "").strip()
        if _SHELL_OPERATORS.search(command):
            return False
        return command == self.prefix or command.startswith(self.prefix + " ")

    @property
    def label(self) -> str:
        """``npm test`` commands, ``Edit``: what the rule allows, in a few words."""
        return f"“{self.prefix}” commands" if self.prefix else self.tool


def suggest_rule(tool: str, tool_input: dict[str, Any]) -> Rule | None:
    """The rule "always allow" offers for this call: the command's program (and its
    sub-command) for Bash, the whole tool otherwise; ``None`` for a command that chains
    several (``a && b``, pipes, redirections): each part would need its own approval."""
    if tool != "Bash":
        return Rule(tool)
    command = str(tool_input.get("command") or "").strip()
    if not command or _SHELL_OPERATORS.search(command):
        return None
    words = command.split()
    keep = 2 if words[0] in _SUBCOMMAND_PROGRAMS and len(words) > 1 \
        and not words[1].startswith("-") else 1
    return Rule("Bash", " ".join(words[:keep]))


def describe_tool(tool: str, tool_input: dict[str, Any], cwd: str | Path = "") -> str:
    """What the call does, in one line a person understands: ``Run: npm test``,
    ``Edit src/app.py (+12 −3)``, ``Fetch https://…``."""
    i = tool_input
    if tool == "Bash":
        return "Run: " + _short(str(i.get("command") or ""))
    if tool in ("Edit", "MultiEdit"):
        edits = i.get("edits") if tool == "MultiEdit" else [i]
        added = removed = 0
        for edit in edits if isinstance(edits, list) else []:
            if isinstance(edit, dict):
                added += _lines(edit.get("new_string"))
                removed += _lines(edit.get("old_string"))
        return f"Edit {_path(i.get('file_path'), cwd)} (+{added} −{removed})"
    if tool == "Write":
        return f"Write {_path(i.get('file_path'), cwd)} ({_lines(i.get('content'))} lines)"
    if tool == "NotebookEdit":
        return f"Edit the notebook {_path(i.get('notebook_path'), cwd)}"
    if tool == "WebFetch":
        return "Fetch " + _short(str(i.get("url") or ""))
    if tool == "WebSearch":
        return "Search the web: " + _short(str(i.get("query") or ""))
    if tool == "Read":
        return f"Read {_path(i.get('file_path'), cwd)}"
    if tool in ("Glob", "Grep"):
        return f"Search files: {_short(str(i.get('pattern') or ''))}"
    if tool.startswith("mcp__"):
        _, server, name = [*tool.split("__", 2), "", ""][:3]
        return f"Use {name or tool} ({server})"
    shown = _short(json.dumps(i, ensure_ascii=False, sort_keys=True)) if i else ""
    return f"Use {tool}" + (f": {shown}" if shown else "")


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _LINE else line[: _LINE - 1] + "…"


def _lines(text: Any) -> int:
    if not isinstance(text, str) or not text:
        return 0
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def _path(value: Any, cwd: str | Path) -> str:
    path = str(value or "?")
    if cwd:
        root = str(cwd).rstrip("/") + "/"
        if path.startswith(root):
            path = path[len(root):]
    return _short(path)


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class RuleRow:
    id: int
    key: str
    rule: Rule
    created_at: float


class PermissionStore(_Tables):
    """Each conversation's chosen mode and its "always allow" rules (kept across ``/new``:
    they belong to the chat, not to one Claude Code session)."""

    async def mode(self, key: str) -> PermissionMode | None:
        def run() -> PermissionMode | None:
            row = self._db().execute(
                "SELECT mode FROM permission_modes WHERE key = ?", (key,)).fetchone()
            return PermissionMode(row[0]) if row else None

        return await self._run(run)

    async def set_mode(self, key: str, mode: PermissionMode | None) -> None:
        def run() -> None:
            db = self._db()
            if mode is None:
                db.execute("DELETE FROM permission_modes WHERE key = ?", (key,))
            else:
                db.execute(
                    "INSERT INTO permission_modes (key, mode, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET mode = excluded.mode,"
                    " updated_at = excluded.updated_at", (key, mode.value, time.time()))

        await self._run(run)

    async def rules(self, key: str) -> list[RuleRow]:
        def run() -> list[RuleRow]:
            rows = self._db().execute(
                "SELECT id, key, tool, prefix, created_at FROM permission_rules"
                " WHERE key = ? ORDER BY id", (key,)).fetchall()
            return [RuleRow(r[0], r[1], Rule(r[2], r[3]), r[4]) for r in rows]

        return await self._run(run)

    async def add_rule(self, key: str, rule: Rule) -> None:
        def run() -> None:
            try:
                self._db().execute(
                    "INSERT INTO permission_rules (key, tool, prefix, created_at)"
                    " VALUES (?, ?, ?, ?)", (key, rule.tool, rule.prefix, time.time()))
            except sqlite3.IntegrityError:
                pass  # there already

        await self._run(run)

    async def remove_rules(self, key: str, ids: list[int] | None = None) -> int:
        """Remove the rules ``ids`` of ``key`` (None: all of them); how many went."""

        def run() -> int:
            db = self._db()
            if ids is None:
                return db.execute("DELETE FROM permission_rules WHERE key = ?", (key,)).rowcount
            marks = ",".join("?" * len(ids))
            return db.execute(f"DELETE FROM permission_rules WHERE key = ? AND id IN ({marks})",
                              (key, *ids)).rowcount

        return await self._run(run) if ids is None or ids else 0
