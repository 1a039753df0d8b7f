"""The test side of the fake Discord: build a world, act as users, wait for the bot, inspect what it did.

    h = Harness(); await h.start()
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} hello")
    [reply] = await h.reply_to(msg)

Users' actions are dispatched over the gateway exactly as Discord would (MESSAGE_CREATE with mentions
resolved, INTERACTION_CREATE with typed options and `resolved` data), and the bot's answers are read
back from the server's state (messages with their edit history) and its request log (`calls`).
"""

from __future__ import annotations

import asyncio
import mimetypes
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import rules
from .server import DIRECT_MESSAGES, GUILD_MESSAGES, GUILDS, Call, FakeDiscord
from .state import (
    DM,
    MANAGE_GUILD,
    Channel,
    Command,
    Guild,
    Interaction,
    Member,
    Message,
    Overwrite,
    Role,
    User,
    Version,
    snowflake,
)

AttachmentSpec = bytes | tuple[str, bytes] | tuple[str, bytes, str]

USER_CONTENT_LIMIT = 4000  # what a Nitro user may type; bots are held to 2000

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")

OPTION_TYPES = {
    1: "SUB_COMMAND",
    2: "SUB_COMMAND_GROUP",
    3: "STRING",
    4: "INTEGER",
    5: "BOOLEAN",
    6: "USER",
    7: "CHANNEL",
    8: "ROLE",
    9: "MENTIONABLE",
    10: "NUMBER",
    11: "ATTACHMENT",
}


class Harness:
    """A running fake Discord with a small default world (one guild, two channels, people, another bot)."""

    def __init__(self, server: FakeDiscord | None = None) -> None:
        self.server = server or FakeDiscord()
        self.world = self.server.world
        w = self.world
        self.bot: User = w.bot
        self.alice = w.add_user("alice", global_name="Alice")
        self.bob = w.add_user("bob", global_name="Bob")
        self.carol = w.add_user("carol", global_name="Carol")  # an admin by role
        self.other_bot = w.add_user("OtherBot", bot=True)
        self.guild: Guild = w.add_guild("Test Guild", owner=w.owner)
        self.admin_role: Role = w.add_role(self.guild, "Admins", MANAGE_GUILD)
        for user in (self.alice, self.bob, self.other_bot):
            w.add_member(self.guild, user)
        w.add_member(self.guild, self.carol, roles=[self.admin_role])
        self.general: Channel = w.add_channel(self.guild, "general")
        self.random: Channel = w.add_channel(self.guild, "random")

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> Harness:
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop()

    @property
    def token(self) -> str:
        return self.world.token

    @property
    def calls(self) -> list[Call]:
        return self.server.calls

    async def wait_connected(self, timeout: float = 15.0) -> None:
        """Until a bot session has identified and received its GUILD_CREATEs (events can flow from then)."""
        await asyncio.wait_for(self.server.guild_creates_sent.wait(), timeout)

    # ------------------------------------------------------------------ building the world at run time
    async def create_channel(
        self,
        name: str,
        *,
        guild: Guild | None = None,
        overwrites: list[Overwrite] | None = None,
        default_auto_archive_duration: int | None = None,
    ) -> Channel:
        channel = self.world.add_channel(
            guild or self.guild,
            name,
            overwrites=overwrites,
            default_auto_archive_duration=default_auto_archive_duration,
        )
        await self.server.dispatch("CHANNEL_CREATE", channel.payload(), GUILDS)
        return channel

    async def create_thread(
        self, parent: Channel, name: str, *, owner: User | None = None, from_message: Message | None = None
    ) -> Channel:
        thread = self.world.add_thread(
            parent, name, owner=owner or self.alice, thread_id=from_message.id if from_message else None
        )
        await self.server.dispatch("THREAD_CREATE", thread.payload() | {"newly_created": True}, GUILDS)
        return thread

    async def create_guild(self, name: str, *, owner: User | None = None, locale: str = "en-US") -> Guild:
        guild = self.world.add_guild(name, owner=owner or self.world.owner, locale=locale)
        await self.server.dispatch("GUILD_CREATE", self.world.guild_payload(guild), GUILDS)
        return guild

    async def add_member(self, guild: Guild, user: User, roles: list[Role] | None = None) -> Member:
        member = self.world.add_member(guild, user, roles=roles)
        await self.server.dispatch("GUILD_MEMBER_ADD", member.payload() | {"guild_id": str(guild.id)}, 1 << 1)
        return member

    def add_user(self, name: str, *, bot: bool = False, guild: Guild | None = None) -> User:
        """A new user who is a member of `guild` (the default guild) — create before the bot starts."""
        user = self.world.add_user(name, bot=bot, global_name=name.capitalize())
        self.world.add_member(guild or self.guild, user)
        return user

    def dm(self, user: User) -> Channel:
        return self.world.dm_channel(user)

    # ------------------------------------------------------------------ users acting
    async def send(
        self,
        channel: Channel,
        author: User,
        content: str = "",
        *,
        reference: Message | None = None,
        mention_author: bool = True,
        mentions: Iterable[User] = (),
        attachments: Iterable[AttachmentSpec] = (),
    ) -> Message:
        """A user posts a message; dispatched as MESSAGE_CREATE the way Discord resolves it.

        `<@id>` in the content mentions that user; a reply (`reference`) mentions the replied-to author
        unless `mention_author=False` (Discord's "@ON/OFF" toggle).
        """
        if len(content) > USER_CONTENT_LIMIT:
            raise AssertionError(f"Discord's client does not send {len(content)} characters (Nitro: 4000)")
        world = self.world
        stored = []
        for spec in attachments:
            filename, data, ctype = _attachment_spec(spec)
            stored.append(world.store_blob(channel.id, filename, data, ctype))
        message = Message(snowflake(), channel.id, author, content, guild_id=channel.guild_id, attachments=stored)
        users = [world.users[int(x)] for x in _USER_MENTION.findall(content) if int(x) in world.users]
        users += list(mentions)
        if reference is not None:
            message.reference = {"type": 0, "message_id": str(reference.id), "channel_id": str(channel.id)}
            if channel.guild_id:
                message.reference["guild_id"] = str(channel.guild_id)
            message.type = 19
            if mention_author:
                users.append(reference.author)
        unique: dict[int, User] = {u.id: u for u in users}
        message.mentions = list(unique.values())
        guild = world.guild_of(channel)
        if guild is not None:
            message.mention_roles = [int(r) for r in _ROLE_MENTION.findall(content) if int(r) in guild.roles]
        message.mention_everyone = "@everyone" in content or "@here" in content
        message.versions.append(Version(time.monotonic(), content, {}))
        world.messages[message.id] = message
        await self.server.dispatch_message(message)
        return message

    async def edit(self, message: Message, content: str) -> None:
        """The author edits their message (MESSAGE_UPDATE)."""
        message.content = content
        message.versions.append(Version(time.monotonic(), content, {}))
        await self.server.dispatch_message(message, "MESSAGE_UPDATE")

    async def delete(self, message: Message) -> None:
        """Someone (the author or a moderator) deletes a message (MESSAGE_DELETE)."""
        await self.server.delete_message(message)

    def command(self, name: str, guild: Guild | None = None) -> Command:
        """The registered command `name` (a guild command first, then a global one)."""
        for scope in ([guild.id] if guild else []) + [None]:
            for cmd in self.server.commands_for(scope):
                if cmd.name == name:
                    return cmd
        known = sorted({c.name for c in self.world.commands.values()})
        raise AssertionError(f"/{name} is not registered with Discord (registered: {known})")

    async def slash(
        self,
        command: str,
        options: dict[str, Any] | None = None,
        *,
        user: User | None = None,
        channel: Channel | None = None,
        locale: str = "en-US",
        check_permissions: bool = True,
    ) -> Interaction:
        """A user runs `/command` ("group sub" for subcommands); options are typed from the registered
        definition, as Discord's client would send them."""
        user = user or self.alice
        channel = channel or self.general
        words = command.split()
        guild = self.world.guild_of(channel)
        cmd = self.command(words[0], guild)
        definition = cmd.payload()
        if channel.type == DM and definition.get("contexts") is not None and 1 not in definition["contexts"]:
            raise AssertionError(f"/{words[0]} is not available in DMs")
        if channel.type == DM and definition.get("dm_permission") is False:
            raise AssertionError(f"/{words[0]} is not available in DMs")
        if check_permissions and guild is not None and definition.get("default_member_permissions"):
            needed = int(definition["default_member_permissions"])
            if self.world.permissions(channel, user) & needed != needed:
                raise PermissionError(f"{user.username} cannot see /{words[0]} (needs {needed})")
        resolved: dict[str, dict[str, Any]] = {}
        spec_options = definition.get("options") or []
        nested: list[dict[str, Any]] = []
        top = nested
        for word in words[1:]:
            spec = next((o for o in spec_options if o["name"] == word and o["type"] in (1, 2)), None)
            if spec is None:
                raise AssertionError(f"/{command}: no subcommand {word!r}")
            node = {"name": word, "type": spec["type"], "options": []}
            nested.append(node)
            nested = node["options"]
            spec_options = spec.get("options") or []
        nested.extend(self._typed_options(command, spec_options, options or {}, channel, resolved))
        data: dict[str, Any] = {"id": str(cmd.id), "name": cmd.name, "type": 1, "options": top}
        if resolved:
            data["resolved"] = resolved
        if cmd.guild_id:
            data["guild_id"] = str(cmd.guild_id)
        return await self._interact(2, data, user, channel, locale)

    async def autocomplete(
        self,
        command: str,
        options: dict[str, Any],
        focused: str,
        *,
        user: User | None = None,
        channel: Channel | None = None,
        locale: str = "en-US",
    ) -> list[dict[str, Any]]:
        """A user types into an autocomplete option: Discord sends APPLICATION_COMMAND_AUTOCOMPLETE (interaction
        type 4) with the options so far, the one being typed marked `focused` and given as the partial text
        (unvalidated, required ones possibly missing); returns the choices the bot answered with (type 8)."""
        user = user or self.alice
        channel = channel or self.general
        cmd = self.command(command.split()[0], self.world.guild_of(channel))
        specs = {o["name"]: o for o in cmd.payload().get("options") or []}
        if focused not in specs or not specs[focused].get("autocomplete"):
            raise AssertionError(f"/{command} {focused!r} is not an autocomplete option")
        typed = [
            {
                "name": name,
                "type": specs[name]["type"],
                "value": value,
                **({"focused": True} if name == focused else {}),
            }
            for name, value in options.items()
        ]
        data: dict[str, Any] = {"id": str(cmd.id), "name": cmd.name, "type": 1, "options": typed}
        if cmd.guild_id:
            data["guild_id"] = str(cmd.guild_id)
        interaction = await self._interact(4, data, user, channel, locale)
        await self.wait_for(
            lambda: interaction.choices is not None, timeout=5, message=f"the choices for /{command} {focused}"
        )
        assert interaction.choices is not None
        return interaction.choices

    def _typed_options(
        self,
        command: str,
        specs: list[dict[str, Any]],
        values: dict[str, Any],
        channel: Channel,
        resolved: dict[str, dict[str, Any]],
    ) -> list[dict[str, Any]]:
        by_name = {o["name"]: o for o in specs}
        for name in values:
            if name not in by_name:
                raise AssertionError(f"/{command} has no option {name!r} (has {sorted(by_name)})")
        for spec in specs:
            if spec.get("required") and spec["name"] not in values:
                raise AssertionError(f"/{command}: required option {spec['name']!r} missing")
        out = []
        for name, value in values.items():
            spec = by_name[name]
            kind = spec["type"]
            if spec.get("choices") and value not in [c["value"] for c in spec["choices"]]:
                raise AssertionError(f"/{command} {name}: {value!r} is not one of the choices")
            out.append({"name": name, "type": kind, "value": self._option_value(kind, value, channel, resolved)})
        return out

    def _option_value(self, kind: int, value: Any, channel: Channel, resolved: dict[str, dict[str, Any]]) -> Any:
        world = self.world
        guild = world.guild_of(channel)
        if kind == 3:
            return str(value)
        if kind == 4:
            return int(value)
        if kind == 10:
            return float(value)
        if kind == 5:
            return bool(value)
        if kind in (6, 9) and isinstance(value, User):
            resolved.setdefault("users", {})[str(value.id)] = value.payload()
            member = world.member(guild, value)
            if member is not None:
                resolved.setdefault("members", {})[str(value.id)] = member.payload(with_user=False) | {
                    "permissions": str(world.permissions(channel, value))
                }
            return str(value.id)
        if kind in (8, 9) and isinstance(value, Role):
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            return str(value.id)
        if kind == 7 and isinstance(value, Channel):
            resolved.setdefault("channels", {})[str(value.id)] = value.payload() | {
                "permissions": str(world.permissions(value, self.bot))
            }
            return str(value.id)
        if kind == 11:
            filename, data, ctype = _attachment_spec(value)
            blob = world.store_blob(channel.id, filename, data, ctype)
            resolved.setdefault("attachments", {})[str(blob.id)] = blob.payload()
            return str(blob.id)
        raise AssertionError(f"cannot give {value!r} as a {OPTION_TYPES.get(kind, kind)} option")

    async def click(
        self, message: Message, custom_id: str, *, user: User | None = None, locale: str = "en-US"
    ) -> Interaction:
        """A user presses a button on a message (it must be there and enabled, as in Discord's client)."""
        user = user or self.alice
        button = message.button(custom_id)
        if button is None:
            raise AssertionError(f"message {message.id} has no component {custom_id!r} (has {message.custom_ids})")
        if button.get("disabled"):
            raise AssertionError(f"button {custom_id!r} is disabled")
        channel = self.world.channels[message.channel_id]
        data = {"custom_id": custom_id, "component_type": button.get("type", 2)}
        return await self._interact(3, data, user, channel, locale, message=message)

    def button_ids(self, message: Message) -> list[str]:
        return [b.get("custom_id", "") for b in message.buttons()]

    def find_button(self, message: Message, label_or_prefix: str) -> str:
        """The custom_id of a button whose label or custom_id contains `label_or_prefix` (case-insensitive)."""
        needle = label_or_prefix.lower()
        for button in message.buttons():
            if needle in (button.get("label") or "").lower() or needle in (button.get("custom_id") or "").lower():
                return button["custom_id"]
        raise AssertionError(f"no {label_or_prefix!r} button on message {message.id}: {message.buttons()}")

    async def _interact(
        self,
        kind: int,
        data: dict[str, Any],
        user: User,
        channel: Channel,
        locale: str,
        *,
        message: Message | None = None,
    ) -> Interaction:
        world = self.world
        guild = world.guild_of(channel)
        interaction = Interaction(
            snowflake(),
            "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48),
            kind,
            channel.id,
            user,
            guild.id if guild else None,
            message=message,
        )
        world.interactions[interaction.id] = interaction
        payload: dict[str, Any] = {
            "id": str(interaction.id),
            "application_id": str(world.application_id),
            "type": kind,
            "data": data,
            "channel_id": str(channel.id),
            "channel": channel.payload(),
            "token": interaction.token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "attachment_size_limit": 10 * 1024 * 1024,
            "app_permissions": str(world.permissions(channel, self.bot)),
        }
        if guild is not None:
            member = guild.members[user.id]
            payload.update(
                {
                    "guild_id": str(guild.id),
                    "guild_locale": guild.preferred_locale,
                    "guild": {"id": str(guild.id), "locale": guild.preferred_locale, "features": []},
                    "member": member.payload() | {"permissions": str(world.permissions(channel, user))},
                    "authorizing_integration_owners": {"0": str(guild.id)},
                    "context": 0,
                }
            )
        else:
            payload.update(
                {"user": user.payload(), "authorizing_integration_owners": {"0": str(user.id)}, "context": 1}
            )
        if message is not None:
            payload["message"] = world.message_payload(message)
        interaction.created = time.monotonic()
        await self.server.dispatch("INTERACTION_CREATE", payload)
        return interaction

    # ------------------------------------------------------------------ reading what the bot did
    def messages(self, channel: Channel, *, after: Message | int | None = None) -> list[Message]:
        floor = after.id if isinstance(after, Message) else after or 0
        return sorted(
            (m for m in self.world.messages.values() if m.channel_id == channel.id and m.id > floor and not m.deleted),
            key=lambda m: m.id,
        )

    def bot_messages(
        self, channel: Channel, *, after: Message | int | None = None, include_ephemeral: bool = True
    ) -> list[Message]:
        return [
            m
            for m in self.messages(channel, after=after)
            if m.author.id == self.bot.id and (include_ephemeral or not m.ephemeral)
        ]

    def replies_to(self, message: Message) -> list[Message]:
        """The bot's public messages in the channel after `message` (a reply and its overflow messages)."""
        return self.bot_messages(self.world.channels[message.channel_id], after=message, include_ephemeral=False)

    def channel_calls(self, channel: Channel, *, method: str | None = None, route: str | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.channel_id == channel.id
            and (method is None or c.method == method)
            and (route is None or c.route == route)
        ]

    def typing_calls(self, channel: Channel) -> list[Call]:
        return self.channel_calls(channel, method="POST", route="/channels/{channel_id}/typing")

    def message_writes(self) -> list[Call]:
        """Every request that creates or edits a message (channel messages and interaction webhooks)."""
        out = []
        for call in self.calls:
            if call.route in (
                "/channels/{channel_id}/messages",
                "/channels/{channel_id}/messages/{message_id}",
                "/webhooks/{application_id}/{token}",
                "/webhooks/{application_id}/{token}/messages/{message_id}",
            ) and call.method in ("POST", "PATCH"):
                out.append(call)
            elif (
                call.route == "/interactions/{interaction_id}/{token}/callback"
                and call.json
                and call.json.get("type") in (4, 7)
            ):
                out.append(call)
        return out

    def errors(self) -> list[Call]:
        """Requests the fake refused with a 4xx other than 429 (a bot bug unless a test provoked it)."""
        return [c for c in self.calls if 400 <= c.status < 500 and c.status != 429]

    def unknown_routes(self) -> list[Call]:
        return [c for c in self.calls if c.route.startswith("/{tail")]

    # ------------------------------------------------------------------ waiting
    async def wait_for(
        self,
        predicate: Callable[[], Any],
        *,
        timeout: float = 10.0,
        message: str = "condition",
        describe: Callable[[], str] | None = None,
    ) -> Any:
        """Poll `predicate` on every state change (and every 50 ms) until it returns something truthy.

        On a timeout the AssertionError says what was awaited, plus `describe()` (the state, for the log)."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                detail = f"\n{describe()}" if describe is not None else ""
                raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
            self.server.changed.clear()
            try:
                await asyncio.wait_for(self.server.changed.wait(), min(0.05, remaining))
            except TimeoutError:
                pass

    async def settled(
        self,
        channel: Channel,
        *,
        after: Message | int | None = None,
        until: Callable[[list[Message]], Any] | None = None,
        quiet: float = 0.6,
        timeout: float = 15.0,
        include_ephemeral: bool = True,
    ) -> list[Message]:
        """The bot's messages in `channel` after `after`, once `until(messages)` holds (default: there is
        at least one) and the bot has not written to the channel for `quiet` seconds."""
        until = until or bool

        def ready() -> list[Message] | None:
            msgs = self.bot_messages(channel, after=after, include_ephemeral=include_ephemeral)
            if not msgs or not until(msgs):
                return None
            if time.monotonic() - self.server.last_write.get(channel.id, 0.0) < quiet:
                return None
            return msgs

        return await self.wait_for(ready, timeout=timeout, message=f"the bot's reply in #{channel.name or channel.id}")

    async def reply_to(
        self,
        message: Message,
        *,
        until: Callable[[list[Message]], Any] | None = None,
        quiet: float = 0.6,
        timeout: float = 15.0,
    ) -> list[Message]:
        return await self.settled(
            self.world.channels[message.channel_id],
            after=message,
            until=until,
            quiet=quiet,
            timeout=timeout,
            include_ephemeral=False,
        )

    async def response(
        self,
        interaction: Interaction,
        *,
        until: Callable[[Interaction], Any] | None = None,
        quiet: float = 0.6,
        timeout: float = 15.0,
    ) -> Interaction:
        """Wait until the interaction was answered, `until(interaction)` holds and the bot went quiet."""
        until = until or (lambda i: i.original is not None and i.original_edited)
        channel_id = interaction.channel_id

        def ready() -> Interaction | None:
            if interaction.response_type is None or not until(interaction):
                return None
            if time.monotonic() - self.server.last_write.get(channel_id, 0.0) < quiet:
                return None
            return interaction

        return await self.wait_for(ready, timeout=timeout, message=f"a response to interaction {interaction.id}")

    @staticmethod
    def text(messages: Iterable[Message]) -> str:
        """What the messages show as text, in either shape (see `visible_text`), concatenated."""
        return "".join(visible_text(m) for m in messages)


def _shape(message: Message | Version) -> tuple[int, list[dict[str, Any]], str]:
    """(flags, components, content) of a message, or of one stored version of it (its payload as sent)."""
    if isinstance(message, Version):
        payload = message.payload
        return int(payload.get("flags") or 0), list(payload.get("components") or []), message.content
    return message.flags, message.components, message.content


def text_displays(message: Message | Version) -> list[str]:
    """The contents of a Components V2 message's (or version's) text displays, in order (nested ones included)."""
    found: list[str] = []

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            if item.get("type") == 10:
                found.append(str(item.get("content") or ""))
            walk(item.get("components") or [])

    walk(_shape(message)[1])
    return found


def visible_text(message: Message | Version) -> str:
    """The text a person sees: a plain message's content, or a Components V2 message's text displays joined
    by blank lines (Discord refuses content on such a message, so there is nothing else).  A `Version` (one
    entry of `message.versions`) reads the same way, from the payload of that edit."""
    flags, _, content = _shape(message)
    if flags & rules.IS_COMPONENTS_V2:
        return "\n\n".join(text_displays(message))
    return content


def _attachment_spec(spec: Any) -> tuple[str, bytes, str]:
    if isinstance(spec, bytes):
        return "image.png", spec, "image/png"
    if isinstance(spec, tuple) and len(spec) == 2:
        name, data = spec
        return name, data, mimetypes.guess_type(name)[0] or "application/octet-stream"
    if isinstance(spec, tuple) and len(spec) == 3:
        return spec
    raise TypeError(f"an attachment is bytes, (name, bytes) or (name, bytes, mime), not {type(spec).__name__}")


__all__ = ["DIRECT_MESSAGES", "GUILD_MESSAGES", "Harness", "text_displays", "visible_text"]
