"""Console mode: chat with the bot in a terminal, through the same handlers, history and worker as Discord.

Interactive on a TTY (a "thinking" indicator while queued, tokens as they come), and scriptable with
piped input: one message per line, answers on stdout, exit at end of input.  The conversation lives in
Redis like a channel's, so a second run continues it.  Commands: `/reset`, `/help`, `/quit`, `/model` (the
chat model, bot/console_models.py; every request here is made in the console's settings scope).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from handlers.agent import AGENT_STEPS, AgentHandler, format_step
from handlers.history import conversation_id
from handlers.images import Attachment
from handlers.text_files import CUT_NOTE, TextFileIntake, render
from handlers.types import InputError, Reply, Request, Update

from .console_images import article_command, image_command, split_path
from .console_models import CONSOLE_GUILD, model_command
from .renderer import NO_ANSWER
from .runtime import Runtime

HELP = """Commands:
  /reset          forget this conversation
  /agent [--file PATH] TASK   the agent: thinks, runs Python in a sandbox (with the file in its working
                  directory), searches arXiv (steps shown as they happen)
  /image PATH [question]   describe an image, or ask about it (needs a vision engine)
  /file PATH [question]    read a text file (.txt .md .py .csv .json .log ...) and ask about it
  /article TITLE [--image PATH]... [--paragraphs N] [--notes PATH]   an illustrated article
                  (InternLM-XComposer), written from the source notes in a text file if given
  /model [NAME | --clear]   list the chat models (CHAT_MODELS) and choose the one this console uses
  /help           this text
  /quit           leave (Ctrl-D works too)
Anything else is a message to the model."""

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

Command = Callable[["Console", str], Awaitable[None]]  # the image commands take the same shape


class Console:
    """One terminal conversation."""

    commands: dict[str, Command] = {}

    def __init__(
        self, runtime: Runtime, session: str = "default", out: TextIO = sys.stdout, err: TextIO = sys.stderr
    ) -> None:
        self.runtime = runtime
        self.conversation = conversation_id(console=session)
        self.out = out
        self.err = err
        self.interactive = sys.stdin.isatty() and out.isatty()

    def print(self, text: str = "", *, end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def dim(self, text: str) -> str:
        """`text` dimmed (ANSI faint) on a terminal; plain when the output is a file or a pipe."""
        return f"\x1b[2m{text}\x1b[0m" if text and self.out.isatty() else text

    def status(self, text: str) -> None:
        """A transient line on stderr (only on a terminal)."""
        if self.interactive:
            self.err.write("\r\x1b[2K" + text)
            self.err.flush()

    def clear_status(self) -> None:
        if self.interactive:
            self.err.write("\r\x1b[2K")
            self.err.flush()

    async def handle_line(self, line: str) -> bool:
        """Answer one line; False means the user wants to leave."""
        line = line.strip()
        if not line:
            return True
        if line.startswith("/"):
            name, _, rest = line[1:].partition(" ")
            if name in ("quit", "exit"):
                return False
            command = self.commands.get(name)
            if command is None:
                self.print(f"Unknown command /{name}. Type /help.")
            else:
                await command(self, rest.strip())
            return True
        try:
            reply = await self.runtime.chat.ask(Request(conversation=self.conversation, text=line, guild=CONSOLE_GUILD))
        except InputError as exc:
            self.print(str(exc))
            return True
        await self.render(reply)
        return True

    async def render(self, reply: Reply) -> Update | None:
        """Stream a reply to stdout; returns the final update."""
        shown = 0
        thought = 0  # characters of thinking printed
        tick = 0
        final: Update | None = None
        async for update in self.runtime.chat.follow(reply):
            if update.kind in ("queued", "no_worker"):
                tick += 1
                note = (
                    f"queued — position {update.position}"
                    if update.kind == "queued" and update.position
                    else "thinking"
                    if update.kind == "queued"
                    else update.data.get("message", "")
                )
                self.status(f"{SPINNER[tick % len(SPINNER)]} {note}")
            elif update.kind == "restart":
                self.clear_status()
                if shown or thought:
                    self.print("\n[the worker restarted; answering again]")
                shown = thought = 0
            elif update.kind == "thinking":  # a reasoning model's thinking, dimmed, before its answer
                self.clear_status()
                thinking = str(update.data.get("thinking", ""))
                self.print(self.dim(thinking[thought:]), end="")
                thought = len(thinking)
            elif update.kind in ("text", "done"):
                self.clear_status()
                if thought and not shown and update.text:
                    self.print("\n")  # the answer starts below the thinking
                self.print(update.text[shown:], end="")
                shown = len(update.text)
                if update.kind == "done":
                    if update.data.get("unclosed_thinking") and not update.text.strip():
                        self.print(("\n" if thought else "") + NO_ANSWER, end="")
                    suffix = " [stopped]" if update.data.get("stopped") else ""
                    self.print(suffix)
            elif update.kind == "step":
                self.on_step(update)
            elif update.kind == "file":
                await self.on_file(update)
            elif update.kind == "error":
                self.clear_status()
                if shown:
                    self.print()
                self.print(f"⚠️ {update.data.get('message', 'error')}")
            if update.final:
                final = update
        return final

    def on_step(self, update: Update) -> None:
        """Agent steps and article stages (their issues render them in detail)."""
        if update.data.get("type") in AGENT_STEPS:
            if update.data["type"] != "answer":  # the answer itself is printed when the run is done
                self.clear_status()
                self.print(format_step(update.data))
            return
        title = update.data.get("title") or update.data.get("type") or "step"
        self.clear_status()
        self.print(f"[{title}]")

    async def on_file(self, update: Update) -> None:
        """A file a job produced (an agent's figure): saved under DATA_DIR/files, its path printed."""
        blob = await self.runtime.bus.get_blob(str(update.data.get("blob", "")))
        if blob is None:
            return
        name = Path(str(update.data.get("name") or "file")).name
        folder = Path(self.runtime.settings.data_dir) / "files"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{str(update.data.get('blob'))[:8]}-{name}"
        path.write_bytes(blob[0])
        self.clear_status()
        self.print(f"🖼️ {name} saved to {path}")

    async def run(self, stdin: TextIO = sys.stdin) -> None:
        if self.interactive:
            self.print("InternLM console — type a message, /help for commands, Ctrl-D to leave.")
        loop = asyncio.get_running_loop()
        while True:
            if self.interactive:
                self.out.write("you › ")
                self.out.flush()
            line = await loop.run_in_executor(None, stdin.readline)
            if not line:
                break
            if self.interactive:
                self.out.write("bot › ")
            if not await self.handle_line(line):
                break


async def _reset(console: Console, _rest: str) -> None:
    dropped = await console.runtime.chat.reset(console.conversation)
    console.print(f"Conversation cleared ({dropped} turns forgotten).")


async def _help(console: Console, _rest: str) -> None:
    console.print(HELP)


Console.commands.update({"reset": _reset, "help": _help})


async def _agent(console: Console, rest: str) -> None:
    """`/agent [--file PATH] <task>`: the Lagent agent with sandboxed Python and arXiv search, its steps printed;
    the file (checked as a Discord attachment is) is in the working directory of the agent's Python."""
    try:
        files = []
        if rest.startswith(("--file ", "-f ")):
            path, rest = split_path(rest.partition(" ")[2])
            try:
                attachment = Attachment.from_path(path)
            except OSError:
                raise InputError(f"I can't open {path!r}: no such file.") from None
            files = await TextFileIntake(console.runtime.settings).read([attachment], whole=True)
        reply = await AgentHandler(console.runtime.chat).ask(
            console.conversation, rest, files=files, guild=CONSOLE_GUILD
        )
    except InputError as exc:
        console.print(str(exc))
        return
    await console.render(reply)


Console.commands["agent"] = _agent
Console.commands.update({"image": image_command, "article": article_command})  # bot/console_images.py
Console.commands["model"] = model_command  # bot/console_models.py


async def _file(console: Console, rest: str) -> None:
    """`/file <path> [question]`: a text file read into the message, with the checks Discord attachments get."""
    path, question = split_path(rest)
    if not path:
        console.print("Usage: /file <path> [question]   (quote the path if it has spaces)")
        return
    try:
        try:
            attachment = Attachment.from_path(path)
        except OSError:
            raise InputError(f"I can't open {path!r}: no such file.") from None
        files = await TextFileIntake(console.runtime.settings).read([attachment])
        for f in files:
            if f.cut:
                console.print("✂️ " + CUT_NOTE.format(name=f.name, kept=len(f.text), total=f.total_chars))
        reply = await console.runtime.chat.ask(
            Request(conversation=console.conversation, text=question, files=render(files), guild=CONSOLE_GUILD)
        )
    except InputError as exc:
        console.print(str(exc))
        return
    await console.render(reply)


Console.commands["file"] = _file


async def run_console(runtime: Runtime, session: str = "default") -> None:
    await Console(runtime, session).run()
