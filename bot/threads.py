"""Answering in a new thread: `/chat thread:true`, and messages in server channels when `THREAD_REPLIES`
(or the `thread_replies` server/channel setting) is on.

Why one module for both: the rules are the same — where a thread can be opened (a server text channel, not a
thread, not a DM), what it is called (Discord's 1–100 characters, cut cleanly), when Discord archives it (the
channel's `default_auto_archive_duration`, else 24 hours), which permissions the bot needs (Create Public
Threads to open it, Send Messages in Threads to answer in it) — and so is the fallback when it cannot: answer
where the person asked, with a one-line note saying why, so nothing is lost.  Discord can still refuse after
the bot's own check passed (a permission changed a moment ago, a thread already hangs off that message,
50013 / 160004 / an archived or locked channel); `open_thread` turns every refusal into that same note.

A thread opened here is its own conversation (bot/conversations.py: every thread is), and the bot answers
every message in threads it opened without being mentioned again (bot/cogs/chat.py `addressed`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import discord

from models.untrusted import inert

from . import i18n

log = logging.getLogger(__name__)

# Minutes of inactivity before Discord archives a thread: the only values it accepts, and its default.
ARCHIVE_DURATIONS = (60, 1440, 4320, 10080)
DEFAULT_ARCHIVE_MINUTES = 1440
NAME_LIMIT = 100  # Discord's thread names are 1–100 characters

i18n.register(
    {
        "thread_no_permission": {
            i18n.EN: "🧵 I couldn't open a thread here: I need the **Create Public Threads** and **Send Messages in "
            "Threads** permissions in this channel. Answering here instead.",
            i18n.ZH: "🧵 无法在这里创建子区：我需要本频道的“创建公开子区”和“在子区中发送消息”权限。改为在这里回答。",
        },
        "thread_refused": {
            i18n.EN: "🧵 Discord didn't let me open a thread here ({reason}). Answering here instead.",
            i18n.ZH: "🧵 Discord 不允许我在这里创建子区（{reason}）。改为在这里回答。",
        },
        "thread_wrong_channel": {
            i18n.EN: "🧵 Threads can't be opened in this kind of channel, so I'm answering here.",
            i18n.ZH: "🧵 这类频道不能创建子区，所以我在这里回答。",
        },
        "thread_default_name": {i18n.EN: "Chat with {name}", i18n.ZH: "与 {name} 的对话"},
    }
)
i18n.register_commands(
    {
        "thread": "子区",
        "Answer in a new thread named after the question": "在以问题命名的新子区中回答",
    }
)

# Discord's own words for the refusals a thread start can meet (https://discord.com/developers/docs/topics/
# opcodes-and-status-codes#json); anything else is shown by its message.
_REFUSALS = {
    50013: "missing permissions",
    160004: "a thread already exists for this message",
    50083: "the channel is archived",
    50024: "not possible in this channel",
}

_MENTION = re.compile(r"<(?:@[!&]?|#)(\d+)>")
_EMOJI = re.compile(r"<a?:(\w{1,32}):\d+>")
_SPACE = re.compile(r"\s+")


def thread_name(text: str, fallback: str) -> str:
    """A thread name from the question: one line, mentions and custom emoji as plain words, control tokens
    inert, at most 100 characters cut at a word where there is one (with "…"); `fallback` if nothing is left.

    Thread names never ping, but `<@123>` would show as raw digits and `@everyone` as a shout, so both are
    reduced to plain text."""
    name = _EMOJI.sub(r":\1:", text)
    name = _MENTION.sub("", name).replace("@everyone", "everyone").replace("@here", "here")
    name = _SPACE.sub(" ", name).strip(" -_*~`>|")
    name = inert(name)
    if not name:
        name = _SPACE.sub(" ", fallback).strip()[:NAME_LIMIT] or "Chat"
    if _units(name) <= NAME_LIMIT:
        return name
    cut = name[: NAME_LIMIT - 1]
    space = cut.rfind(" ")
    if space >= NAME_LIMIT // 2:  # a word boundary not too far back; CJK text has none, cut anywhere
        cut = cut[:space]
    while _units(cut) > NAME_LIMIT - 1:  # emoji count twice where lengths are UTF-16: fit either way
        cut = cut[:-1]
    return cut.rstrip(" ,.;:-") + "…"


def _units(text: str) -> int:
    """Length in UTF-16 code units (never less than in code points), so the name fits however it is counted."""
    return len(text.encode("utf-16-le")) // 2


def archive_minutes(channel: Any) -> int:
    """The channel's default archive duration when it has a valid one, else Discord's 24 hours."""
    value = getattr(channel, "default_auto_archive_duration", None)
    return value if value in ARCHIVE_DURATIONS else DEFAULT_ARCHIVE_MINUTES


def can_hold_threads(channel: Any) -> bool:
    """A server text or announcement channel (a thread, a DM, a voice channel's chat cannot start one)."""
    return isinstance(channel, discord.TextChannel)


def has_thread_permissions(permissions: discord.Permissions) -> bool:
    """Create Public Threads to open it, Send Messages in Threads to answer in it."""
    return permissions.create_public_threads and permissions.send_messages_in_threads


@dataclass
class Placement:
    """Where to answer: a new thread, or (`thread` None) where the person asked, with `note` saying why."""

    thread: discord.Thread | None = None
    note: str | None = None


async def open_thread(channel: discord.TextChannel, name: str, *, message_id: int, lang: str) -> Placement:
    """Start a public thread from `message_id` in `channel`; every refusal becomes a note, never an error."""
    try:
        thread = await channel.create_thread(
            name=name,
            message=discord.Object(id=message_id),
            auto_archive_duration=archive_minutes(channel),  # type: ignore[arg-type]
            reason="InternLM answers in a thread",
        )
    except discord.HTTPException as exc:
        log.info("could not open a thread in channel %s: %s %s", channel.id, exc.status, exc.code)
        reason = _REFUSALS.get(exc.code) or (exc.text or f"HTTP {exc.status}")[:200]
        return Placement(note=i18n.t("thread_refused", lang, reason=reason))
    return Placement(thread=thread)


def precheck(channel: Any, permissions: discord.Permissions, lang: str) -> Placement | None:
    """None when a thread may be tried here; else where to answer instead (with a note where one helps: not
    in a thread or a DM, where answering in place is simply what a thread-less place means)."""
    if isinstance(channel, discord.Thread) or getattr(channel, "guild", None) is None:
        return Placement()
    if not can_hold_threads(channel):
        return Placement(note=i18n.t("thread_wrong_channel", lang))
    if not has_thread_permissions(permissions):
        return Placement(note=i18n.t("thread_no_permission", lang))
    return None


async def thread_for_message(message: discord.Message, text: str, lang: str) -> Placement:
    """A thread started from the person's message (for `THREAD_REPLIES`), or where to answer instead."""
    channel = message.channel
    if not can_hold_threads(channel) or message.guild is None:
        return Placement()  # a DM, a thread, a voice channel's chat: in place, no note on every message
    early = precheck(channel, channel.permissions_for(message.guild.me), lang)  # type: ignore[union-attr]
    if early is not None:
        return early
    fallback = i18n.t("thread_default_name", lang, name=message.author.display_name)
    return await open_thread(
        channel,
        thread_name(text, fallback),
        message_id=message.id,  # type: ignore[arg-type]
        lang=lang,
    )


def owned_thread(channel: Any, me: discord.abc.User | None) -> bool:
    """A thread this bot opened: its messages are for the bot without a mention."""
    return isinstance(channel, discord.Thread) and me is not None and channel.owner_id == me.id


__all__ = [
    "ARCHIVE_DURATIONS",
    "DEFAULT_ARCHIVE_MINUTES",
    "NAME_LIMIT",
    "Placement",
    "archive_minutes",
    "open_thread",
    "owned_thread",
    "precheck",
    "thread_for_message",
    "thread_name",
]
