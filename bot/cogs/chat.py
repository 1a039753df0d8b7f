"""Chat: answer mentions, replies to the bot, DMs and chat channels; `/chat`, `/reset`, `/help`; the
Stop and Regenerate buttons on replies.

Who may talk to the bot (`ALLOWED_GUILDS/CHANNELS/ROLES`, `ALLOW_DMS`) is decided here, before any
work is queued; people outside those lists are ignored silently, so the bot stays out of channels it
was not meant for.  Refusals a person should learn about (too long, too fast, a bad file) are friendly
replies.  Buttons are `DynamicItem`s whose custom ids carry the job and the owner, so they keep
working after a bot restart.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from handlers.chat import InputError, Reply, Request
from handlers.history import conversation_id

from .. import i18n
from ..streaming import NO_MENTIONS, ChannelTarget, InteractionTarget, ephemeral, stream_reply

if TYPE_CHECKING:
    from ..client import InternLMBot

log = logging.getLogger(__name__)

i18n.register({
    "not_yours": {i18n.EN: "Only the person who asked (or a moderator) can use this button.",
                  i18n.ZH: "只有提问者（或管理员）可以使用此按钮。"},
    "busy_regenerating": {i18n.EN: "This answer is already being regenerated.", i18n.ZH: "该回答正在重新生成。"},
})

# ====================================================================== where and who
def conversation_for(channel: Any, user: discord.abc.User) -> str:
    """Each guild channel and each thread is its own conversation; a DM is the person's."""
    guild = getattr(channel, "guild", None)
    if guild is None:
        return conversation_id(dm_user=user.id)
    return conversation_id(guild=guild.id, channel=channel.id)


def settings_channel(channel: Any) -> int | None:
    """The channel whose /settings apply: a thread follows its parent channel."""
    if channel is None or getattr(channel, "guild", None) is None:
        return None
    if isinstance(channel, discord.Thread):
        return channel.parent_id
    return channel.id


def request_for(interaction: discord.Interaction, text: str) -> Request:
    """The request a slash command makes: this channel's (or DM's) conversation, the speaker's name in guilds."""
    return Request(conversation=conversation_for(interaction.channel, interaction.user), text=text,
                   user_name=interaction.user.display_name if interaction.guild_id else None,
                   guild=interaction.guild_id, channel=settings_channel(interaction.channel))


def channel_ids(channel: Any) -> set[int]:
    ids = {getattr(channel, "id", 0)}
    parent = getattr(channel, "parent_id", None)
    if parent:
        ids.add(parent)
    return ids


# ====================================================================== buttons
class StopButton(discord.ui.DynamicItem[discord.ui.Button], template=r"ilm:stop:(?P<job>[0-9a-f]{32}):(?P<owner>\d+)"):
    """Cancels the job; the partial answer stays (marked stopped) and goes into history."""

    def __init__(self, job: str, owner: int, lang: str = i18n.EN) -> None:
        super().__init__(discord.ui.Button(label=i18n.t("button_stop", lang), emoji="⏹️",
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=f"ilm:stop:{job}:{owner}"))
        self.job, self.owner = job, owner

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> StopButton:
        return cls(match["job"], int(match["owner"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        cog = interaction.client.get_cog("Chat")
        if isinstance(cog, Chat):
            await cog.press_stop(interaction, self.job, self.owner)


class RegenerateButton(discord.ui.DynamicItem[discord.ui.Button],
                       template=r"ilm:regen:(?P<kind>[a-z]{1,16}):(?P<job>[0-9a-f]{32}):(?P<owner>\d+)"):
    """Answers the conversation's last message again, replacing the last answer in history."""

    def __init__(self, kind: str, job: str, owner: int, lang: str = i18n.EN) -> None:
        super().__init__(discord.ui.Button(label=i18n.t("button_regenerate", lang), emoji="🔄",
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=f"ilm:regen:{kind}:{job}:{owner}"))
        self.kind, self.job, self.owner = kind, job, owner

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> RegenerateButton:
        return cls(match["kind"], match["job"], int(match["owner"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        cog = interaction.client.get_cog("Chat")
        if isinstance(cog, Chat):
            await cog.press_regenerate(interaction, self.kind, self.job, self.owner)


def reply_buttons(bot: InternLMBot, reply: Reply, state: str, lang: str, owner: int | None = None
                  ) -> discord.ui.View | None:
    """Stop while streaming; Regenerate once done (for kinds that can be regenerated)."""
    view = discord.ui.View(timeout=None)
    if state == "streaming":
        view.add_item(StopButton(reply.job.id, owner or 0, lang))
    elif state == "done" and reply.request.record and reply.request.kind in bot.regenerable_kinds:
        view.add_item(RegenerateButton(reply.request.kind, reply.job.id, owner or 0, lang))
    else:
        return None
    return view


def help_text(tree: app_commands.CommandTree, lang: str) -> str:
    """How to talk to the bot, then every slash command of every loaded cog with its description, so
    a new feature's commands show up here without touching this file."""
    lines = [i18n.t("help", lang), "", i18n.t("help_commands", lang)]
    for command in tree.get_commands(type=discord.AppCommandType.chat_input):
        label, description = f"`/{command.name}`", getattr(command, "description", "")
        subs = [c.name for c in getattr(command, "commands", [])]
        if subs:
            label += " " + " · ".join(subs)
        if lang == i18n.ZH:
            local = i18n.COMMAND_TEXT.get(command.name)
            label += f"（{local}）" if local else ""
            description = i18n.COMMAND_TEXT.get(description, description)
        lines.append(f"• {label} — {description}")
    text = "\n".join(lines)
    return text if len(text) <= 2000 else text[:1999] + "…"


def refusal_text(exc: InputError, lang: str) -> str:
    """A refusal in the person's language: image refusals have translations (the images cog's table);
    other refusals are already worded by the handler."""
    try:
        from .images import localized
    except ImportError:  # the images feature is optional
        return str(exc)
    return localized(exc, lang)


# ====================================================================== the cog
class Chat(commands.Cog):
    """Conversations with the model in channels, threads and DMs."""

    def __init__(self, bot: InternLMBot) -> None:
        self.bot = bot
        self.settings = bot.settings
        self._regenerating: set[str] = set()

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(StopButton, RegenerateButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(StopButton, RegenerateButton)

    # ---------------------------------------------------------------- access control
    def permitted(self, channel: Any, user: discord.abc.User) -> bool:
        """`ALLOWED_*` lists (empty = everyone); DMs follow `ALLOW_DMS` alone."""
        s = self.settings
        guild = getattr(channel, "guild", None)
        if guild is None:
            return s.allow_dms
        if s.allowed_guilds and guild.id not in s.allowed_guilds:
            return False
        if s.allowed_channels and not channel_ids(channel) & set(s.allowed_channels):
            return False
        if s.allowed_roles:
            roles = {role.id for role in getattr(user, "roles", [])}
            if not roles & set(s.allowed_roles):
                return False
        return True

    def is_chat_channel(self, channel: Any) -> bool:
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
        if self.is_chat_channel(message.channel):
            return True
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

    async def refusal(self, user_id: int, text: str, lang: str) -> str | None:
        """A friendly reason not to answer (too long, too many requests), or None to go ahead.
        Length first, so an over-long message does not use up the person's rate limit."""
        limit = self.settings.max_input_chars
        if len(text) > limit:
            return i18n.t("too_long", lang, n=len(text), limit=limit)
        decision = await self.bot.limiter.hit(user_id)
        if not decision.allowed:
            return i18n.t("rate_limited", lang, n=decision.retry_seconds)
        return None

    async def admit(self, interaction: discord.Interaction, text: str, lang: str) -> bool:
        """Access lists, input length and the per-user rate limit for a slash command (every cog's, so none
        can bypass them).  Refusals are answered privately here; False means the command must stop."""
        if not self.permitted(interaction.channel, interaction.user):
            await ephemeral(interaction, i18n.t("not_allowed", lang))
            return False
        reason = await self.refusal(interaction.user.id, text, lang)
        if reason:
            await ephemeral(interaction, reason)
            return False
        return True

    # ---------------------------------------------------------------- messages
    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.webhook_id is not None or message.type not in (
                discord.MessageType.default, discord.MessageType.reply):
            return
        if message.guild is None and not self.settings.allow_dms:
            return
        if not self.permitted(message.channel, message.author) or not await self.addressed(message):
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
        images_cog = self.bot.get_cog("Images")
        has_images = bool(message.attachments) and images_cog is not None
        if not text and not has_images:
            if self.bot.user in message.mentions or message.guild is None:  # not for every sticker in a chat channel
                await self.say(message, i18n.t("empty_prompt", lang))
            return
        reason = await self.refusal(message.author.id, text, lang)
        if reason:
            await self.say(message, reason)
            return
        request = Request(
            conversation=conversation_for(message.channel, message.author), text=text,
            user_name=message.author.display_name if message.guild else None,
            guild=message.guild.id if message.guild else None, channel=settings_channel(message.channel))
        try:
            if has_images:
                request.images = list(await images_cog.ingest(message.attachments))  # type: ignore[union-attr]
                request.kind = "vision" if request.images else "chat"
                if not request.images and not text:
                    await self.say(message, i18n.t("empty_prompt", lang))
                    return
            reply = await self.bot.runtime.chat.ask(request)
        except InputError as exc:
            await self.say(message, refusal_text(exc, lang))
            return
        await stream_reply(self.bot, reply, ChannelTarget(message.channel, reference=message), lang=lang,
                           owner=message.author.id)

    async def say(self, message: discord.Message, text: str) -> None:
        """A short reply to `message` (a refusal or a hint), paced like any other write."""
        await self.bot.buckets.get(message.channel.id).acquire(priority=True)
        try:
            await ChannelTarget(message.channel, reference=message).send(text, first=True)
        except discord.HTTPException as exc:
            log.warning("could not reply: %s", exc)

    # ---------------------------------------------------------------- slash commands
    @app_commands.command(name=locale_str("chat"), description=locale_str("Chat with InternLM"))
    @app_commands.rename(prompt=locale_str("prompt"))
    @app_commands.describe(prompt=locale_str("What to ask"))
    async def chat_command(self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 6000]) -> None:
        lang = i18n.lang_for(interaction=interaction)
        if not await self.admit(interaction, prompt, lang):
            return
        await interaction.response.defer(thinking=True)
        request = request_for(interaction, prompt.strip())
        try:
            reply = await self.bot.runtime.chat.ask(request)
        except InputError as exc:
            await interaction.edit_original_response(content=str(exc), allowed_mentions=NO_MENTIONS)
            return
        await stream_reply(self.bot, reply, InteractionTarget(interaction), lang=lang, owner=interaction.user.id)

    @app_commands.command(name=locale_str("reset"), description=locale_str("Forget this conversation"))
    async def reset_command(self, interaction: discord.Interaction) -> None:
        lang = i18n.lang_for(interaction=interaction)
        if not self.permitted(interaction.channel, interaction.user):
            await ephemeral(interaction, i18n.t("not_allowed", lang))
            return
        conversation = conversation_for(interaction.channel, interaction.user)
        dropped = await self.bot.runtime.chat.reset(conversation)
        await ephemeral(interaction, i18n.t("reset_done", lang, n=dropped))

    @app_commands.command(name=locale_str("help"), description=locale_str("How to use this bot"))
    async def help_command(self, interaction: discord.Interaction) -> None:
        lang = i18n.lang_for(interaction=interaction)
        await interaction.response.send_message(help_text(self.bot.tree, lang), ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)

    # ---------------------------------------------------------------- buttons
    def may_press(self, interaction: discord.Interaction, owner: int) -> bool:
        if owner in (0, interaction.user.id):
            return True
        return bool(interaction.permissions.manage_messages)

    async def press_stop(self, interaction: discord.Interaction, job: str, owner: int) -> None:
        lang = i18n.lang_for(interaction=interaction)
        if not self.may_press(interaction, owner):
            await ephemeral(interaction, i18n.t("not_yours", lang))
            return
        events = await self.bot.runtime.bus.read_events(job)
        if events and events[-1].final:  # a button left over from a reply that finished long ago
            await interaction.response.edit_message(view=None, allowed_mentions=NO_MENTIONS)
            return
        await interaction.response.defer()  # the streamer edits the message as the job stops
        bus = self.bot.runtime.bus
        await bus.cancel(job)
        streamer = self.bot.live_streamers.get(job)
        if streamer is not None and not await bus.alive_workers():
            # No worker is alive to confirm the stop (a live one ends the job within a second): end the
            # reply now, marked stopped, rather than after the no-worker timeout.
            streamer.abandon()

    async def press_regenerate(self, interaction: discord.Interaction, kind: str, job: str, owner: int) -> None:
        lang = i18n.lang_for(interaction=interaction)
        if not self.may_press(interaction, owner):
            await ephemeral(interaction, i18n.t("not_yours", lang))
            return
        conversation = conversation_for(interaction.channel, interaction.user if owner == 0 else
                                        discord.Object(owner))  # type: ignore[arg-type]
        last = await self.bot.runtime.history.recent(conversation, limit=1)
        if not last or last[-1].role != "assistant" or last[-1].meta.get("job") != job:
            await ephemeral(interaction, i18n.t("not_latest", lang))
            return
        if conversation in self._regenerating:
            await ephemeral(interaction, i18n.t("busy_regenerating", lang))
            return
        self._regenerating.add(conversation)
        try:
            await interaction.response.defer(thinking=True)
            if interaction.message is not None:  # the old answer loses its button
                await self.bot.buckets.get(interaction.channel_id or 0).acquire()
                try:
                    await interaction.message.edit(view=None, allowed_mentions=NO_MENTIONS)
                except discord.HTTPException:
                    pass
            request = Request(conversation=conversation, text="", guild=interaction.guild_id,
                              channel=settings_channel(interaction.channel), kind=kind)
            reply = await self.bot.runtime.chat.regenerate(request)
            if reply is None:
                await interaction.edit_original_response(content=i18n.t("nothing_to_regenerate", lang),
                                                      allowed_mentions=NO_MENTIONS)
                return
            await stream_reply(self.bot, reply, InteractionTarget(interaction), lang=lang, owner=owner or None)
        finally:
            self._regenerating.discard(conversation)


async def setup(bot: InternLMBot) -> None:
    await bot.add_cog(Chat(bot))
