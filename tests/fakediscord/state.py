"""The fake Discord's world: users, guilds, roles, channels, threads, messages, interactions.

Everything is kept as plain dataclasses and rendered into Discord API payloads on demand, so the REST
handlers, the gateway and the test-side harness all see one consistent state.  The payload shapes follow
Discord's API v10 documentation (and what discord.py 2.7 reads from them); the rules that Discord enforces
on what a bot sends live in `rules.py`.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DISCORD_EPOCH_MS = 1420070400000

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
USE_APPLICATION_COMMANDS = 1 << 31
MANAGE_THREADS = 1 << 34
CREATE_PUBLIC_THREADS = 1 << 35
CREATE_PRIVATE_THREADS = 1 << 36
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 50) - 1

DEFAULT_EVERYONE = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | ADD_REACTIONS
    | USE_EXTERNAL_EMOJIS
    | USE_APPLICATION_COMMANDS
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
)
DEFAULT_BOT_ROLE = DEFAULT_EVERYONE | MENTION_EVERYONE | MANAGE_MESSAGES

# Channel types.
GUILD_TEXT = 0
DM = 1
PUBLIC_THREAD = 11
PRIVATE_THREAD = 12
THREAD_TYPES = (PUBLIC_THREAD, PRIVATE_THREAD)
# A thread's auto_archive_duration and a channel's default_auto_archive_duration (minutes): the only values
# Discord accepts; a new thread without one gets 1440 (24 hours).
ARCHIVE_DURATIONS = (60, 1440, 4320, 10080)
DEFAULT_ARCHIVE_DURATION = 1440

# Message flags.
EPHEMERAL = 1 << 6
LOADING = 1 << 7

_counter = itertools.count(1)


def snowflake() -> int:
    """A real-looking, increasing snowflake (discord.py derives `created_at` from it)."""
    ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
    return (ms << 22) | (next(_counter) & 0x3FFFFF)


def iso_now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class User:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    @property
    def display_name(self) -> str:
        return self.global_name or self.username

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "username": self.username,
            "global_name": self.global_name,
            "discriminator": "0",
            "avatar": None,
            "public_flags": 0,
            "flags": 0,
        }
        if self.bot:
            data["bot"] = True
        return data


@dataclass
class Role:
    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0
    managed: bool = False
    bot_id: int | None = None  # a bot's own managed role (discord.py's `Guild.self_role` looks for it)

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"

    def payload(self) -> dict[str, Any]:
        tags = {"bot_id": str(self.bot_id)} if self.bot_id else {}
        return {
            "tags": tags,
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": True,
            "flags": 0,
        }


@dataclass
class Member:
    user: User
    guild_id: int
    roles: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=iso_now)

    def payload(self, *, with_user: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        return data


@dataclass
class Overwrite:
    id: int
    type: int  # 0 role, 1 member
    allow: int = 0
    deny: int = 0

    def payload(self) -> dict[str, Any]:
        return {"id": str(self.id), "type": self.type, "allow": str(self.allow), "deny": str(self.deny)}


@dataclass
class Channel:
    id: int
    type: int
    guild_id: int | None = None
    name: str | None = None
    parent_id: int | None = None
    owner_id: int | None = None  # threads
    recipients: list[User] = field(default_factory=list)  # DMs
    overwrites: list[Overwrite] = field(default_factory=list)
    position: int = 0
    archived: bool = False
    locked: bool = False  # threads: only members with Manage Threads may unarchive or post
    auto_archive_duration: int = DEFAULT_ARCHIVE_DURATION  # threads
    default_auto_archive_duration: int | None = None  # text channels: copied onto new threads (absent if unset)
    created_at: str = field(default_factory=iso_now)

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    @property
    def is_thread(self) -> bool:
        return self.type in THREAD_TYPES

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": str(self.id), "type": self.type, "flags": 0, "last_message_id": None}
        if self.type == DM:
            data["recipients"] = [u.payload() for u in self.recipients]
            return data
        data.update(
            {
                "guild_id": str(self.guild_id),
                "name": self.name,
                "position": self.position,
                "nsfw": False,
                "rate_limit_per_user": 0,
                "topic": None,
                "parent_id": str(self.parent_id) if self.parent_id else None,
            }
        )
        if self.is_thread:
            data.update(
                {
                    "owner_id": str(self.owner_id) if self.owner_id else None,
                    "message_count": 0,
                    "member_count": 1,
                    "total_message_sent": 0,
                    "thread_metadata": {
                        "archived": self.archived,
                        "auto_archive_duration": self.auto_archive_duration,
                        "archive_timestamp": self.created_at,
                        "locked": self.locked,
                        "create_timestamp": self.created_at,
                    },
                }
            )
            if self.type == PRIVATE_THREAD:
                data["thread_metadata"]["invitable"] = True
        else:
            data["permission_overwrites"] = [o.payload() for o in self.overwrites]
            if self.default_auto_archive_duration is not None:
                data["default_auto_archive_duration"] = self.default_auto_archive_duration
        return data


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    preferred_locale: str = "en-US"
    roles: dict[int, Role] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)

    @property
    def everyone(self) -> Role:
        return self.roles[self.id]


@dataclass
class Attachment:
    id: int
    filename: str
    data: bytes
    content_type: str
    url: str
    description: str | None = None

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": len(self.data),
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.description:
            out["description"] = self.description
        return out


@dataclass
class Version:
    """One state of a message (its creation or an edit), kept so tests can see how a reply grew."""

    at: float
    content: str
    payload: dict[str, Any]


@dataclass
class Message:
    id: int
    channel_id: int
    author: User
    content: str = ""
    guild_id: int | None = None
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    reference: dict[str, Any] | None = None
    type: int = 0
    flags: int = 0
    webhook_id: int | None = None
    interaction: Interaction | None = None  # the interaction this message answers, if any
    allowed_mentions: dict[str, Any] | None = None  # what the sender asked for (None = Discord's default)
    mentions: list[User] = field(default_factory=list)  # who was actually pinged / mentioned
    mention_roles: list[int] = field(default_factory=list)
    mention_everyone: bool = False
    timestamp: str = field(default_factory=iso_now)
    edited_timestamp: str | None = None
    created: float = field(default_factory=time.monotonic)
    versions: list[Version] = field(default_factory=list)
    deleted: bool = False

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def custom_ids(self) -> list[str]:
        """Every component custom_id on the message (buttons, selects), in order."""
        found: list[str] = []

        def walk(items: list[dict[str, Any]]) -> None:
            for item in items:
                if "custom_id" in item:
                    found.append(item["custom_id"])
                walk(item.get("components", []))

        walk(self.components)
        return found

    def button(self, custom_id: str) -> dict[str, Any] | None:
        def walk(items: list[dict[str, Any]]) -> dict[str, Any] | None:
            for item in items:
                if item.get("custom_id") == custom_id:
                    return item
                hit = walk(item.get("components", []))
                if hit:
                    return hit
            return None

        return walk(self.components)

    def buttons(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []

        def walk(items: list[dict[str, Any]]) -> None:
            for item in items:
                if item.get("type") == 2:
                    out.append(item)
                walk(item.get("components", []))

        walk(self.components)
        return out


@dataclass
class Interaction:
    id: int
    token: str
    type: int  # 2 application command, 3 component, 4 application command autocomplete
    channel_id: int
    user: User
    guild_id: int | None
    created: float = field(default_factory=time.monotonic)
    response_type: int | None = None  # the callback type, once acknowledged
    responded_at: float | None = None
    original: Message | None = None  # the response message (deferred "thinking" or a real one)
    original_edited: bool = False  # a deferred original got its content (edit or first follow-up)
    message: Message | None = None  # the component's message, for type 3
    followups: list[Message] = field(default_factory=list)
    ephemeral: bool = False
    choices: list[dict[str, Any]] | None = None  # an autocomplete's answer (callback type 8)


@dataclass
class Command:
    """A registered application command, as Discord stores it after a bulk overwrite."""

    id: int
    application_id: int
    guild_id: int | None
    data: dict[str, Any]
    version: int = 1

    @property
    def name(self) -> str:
        return self.data["name"]

    def payload(self) -> dict[str, Any]:
        out = {
            "type": 1,
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "nsfw": False,
            "name_localizations": None,
            "description_localizations": None,
            "contexts": None,
            "integration_types": [0],
        }
        out.update(self.data)
        out.update({"id": str(self.id), "application_id": str(self.application_id), "version": str(self.version)})
        if self.guild_id:
            out["guild_id"] = str(self.guild_id)
        else:
            out.setdefault("dm_permission", True)
        return out


_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


class World:
    """All the state of the fake Discord, plus payload builders that need cross-references."""

    def __init__(self) -> None:
        self.users: dict[int, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, Message] = {}
        self.interactions: dict[int, Interaction] = {}
        self.commands: dict[int, Command] = {}
        self.blobs: dict[int, Attachment] = {}
        self.dm_by_user: dict[int, int] = {}
        self.bot: User = self.add_user("InternLM", bot=True)
        self.token = f"fake.{self.bot.id}.{secrets.token_urlsafe(16)}"
        self.application_id = self.bot.id
        self.owner = self.add_user("app-owner")
        self.cdn_base = ""  # set by the server once it has a port

    # ------------------------------------------------------------------ building the world
    def add_user(self, username: str, *, bot: bool = False, global_name: str | None = None) -> User:
        user = User(snowflake(), username, global_name, bot)
        self.users[user.id] = user
        return user

    def add_guild(self, name: str, *, owner: User, locale: str = "en-US") -> Guild:
        gid = snowflake()
        guild = Guild(gid, name, owner.id, preferred_locale=locale)
        guild.roles[gid] = Role(gid, gid, "@everyone", DEFAULT_EVERYONE, 0)
        self.guilds[gid] = guild
        self.add_member(guild, owner)
        bot_role = self.add_role(guild, self.bot.username, DEFAULT_BOT_ROLE, managed=True, bot_id=self.bot.id)
        self.add_member(guild, self.bot, roles=[bot_role])
        return guild

    def add_role(
        self, guild: Guild, name: str, permissions: int = 0, *, managed: bool = False, bot_id: int | None = None
    ) -> Role:
        role = Role(snowflake(), guild.id, name, permissions, position=len(guild.roles), managed=managed, bot_id=bot_id)
        guild.roles[role.id] = role
        return role

    def add_member(
        self, guild: Guild, user: User, *, roles: list[Role] | None = None, nick: str | None = None
    ) -> Member:
        member = Member(user, guild.id, [r.id for r in roles or []], nick)
        guild.members[user.id] = member
        return member

    def add_channel(
        self,
        guild: Guild,
        name: str,
        *,
        overwrites: list[Overwrite] | None = None,
        default_auto_archive_duration: int | None = None,
    ) -> Channel:
        position = sum(1 for c in self.channels.values() if c.guild_id == guild.id)
        channel = Channel(
            snowflake(),
            GUILD_TEXT,
            guild.id,
            name,
            overwrites=overwrites or [],
            position=position,
            default_auto_archive_duration=default_auto_archive_duration,
        )
        self.channels[channel.id] = channel
        return channel

    def add_thread(
        self,
        parent: Channel,
        name: str,
        *,
        owner: User,
        thread_id: int | None = None,
        private: bool = False,
        auto_archive_duration: int | None = None,
    ) -> Channel:
        """A thread; without `auto_archive_duration` it takes the parent's default (Discord: 1440 if unset)."""
        duration = auto_archive_duration or parent.default_auto_archive_duration or DEFAULT_ARCHIVE_DURATION
        thread = Channel(
            thread_id or snowflake(),
            PRIVATE_THREAD if private else PUBLIC_THREAD,
            parent.guild_id,
            name,
            parent_id=parent.id,
            owner_id=owner.id,
            auto_archive_duration=duration,
        )
        self.channels[thread.id] = thread
        return thread

    def dm_channel(self, user: User) -> Channel:
        if user.id in self.dm_by_user:
            return self.channels[self.dm_by_user[user.id]]
        channel = Channel(snowflake(), DM, recipients=[user])
        self.channels[channel.id] = channel
        self.dm_by_user[user.id] = channel.id
        return channel

    def store_blob(
        self, channel_id: int, filename: str, data: bytes, content_type: str, description: str | None = None
    ) -> Attachment:
        aid = snowflake()
        url = f"{self.cdn_base}/attachments/{channel_id}/{aid}/{filename}"
        attachment = Attachment(aid, filename, data, content_type, url, description)
        self.blobs[aid] = attachment
        return attachment

    # ------------------------------------------------------------------ lookups
    def guild_of(self, channel: Channel) -> Guild | None:
        return self.guilds.get(channel.guild_id) if channel.guild_id else None

    def member(self, guild: Guild | None, user: User) -> Member | None:
        return guild.members.get(user.id) if guild else None

    def permissions(self, channel: Channel, user: User) -> int:
        """The user's permissions in a channel (Discord's algorithm: base, then overwrites)."""
        guild = self.guild_of(channel)
        if guild is None:
            return ALL_PERMISSIONS & ~(MANAGE_GUILD | ADMINISTRATOR)
        if guild.owner_id == user.id:
            return ALL_PERMISSIONS
        member = guild.members.get(user.id)
        if member is None:
            return 0
        perms = guild.everyone.permissions
        for rid in member.roles:
            if rid in guild.roles:
                perms |= guild.roles[rid].permissions
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        target = self.channels.get(channel.parent_id) if channel.is_thread and channel.parent_id else channel
        if target is None:
            return perms
        overwrites = {o.id: o for o in target.overwrites}
        if guild.id in overwrites:
            perms = (perms & ~overwrites[guild.id].deny) | overwrites[guild.id].allow
        allow = deny = 0
        for rid in member.roles:
            if rid in overwrites:
                allow |= overwrites[rid].allow
                deny |= overwrites[rid].deny
        perms = (perms & ~deny) | allow
        if user.id in overwrites:
            perms = (perms & ~overwrites[user.id].deny) | overwrites[user.id].allow
        return perms

    # ------------------------------------------------------------------ mentions
    def resolve_mentions(self, message: Message, allowed: dict[str, Any] | None, replied: Message | None) -> None:
        """Fill in who the message mentions, the way Discord applies `allowed_mentions`.

        `allowed=None` is Discord's default: everything in the content pings (and a reply pings its
        author).  With `parse`, only the listed kinds ping; `users`/`roles` list explicit ids.
        """
        content = message.content
        parse = {"users", "roles", "everyone"} if allowed is None else set(allowed.get("parse") or [])
        allowed_users = set() if allowed is None else {int(x) for x in allowed.get("users") or []}
        allowed_roles = set() if allowed is None else {int(x) for x in allowed.get("roles") or []}
        users: list[User] = []
        for raw in _USER_MENTION.findall(content):
            uid = int(raw)
            if uid in self.users and ("users" in parse or uid in allowed_users):
                if all(u.id != uid for u in users):
                    users.append(self.users[uid])
        if replied is not None and (allowed is None or allowed.get("replied_user", False)):
            if all(u.id != replied.author.id for u in users):
                users.append(replied.author)
        roles = [int(r) for r in _ROLE_MENTION.findall(content) if "roles" in parse or int(r) in allowed_roles]
        channel = self.channels.get(message.channel_id)
        may_everyone = channel is not None and bool(self.permissions(channel, message.author) & MENTION_EVERYONE)
        everyone = "everyone" in parse and may_everyone and ("@everyone" in content or "@here" in content)
        message.mentions, message.mention_roles, message.mention_everyone = users, roles, everyone

    def pinged(self, message: Message) -> bool:
        """Whether the message notifies anybody (a user, a role, @everyone/@here)."""
        return bool(message.mentions or message.mention_roles or message.mention_everyone)

    # ------------------------------------------------------------------ payloads
    def message_payload(self, message: Message, *, referenced: bool = True) -> dict[str, Any]:
        guild = self.guilds.get(message.guild_id) if message.guild_id else None
        author = message.author
        data: dict[str, Any] = {
            "id": str(message.id),
            "channel_id": str(message.channel_id),
            "type": message.type,
            "author": author.payload(),
            "content": message.content,
            "timestamp": message.timestamp,
            "edited_timestamp": message.edited_timestamp,
            "tts": False,
            "mention_everyone": message.mention_everyone,
            "mentions": [self._mention_payload(guild, u) for u in message.mentions],
            "mention_roles": [str(r) for r in message.mention_roles],
            "attachments": [a.payload() for a in message.attachments],
            "embeds": message.embeds,
            "components": message.components,
            "pinned": False,
            "flags": message.flags,
        }
        if guild is not None:
            data["guild_id"] = str(guild.id)
            member = guild.members.get(author.id)
            if member is not None and message.webhook_id is None:
                data["member"] = member.payload(with_user=False)
        if message.webhook_id:
            data["webhook_id"] = str(message.webhook_id)
            data["application_id"] = str(self.application_id)
        if message.reference:
            data["message_reference"] = message.reference
            if referenced:
                ref = self.messages.get(int(message.reference["message_id"]))
                data["referenced_message"] = (
                    self.message_payload(ref, referenced=False) if ref and not ref.deleted else None
                )
        if message.interaction is not None:
            inter = message.interaction
            data["interaction_metadata"] = {
                "id": str(inter.id),
                "type": inter.type,
                "user": inter.user.payload(),
                "authorizing_integration_owners": {"0": str(inter.guild_id)}
                if inter.guild_id
                else {"1": str(inter.user.id)},
            }
        return data

    def _mention_payload(self, guild: Guild | None, user: User) -> dict[str, Any]:
        data = user.payload()
        member = guild.members.get(user.id) if guild else None
        if member is not None:
            data["member"] = member.payload(with_user=False)
        return data

    def guild_payload(self, guild: Guild) -> dict[str, Any]:
        channels = [c for c in self.channels.values() if c.guild_id == guild.id]
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [r.payload() for r in guild.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": guild.preferred_locale,
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "max_members": 500000,
            "safety_alerts_channel_id": None,
            # GUILD_CREATE extras
            "joined_at": iso_now(),
            "large": False,
            "unavailable": False,
            "member_count": len(guild.members),
            "voice_states": [],
            "members": [m.payload() for m in guild.members.values()],
            "channels": [c.payload() for c in channels if not c.is_thread],
            "threads": [c.payload() for c in channels if c.is_thread and not c.archived],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def guild_rest_payload(self, guild: Guild) -> dict[str, Any]:
        data = self.guild_payload(guild)
        for key in (
            "joined_at",
            "large",
            "unavailable",
            "member_count",
            "voice_states",
            "members",
            "channels",
            "threads",
            "presences",
            "stage_instances",
            "guild_scheduled_events",
            "soundboard_sounds",
        ):
            data.pop(key, None)
        return data
