"""Chat: answer mentions, replies to the bot, DMs and chat channels; `/chat`, `/reset`, `/help`.

Who may talk to the bot is decided before any work is queued (bot/access.py); people outside the access
lists are ignored silently on messages.  Refusals a person should learn about (too long, too fast, a bad
file) are friendly replies: on a message here, on a command by the command tree (bot/refusals.py).  The
Stop and Regenerate buttons on replies live in bot/buttons.py, the help text in bot/help.py.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from handlers.text_files import render
from handlers.types import InputError, Request

from .. import i18n
from ..access import admit, permitted, refusal, require_permitted
from ..attachments import as_attachment, cut_notes, split_attachments
from ..conversations import channel_ids, conversation_for, request_for, settings_channel
from ..help import help_text
from ..refusals import refusal_text
from ..replies import stream_reply
from ..targets import NO_MENTIONS, ChannelTarget, InteractionTarget, ephemeral
from ..threads import Placement, open_thread, owned_thread, precheck, thread_for_message, thread_name

if TYPE_CHECKING:
    from ..client import InternLMBot

log = logging.getLogger(__name__)


class Chat(commands.Cog):
    """Conversations with the model in channels, threads and DMs."""

    def __init__(self, bot: InternLMBot) -> None:
        self.bot = bot
        self.settings = bot.settings

    # ---------------------------------------------------------------- is a message for the bot?
    def is_chat_channel(self, channel: object) -> bool:
        return bool(channel_ids(channel) & set(self.settings.chat_channels))

    async def addressed(self, message: discord.Message) -> bool:
        """Is this message for the bot: a DM, a mention, a reply to the bot, or a chat channel?"""
        me = self.bot.user
        if me is None:
            return False
        if message.guild is None:
            return True
        if me in message.mentions:
            return True
        self_role = message.guild.self_role
        if self_role is not None and self_role in message.role_mentions:
            return True
        if self.is_chat_channel(message.channel) or owned_thread(message.channel, me):
            return True  # a chat channel, or a thread the bot opened (bot/threads.py)
        ref = message.reference
        if ref is not None and ref.message_id is not None:
            resolved = ref.resolved
            if resolved is None and ref.channel_id == message.channel.id:
                try:
                    resolved = await message.channel.fetch_message(ref.message_id)
                except discord.HTTPException:
                    return False
            return isinstance(resolved, discord.Message) and resolved.author.id == me.id
        return False

    def clean_text(self, message: discord.Message) -> str:
        """The message without the mention of the bot."""
        text = message.content
        me = self.bot.user
        if me is not None:
            text = re.sub(rf"<@!?{me.id}>", "", text)
        if message.guild is not None and message.guild.self_role is not None:
            text = text.replace(message.guild.self_role.mention, "")
        return text.strip()

    # ---------------------------------------------------------------- messages
    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if (
            message.author.bot
            or message.webhook_id is not None
            or message.type not in (discord.MessageType.default, discord.MessageType.reply)
        ):
            return
        if message.guild is None and not self.settings.allow_dms:
            return
        if not permitted(self.settings, message.channel, message.author) or not await self.addressed(message):
            return
        try:
            first = await self.bot.runtime.chat.claim(f"message:{message.id}")
        except Exception:  # Redis trouble: answer anyway, and the reply will say what went wrong
            first = True
        if not first:
            return  # another bot process (a deploy overlap on this shard) is answering it
        try:
            await self.answer_message(message)
        except Exception:  # one failed reply must not take the listener down
            log.exception("answering message %s failed", message.id)

    async def answer_message(self, message: discord.Message) -> None:
        lang = i18n.lang_for(guild=message.guild)
        text = self.clean_text(message)
        has_images = bool(message.attachments)
        if not text and not has_images:
            if self.bot.user in message.mentions or message.guild is None:  # not for every sticker in a chat channel
                await self.say(message, i18n.t("empty_prompt", lang))
            return
        reason = await refusal(self.bot, message.author.id, text, lang)
        if reason:
            await self.say(message, reason)
            return
        request = Request(
            conversation=conversation_for(message.channel, message.author),
            text=text,
            user_name=message.author.display_name if message.guild else None,
            guild=message.guild.id if message.guild else None,
            channel=settings_channel(message.channel),
        )
        try:
            if has_images:
                text_files, images = split_attachments(message.attachments)  # refuses other types unread
                if text_files:
                    self.bot.images.text_files.check([as_attachment(a) for a in text_files])  # before images
                if images:
                    request.images = list(await self.bot.images.ingest(images))
                    request.kind = "vision" if request.images else "chat"
                if text_files:
                    files = await self.bot.images.read_text_files(text_files)
                    request.files = render(files)
                    for note in cut_notes(files, lang):
                        await self.say(message, note)
                if not request.images and not request.files and not text:
                    await self.say(message, i18n.t("empty_prompt", lang))
                    return
            place = await self.placement(message, text, lang)
            if place.thread is not None:  # the thread is its own conversation
                request.conversation = conversation_for(place.thread, message.author)
            reply = await self.bot.runtime.chat.ask(request)
        except InputError as exc:
            await self.say(message, refusal_text(exc, lang))
            return
        if place.note:
            await self.say(message, place.note)
        target = (
            ChannelTarget(place.thread)
            if place.thread is not None
            else ChannelTarget(message.channel, reference=message)
        )
        await stream_reply(self.bot, reply, target, lang=lang, owner=message.author.id)

    async def placement(self, message: discord.Message, text: str, lang: str) -> Placement:
        """Where to answer: in place, or in a new thread from the message when `thread_replies` is on for
        this server channel (THREAD_REPLIES, overridden per server/channel by /settings)."""
        if message.guild is None or isinstance(message.channel, discord.Thread):
            return Placement()
        effective = await self.bot.runtime.overrides.effective(
            guild=message.guild.id, channel=settings_channel(message.channel)
        )
        if not effective.thread_replies:
            return Placement()
        return await thread_for_message(message, text, lang)

    async def say(self, message: discord.Message, text: str) -> None:
        """A short reply to `message` (a refusal or a hint), paced like any other write."""
        await self.bot.buckets.get(message.channel.id).acquire(priority=True)
        try:
            await ChannelTarget(message.channel, reference=message).send(text, first=True)
        except discord.HTTPException as exc:
            log.warning("could not reply: %s", exc)

    # ---------------------------------------------------------------- slash commands
    @app_commands.command(name=locale_str("chat"), description=locale_str("Chat with InternLM"))
    @app_commands.rename(prompt=locale_str("prompt"), thread=locale_str("thread"))
    @app_commands.describe(
        prompt=locale_str("What to ask"), thread=locale_str("Answer in a new thread named after the question")
    )
    async def chat_command(
        self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 6000], thread: bool = False
    ) -> None:
        lang = i18n.lang_for(interaction=interaction)
        await admit(self.bot, interaction, prompt, lang)
        place = precheck(interaction.channel, interaction.app_permissions, lang) if thread else Placement()
        await interaction.response.defer(thinking=True)
        if place is None:  # a thread may be opened here: from the response, which shows the question
            place = await self.open_command_thread(interaction, prompt.strip(), lang)
        if place.thread is not None:
            request = request_for(interaction, prompt.strip())
            request.conversation = conversation_for(place.thread, interaction.user)
            reply = await self.bot.runtime.chat.ask(request)
            await stream_reply(self.bot, reply, ChannelTarget(place.thread), lang=lang, owner=interaction.user.id)
            return
        reply = await self.bot.runtime.chat.ask(request_for(interaction, prompt.strip()))
        await stream_reply(self.bot, reply, InteractionTarget(interaction), lang=lang, owner=interaction.user.id)
        if place.note:  # after the answer: a deferred response's first follow-up would replace it
            await interaction.followup.send(place.note, ephemeral=True, allowed_mentions=NO_MENTIONS)

    async def open_command_thread(self, interaction: discord.Interaction, prompt: str, lang: str) -> Placement:
        """Show the question as the command's response and start the thread from that message."""
        shown = prompt if len(prompt) <= 1900 else prompt[:1899] + "…"
        original = await interaction.edit_original_response(content=f"🧵 {shown}", allowed_mentions=NO_MENTIONS)
        fallback = i18n.t("thread_default_name", lang, name=interaction.user.display_name)
        return await open_thread(
            interaction.channel,
            thread_name(prompt, fallback),  # type: ignore[arg-type]
            message_id=original.id,
            lang=lang,
        )

    @app_commands.command(name=locale_str("reset"), description=locale_str("Forget this conversation"))
    async def reset_command(self, interaction: discord.Interaction) -> None:
        lang = i18n.lang_for(interaction=interaction)
        require_permitted(self.bot, interaction, lang)
        conversation = conversation_for(interaction.channel, interaction.user)
        dropped = await self.bot.runtime.chat.reset(conversation)
        await ephemeral(interaction, i18n.t("reset_done", lang, n=dropped))

    @app_commands.command(name=locale_str("help"), description=locale_str("How to use this bot"))
    async def help_command(self, interaction: discord.Interaction) -> None:
        lang = i18n.lang_for(interaction=interaction)
        await interaction.response.send_message(
            help_text(self.bot.tree, lang), ephemeral=True, allowed_mentions=NO_MENTIONS
        )


async def setup(bot: InternLMBot) -> None:
    await bot.add_cog(Chat(bot))
