"""`stream_reply`: show a handler's `Reply` in Discord — the one call every feature makes.

    target = ChannelTarget(message.channel, reference=message)     # or InteractionTarget(interaction)
    result = await stream_reply(bot, reply, target, lang=lang)      # returns when the answer is final

It wires the parts together: the channel's write budget (`bot.buckets`), the reply's buttons
(`bot.reply_view`), the resume record (bot/tracking.py), the bot's metrics, and the streamer
(bot/streamer.py) that renders the updates (bot/renderer.py) into the target (bot/targets.py), as plain
messages of 2,000 characters or Components V2 layouts of 4,000 (bot/layouts.py): `RENDER_MODE`, or the
server's/channel's `/settings` choice, which the request read with its other settings (`Reply.render_mode`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from handlers.types import Reply, Update

from . import i18n
from .host import BotHost
from .layouts import V2_TEXT_LIMIT
from .renderer import Renderer
from .splitting import DISCORD_LIMIT
from .streamer import ReplyStreamer, StreamResult
from .targets import Target
from .tracking import tracked


def components_for(bot: BotHost, reply: Reply) -> bool:
    """Whether `reply` is shown as a Components V2 layout: its own mode, else the process default."""
    return (reply.render_mode or bot.settings.render_mode) == "components"


async def stream_reply(
    bot: BotHost,
    reply: Reply,
    target: Target,
    *,
    lang: str = i18n.EN,
    renderer: Renderer | None = None,
    buttons: bool = True,
    owner: int | None = None,
    updates: AsyncIterator[Update] | None = None,
) -> StreamResult:
    """Stream `reply` into `target` with the bot's shared per-channel buckets and reply buttons.

    `owner` (the asker's user id) may press Stop/Regenerate (moderators always may); None = anyone.
    `buttons=False` leaves them off.  `updates` defaults to `bot.runtime.chat.follow(reply)`; pass your
    own iterator to post-process.  A job is rendered at most once per process: a second call for a job
    already streaming here returns at once (with `final=None`), so nothing is written or recorded twice.
    """
    if not bot.live.claim(reply.job.id):
        return StreamResult(None, "")
    try:
        bot.metrics.reply_started(reply)
        async with tracked(bot, reply, target, lang=lang, owner=owner) as target:  # survives a bot restart
            components = components_for(bot, reply)
            streamer = ReplyStreamer(
                target,
                bot.buckets.get(target.channel_id),
                lang=lang,
                renderer=renderer,
                views=(lambda r, state: bot.reply_view(r, state, lang, owner)) if buttons else None,
                blobs=bot.runtime.bus.get_blob,
                components=components,
                limit=V2_TEXT_LIMIT if components else DISCORD_LIMIT,
            )
            bot.live.streamers[reply.job.id] = streamer  # for Stop (bot/buttons.py → abandon)
            result = await streamer.run(reply, updates if updates is not None else bot.runtime.chat.follow(reply))
    finally:
        bot.live.release(reply.job.id)
    bot.metrics.reply_finished(reply, result, synced_at=streamer.synced_at)
    return result
