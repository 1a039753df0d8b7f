"""Where a reply's messages go: a channel (`ChannelTarget`) or a deferred interaction (`InteractionTarget`).

Every write is sent with mentions disabled (`NO_MENTIONS`): model text cannot ping @everyone, a role or a
user.  `ephemeral` answers an interaction with a notice only the person sees.  A Components V2 layout
(`discord.ui.LayoutView`, bot/layouts.py) is sent without `content`: Discord refuses content on such a message.
`files` on an edit are uploaded and become the message's attachments.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Any

import discord

NO_MENTIONS = discord.AllowedMentions.none()


async def ephemeral(interaction: discord.Interaction, text: str) -> None:
    """Answer an interaction with a notice only the person sees (refusals, confirmations)."""
    await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


def _body(
    content: str, view: discord.ui.View | discord.ui.LayoutView | None, files: list[discord.File] | None
) -> dict[str, Any]:
    """The keyword arguments of an edit: no `content` next to a layout; `files` become its attachments."""
    kwargs: dict[str, Any] = {"view": view, "allowed_mentions": NO_MENTIONS}
    if not isinstance(view, discord.ui.LayoutView):
        kwargs["content"] = content
    if files:
        kwargs["attachments"] = files
    return kwargs


class Target(ABC):
    """Where a reply's messages go.  Handles are whatever the target needs to edit a message later."""

    channel_id: int = 0

    @abstractmethod
    async def send(
        self,
        content: str,
        *,
        view: discord.ui.View | discord.ui.LayoutView | None = None,
        files: list[discord.File] | None = None,
        first: bool = False,
    ) -> Any: ...

    @abstractmethod
    async def edit(
        self,
        handle: Any,
        content: str,
        *,
        view: discord.ui.View | discord.ui.LayoutView | None,
        files: list[discord.File] | None = None,
    ) -> Any: ...

    async def delete(self, handle: Any) -> None:
        with contextlib.suppress(discord.HTTPException):
            await handle.delete()

    def typing(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Shown while nothing is visible yet (a no-op where Discord already shows "thinking")."""
        return contextlib.nullcontext()

    def initial_handles(self) -> list[Any]:
        """Messages that exist before the first write (an interaction's deferred response)."""
        return []


class ChannelTarget(Target):
    """A reply in a channel, thread or DM; the first message references the person's message."""

    def __init__(self, channel: discord.abc.Messageable, *, reference: discord.Message | None = None) -> None:
        self.channel = channel
        self.reference = reference
        self.channel_id = getattr(channel, "id", 0)

    async def send(
        self,
        content: str,
        *,
        view: discord.ui.View | discord.ui.LayoutView | None = None,
        files: list[discord.File] | None = None,
        first: bool = False,
    ) -> discord.Message:
        kwargs: dict[str, Any] = {"allowed_mentions": NO_MENTIONS}
        if isinstance(view, discord.ui.LayoutView):
            content = ""
        if view is not None:
            kwargs["view"] = view
        if files:
            kwargs["files"] = files
        if first and self.reference is not None:
            try:
                return await self.channel.send(
                    content or None,
                    reference=self.reference.to_reference(fail_if_not_exists=False),
                    mention_author=False,
                    **kwargs,
                )
            except discord.Forbidden:
                pass  # replying needs Read Message History; without it, answer as a plain message
        return await self.channel.send(content or None, **kwargs)

    async def edit(
        self,
        handle: discord.Message,
        content: str,
        *,
        view: discord.ui.View | discord.ui.LayoutView | None,
        files: list[discord.File] | None = None,
    ) -> Any:
        return await handle.edit(**_body(content, view, files))

    def typing(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.channel.typing()


class _Original:
    """Marks an interaction's original response (edited through the interaction webhook)."""


class InteractionTarget(Target):
    """A reply to a deferred interaction: the original response, then follow-ups."""

    ORIGINAL = _Original()

    def __init__(self, interaction: discord.Interaction) -> None:
        self.interaction = interaction
        self.channel_id = interaction.channel_id or 0

    def initial_handles(self) -> list[Any]:
        return [self.ORIGINAL] if self.interaction.response.is_done() else []

    async def send(
        self,
        content: str,
        *,
        view: discord.ui.View | discord.ui.LayoutView | None = None,
        files: list[discord.File] | None = None,
        first: bool = False,
    ) -> Any:
        kwargs: dict[str, Any] = {"allowed_mentions": NO_MENTIONS, "wait": True}
        if view is not None:
            kwargs["view"] = view
        if files:
            kwargs["files"] = files
        if isinstance(view, discord.ui.LayoutView):
            return await self.interaction.followup.send(**kwargs)
        return await self.interaction.followup.send(content or "", **kwargs)

    async def edit(
        self,
        handle: Any,
        content: str,
        *,
        view: discord.ui.View | discord.ui.LayoutView | None,
        files: list[discord.File] | None = None,
    ) -> Any:
        if handle is self.ORIGINAL:
            return await self.interaction.edit_original_response(**_body(content, view, files))
        return await handle.edit(**_body(content, view, files))

    async def delete(self, handle: Any) -> None:
        with contextlib.suppress(discord.HTTPException):
            if handle is self.ORIGINAL:
                await self.interaction.delete_original_response()
            else:
                await handle.delete()
