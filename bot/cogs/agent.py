"""`/agent task:<text>`: the Lagent agent, its steps shown live in Discord.

Each step (thought, Python code, tool result, note) is appended to the reply as it happens, by the shared
streamer (bot/replies.py, bot/streamer.py: paced edits, Stop button, overflow into follow-up messages within
Discord's 2000-character limit, no pings).  When a long run would fill more than a couple of messages, older steps
shrink to one line each so the newest step and the answer stay readable.  Figures the code saved arrive
as image attachments after the answer.  With RENDER_MODE=components the reply is a Components V2 container,
each step (thought, code, tool output) its own text display with separators between (a Section would need an
accessory, which a step has none of; bot/layouts.py).  Access and quotas are the shared gate's (bot/access.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from handlers.agent import AgentHandler, format_step
from handlers.types import Update

from .. import i18n
from ..access import admit
from ..attachments import as_attachment
from ..conversations import request_for
from ..renderer import Renderer
from ..replies import stream_reply
from ..targets import InteractionTarget

if TYPE_CHECKING:
    from ..client import InternLMBot

log = logging.getLogger(__name__)

BODY_BUDGET = 3800  # characters of steps kept in full (about two messages); older steps are summarised
KEEP_FULL = 2  # the newest steps are always shown in full

i18n.register(
    {
        "agent_header": {i18n.EN: "🤖 **Agent** — {task}", i18n.ZH: "🤖 **智能体** — {task}"},
        "agent_working": {i18n.EN: "*working…*", i18n.ZH: "*处理中……*"},
        "agent_earlier": {i18n.EN: "*{n} earlier step(s), shortened:*", i18n.ZH: "*前面 {n} 步（已缩略）：*"},
        "agent_answer": {i18n.EN: "**Answer:**", i18n.ZH: "**回答：**"},
    }
)
i18n.register_commands(
    {
        "agent": "智能体",
        "Let the InternLM agent solve a task with Python and arXiv search": (
            "让书生·浦语智能体用 Python 和 arXiv 搜索完成任务"
        ),
        "task": "任务",
        "What the agent should do": "希望智能体做什么",
        "file": "文件",
        "A text file (.csv, .txt, .json, .py …) for the agent's Python to read": (
            "供智能体的 Python 读取的文本文件（.csv、.txt、.json、.py …）"
        ),
    }
)


def one_line(step: dict[str, Any]) -> str:
    """A step shrunk to a single line (for older steps of a long run)."""
    kind = step.get("type")
    if kind == "tool_call" and step.get("code") is not None:
        lines = str(step["code"]).strip().splitlines()
        return f"🐍 Python ({len(lines)} line{'s' if len(lines) != 1 else ''})"
    text = format_step(step).replace("```python", "").replace("```", "").replace("\n", " ").strip()
    return text[:120] + ("…" if len(text) > 120 else "")


class AgentRenderer(Renderer):
    """The task, the steps so far, then the answer — re-rendered in full on every update."""

    def __init__(self, task: str, lang: str = i18n.EN) -> None:
        super().__init__(lang)
        task = " ".join(task.split())
        self.header = i18n.t("agent_header", lang, task=task[:200] + ("…" if len(task) > 200 else ""))
        self.steps: list[dict[str, Any]] = []
        self.final = False

    def render(self, update: Update) -> str | None:
        if update.kind == "step":
            if update.data.get("type") != "answer":  # the answer is shown with the done update
                self.steps.append(dict(update.data))
            return self.body()
        if update.kind == "restart":
            self.steps.clear()
            self.answer = ""
            return self.body()
        if update.kind in ("done", "error"):
            self.final = True
            self.answer = update.text if update.kind == "done" else ""
            return self.body()
        return None

    def body(self) -> str:
        shown = [format_step(s) for s in self.steps]
        total = sum(len(s) + 2 for s in shown)
        cut = 0
        while total > BODY_BUDGET and cut < len(shown) - KEEP_FULL:
            total -= len(shown[cut]) - len(one_line(self.steps[cut]))
            cut += 1
        parts = [self.header]
        if cut:
            parts.append(
                i18n.t("agent_earlier", self.lang, n=cut)
                + "\n"
                + "\n".join(f"• {one_line(s)}" for s in self.steps[:cut])
            )
        parts += [s for s in shown[cut:] if s]
        if self.answer:
            parts.append(f"{i18n.t('agent_answer', self.lang)} {self.answer}")
        elif not self.final:
            parts.append(i18n.t("agent_working", self.lang))
        return self.block_join(parts)  # components mode: each step its own text display, separators between


class Agent(commands.Cog):
    """The `/agent` command."""

    def __init__(self, bot: InternLMBot) -> None:
        self.bot = bot
        self.handler = AgentHandler(bot.runtime.chat)
        # Regenerate runs the task again with its files (the user's turn keeps them: handlers/replay.py).
        bot.regenerable_kinds.add("agent")
        bot.regen_renderers["agent"] = lambda request, lang: AgentRenderer(str(request.payload.get("task") or ""), lang)

    @app_commands.command(
        name=locale_str("agent"),
        description=locale_str("Let the InternLM agent solve a task with Python and arXiv search"),
    )
    @app_commands.rename(task=locale_str("task"), file=locale_str("file"))
    @app_commands.describe(
        task=locale_str("What the agent should do"),
        file=locale_str("A text file (.csv, .txt, .json, .py …) for the agent's Python to read"),
    )
    async def agent_command(
        self,
        interaction: discord.Interaction,
        task: app_commands.Range[str, 1, 4000],
        file: discord.Attachment | None = None,
    ) -> None:
        lang = i18n.lang_for(interaction=interaction)
        await admit(self.bot, interaction, task, lang)
        if file is not None:  # refused privately, from what is declared, before anything is downloaded
            self.bot.images.text_files.check([as_attachment(file)])
        await interaction.response.defer(thinking=True)
        files = await self.bot.images.read_text_files([file], whole=True) if file is not None else []
        request = request_for(interaction, task)
        reply = await self.handler.ask(
            request.conversation,
            task,
            user_name=request.user_name,
            guild=request.guild,
            channel=request.channel,
            files=files,
        )
        await stream_reply(
            self.bot,
            reply,
            InteractionTarget(interaction),
            lang=lang,
            renderer=AgentRenderer(task, lang),
            owner=interaction.user.id,
        )


async def setup(bot: InternLMBot) -> None:
    await bot.add_cog(Agent(bot))
