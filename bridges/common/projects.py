"""Projects in the chats: ``/project`` lists them and switches this chat, ``/worktrees``
lists (and removes) the git worktrees of finished conversations.

A chat remembers its project (the typed preferences port, so across restarts); its
conversation with the engine is then ``project_key(chat.key, project)``: each (chat,
project) pair is a conversation of its own, kept while the chat works in another project.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bridges.common.commands import Command, CommandContext
from bridges.common.platform import Chat
from gateway.engine import Pref, Project, base_key, project_key
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from bridges.common.bridge import ChatBridge

log = logging.getLogger(__name__)


class ChatProjects:
    """Which project each chat works in, and the /project and /worktrees commands."""

    def __init__(self, bridge: ChatBridge) -> None:
        self.bridge = bridge
        self._chosen: dict[str, str] = {}

    def add_commands(self) -> None:
        self.bridge.commands.add(Command(
            "project", "List the projects, or switch this chat to one", self.cmd_project,
            "[name]"))
        self.bridge.commands.add(Command(
            "worktrees", "Git worktrees of finished conversations; remove one",
            self.cmd_worktrees, "[remove <name>]"))

    async def project(self, chat: Chat) -> Project:
        """The chat's project (``default`` if it chose none, or its choice is gone from
        the configuration)."""
        base = base_key(chat.key)
        name = self._chosen.get(base)
        if name is None:
            name = (await self.bridge.engine.preferences.get(base)).get(Pref.PROJECT, "")
            self._chosen[base] = name
        try:
            return self.bridge.engine.project(name or None)
        except GatewayError:
            log.warning("%s: project %r of %s is no longer configured; using the default",
                        self.bridge.title, name, base)
            return self.bridge.engine.project(None)

    async def key(self, chat: Chat) -> str:
        """The engine's conversation key of ``chat`` in its current project."""
        return project_key(base_key(chat.key), (await self.project(chat)).name)

    async def status_line(self, chat: Chat) -> str:
        project = await self.project(chat)
        info = await self.bridge.engine.describe(await self.key(chat))
        branch = f", branch {info.branch}" if info and info.branch else ""
        folder = info.cwd if info and info.cwd else str(project.path)
        return f"**Project:** {project.name} (`{folder}`{branch})"

    async def cmd_project(self, ctx: CommandContext) -> None:
        engine = self.bridge.engine
        wanted = ctx.args.strip().split()[0] if ctx.args.strip() else ""
        if wanted:
            project = engine.project(wanted)  # unknown: the error names the valid ones
            if self.bridge.busy(ctx.chat):
                await ctx.reply("A turn is running here; /stop it or wait before switching.",
                                markdown=False)
                return
            base = base_key(ctx.chat.key)
            await engine.preferences.set(base, {Pref.PROJECT: project.name})
            self._chosen[base] = project.name
            info = await engine.describe(await self.key(ctx.chat))
            how = (f"it continues its conversation there ({info.turns} turn(s))"
                   if info and info.session_id else "your next message starts its conversation")
            tree = " Each new conversation gets its own git worktree." if project.worktree \
                else ""
            await ctx.reply(f"📁 This chat now works in {project.name} ({project.path}):"
                            f" {how}.{tree}", markdown=False)
            return
        current = await self.project(ctx.chat)
        info = await engine.describe(await self.key(ctx.chat))
        lines = ["Projects:"]
        for project in engine.projects():
            mark = "▶️" if project.name == current.name else "•"
            extra = " (git worktree per conversation)" if project.worktree else ""
            if project.name == current.name and info is not None and info.branch:
                extra += f", branch {info.branch}"
            lines.append(f"{mark} {project.name} — {project.path}{extra}")
        lines += ["", "Switch with /project <name>; each project keeps its own conversation."]
        await ctx.reply("\n".join(lines), markdown=False)

    async def cmd_worktrees(self, ctx: CommandContext) -> None:
        engine = self.bridge.engine
        sub, _, rest = ctx.args.strip().partition(" ")
        if sub.lower() in ("remove", "rm", "delete"):
            name = rest.strip()
            if not name:
                await ctx.reply("Usage: /worktrees remove <name> (/worktrees lists them).",
                                markdown=False)
                return
            gone = await engine.remove_worktree(name)
            await ctx.reply(f"🗑 Removed worktree {gone.name} of {gone.project}; its branch"
                            f" {gone.branch} is kept.", markdown=False)
            return
        trees = await engine.worktrees()
        finished = [t for t in trees if not t.in_use]
        if not trees:
            await ctx.reply("No worktrees: none of the projects makes them, or no"
                            " conversation has started in one yet.", markdown=False)
            return
        lines = [f"Worktrees ({len(trees) - len(finished)} in use by a conversation):"]
        lines += [f"• {t.name} — {t.project}, branch {t.branch}" for t in finished] or [
            "(none of a finished conversation)"]
        lines += ["", "Remove one with /worktrees remove <name> (the branch is kept)."]
        await ctx.reply("\n".join(lines), markdown=False)
