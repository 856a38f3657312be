"""Projects: which folder (and default model, appended prompt, permission mode) a
conversation works in.

A conversation's project is part of its key (:func:`gateway.engine.api.project_key`): the
default project (``claude.workspace``) keeps the frontend's bare key, any other adds
``|<name>`` (never part of a chat key or a sanitized API conversation id), so each
(chat, project) pair is a conversation of its own, kept and resumable.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.engine.config import EngineConfig, Project
from gateway.errors import ErrorKind, GatewayError
from gateway.keys import DEFAULT_PROJECT, PROJECT_SEPARATOR, base_key, project_key
from gateway.store import Store

__all__ = ["PROJECT_SEPARATOR", "Project", "Projects", "Worktree", "base_key", "project_key"]

log = logging.getLogger(__name__)


class Projects:
    """The configured projects, and what each means for a conversation's process."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.table = config.project_table()
        self._configs: dict[str, EngineConfig] = {}

    def names(self) -> list[str]:
        return list(self.table)

    def of(self, key: str) -> Project:
        """The project of a conversation key (``default`` unless it ends in ``|<name>``)."""
        _, sep, tail = key.rpartition(PROJECT_SEPARATOR)
        if sep and tail in self.table:
            return self.table[tail]
        return self.table[DEFAULT_PROJECT]

    def get(self, name: str | None) -> Project:
        """The project called ``name`` (None/"" = default); unknown names are a 400 that
        lists the valid ones."""
        if not name:
            return self.table[DEFAULT_PROJECT]
        found = self.table.get(name.strip())
        if found is None:
            raise GatewayError(
                ErrorKind.INVALID_REQUEST,
                f"unknown project {name!r}; the projects are: {', '.join(self.table)}",
            )
        return found

    def check_paths(self) -> None:
        """Start-up: every project folder exists and is a directory (one-line errors)."""
        for project in self.config.projects:
            path = project.path
            if not path.exists():
                problem = "does not exist"
            elif not path.is_dir():
                problem = "is not a directory"
            elif project.worktree and not (path / ".git").exists():
                problem = "is no git repository (worktree = true needs one)"
            else:
                continue
            raise GatewayError(
                ErrorKind.CONFIG, f"project {project.name!r}: path {path} {problem}"
            )

    def process_config(self, project: Project, cwd: Path) -> EngineConfig:
        """The engine config a process of ``project`` in ``cwd`` is started with."""
        if project.name == DEFAULT_PROJECT and cwd == self.config.workspace:
            return self.config
        cache_key = f"{project.name}\0{cwd}"
        cached = self._configs.get(cache_key)
        if cached is None:
            prompt = "\n\n".join(
                p for p in (self.config.append_system_prompt, project.append_system_prompt)
                if p.strip()
            )
            cached = replace(self.config, workspace=cwd, append_system_prompt=prompt,
                             default_model=project.default_model or self.config.default_model)
            self._configs[cache_key] = cached
        return cached

    async def workdir(self, key: str, store: Store) -> Path:
        """The folder of a conversation: its project's, or for a ``worktree = true``
        project the worktree it got when it started (made now for a new conversation)."""
        project = self.of(key)
        if not project.worktree:
            return project.path
        row = await store.get_session(key)
        # a session resumed by /resume keeps the folder it was made in (the project's own)
        if row is not None and row.cwd and await asyncio.to_thread(Path(row.cwd).is_dir) and (
            row.session_id or Path(row.cwd) != project.path
        ):
            return Path(row.cwd)
        return await self.add_worktree(project, key)

    def branch(self, key: str, cwd: str) -> str | None:
        """The branch of a conversation working in one of its project's worktrees."""
        project = self.of(key)
        if project.worktree and Path(cwd).parent == self.worktree_root(project):
            return f"claude/{Path(cwd).name}"
        return None

    # ------------------------------------------------------------------ worktrees

    def worktree_root(self, project: Project) -> Path:
        return self.config.worktrees_dir / project.name

    async def add_worktree(self, project: Project, key: str) -> Path:
        """A new git worktree of ``project`` for the conversation ``key``, on a new branch
        ``claude/<name>``; the folder and branch are named after the conversation."""
        base = slug(key.rpartition(PROJECT_SEPARATOR)[0] or key)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = await asyncio.to_thread(new_folder, self.worktree_root(project),
                                         f"{base}-{stamp}")
        name = folder.name
        await git(project.path, "worktree", "add", "-b", f"claude/{name}", str(folder), "HEAD")
        log.info("worktree %s of project %s for %s", folder, project.name, key)
        return folder

    async def worktrees(self, in_use: set[str]) -> list[Worktree]:
        """The git worktrees made for conversations, of every ``worktree = true`` project;
        ``in_use``: the folders conversations still work in."""
        found: list[Worktree] = []
        for project in self.table.values():
            if not project.worktree:
                continue
            root = self.worktree_root(project).resolve()
            listing = await git(project.path, "worktree", "list", "--porcelain")
            for block in listing.split("\n\n"):
                fields = dict(
                    line.split(" ", 1) for line in block.splitlines() if " " in line
                )
                path = Path(fields.get("worktree", ""))
                if path.parent != root:
                    continue
                branch = fields.get("branch", "").removeprefix("refs/heads/")
                found.append(Worktree(project.name, path.name, path, branch,
                                      str(path) in in_use))
        return found

    async def remove_worktree(self, name: str, in_use: set[str]) -> Worktree:
        """Remove the worktree folder ``name`` of a finished conversation. Refused while a
        conversation works in it or it has uncommitted changes; its branch is kept."""
        matches = [w for w in await self.worktrees(in_use) if w.name == name]
        if not matches:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"no worktree called {name!r}")
        tree = matches[0]
        if tree.in_use:
            raise GatewayError(
                ErrorKind.BUSY,
                f"worktree {name} belongs to a conversation that is still open; /new or"
                " /reset it first",
            )
        project = self.table[tree.project]
        await git(project.path, "worktree", "remove", str(tree.path))
        log.info("removed worktree %s of project %s (branch %s kept)", tree.path,
                 project.name, tree.branch)
        return tree


@dataclass(frozen=True)
class Worktree:
    """A git worktree made for a conversation of a ``worktree = true`` project."""

    project: str
    name: str
    path: Path
    branch: str
    #: a conversation still works in it
    in_use: bool


def new_folder(root: Path, name: str) -> Path:
    """A path under ``root`` (created) named ``name``, ``name-2``... whichever is free."""
    root.mkdir(parents=True, exist_ok=True)
    folder, n = root / name, 1
    while folder.exists():
        n += 1
        folder = root / f"{name}-{n}"
    return folder


def slug(text: str) -> str:
    """``text`` as a folder/branch name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:60] or "conversation"


async def git(repo: Path, *args: str) -> str:
    """Run git in ``repo``; its error output becomes the message of a GatewayError."""
    exe = shutil.which("git")
    if exe is None:
        raise GatewayError(ErrorKind.CONFIG, "git is not installed; worktree projects need it")
    proc = await asyncio.create_subprocess_exec(
        exe, "-C", str(repo), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip().splitlines()
        raise GatewayError(
            ErrorKind.INVALID_REQUEST,
            f"git {args[0]} {args[1] if len(args) > 1 else ''} failed in {repo}: "
            f"{text[-1] if text else proc.returncode}",
        )
    return out.decode(errors="replace")
