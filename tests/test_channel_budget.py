"""Ten replies streaming in one channel share the channel's write budget: no 429 from a Discord that
enforces 5 message writes per window per channel, and every answer ends complete."""

from __future__ import annotations

import pytest

from bot.pacing import BucketRegistry
from tests.fakediscord import Harness
from tests.fakediscord.fixtures import BotRunner, reply_finished
from tests.fakediscord.harness import visible_text

pytestmark = pytest.mark.timeout(90)


async def test_ten_replies_in_one_channel_without_429(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    h.server.rate_limits = True
    h.server.rate_limit_window = 1.0  # Discord's window is 5 s; a shorter one keeps the test fast
    people = [h.add_user(f"user{i}") for i in range(10)]
    bot = await discord_bot.start(test_engine_token_delay=0.02, worker_concurrency=10)
    bot.buckets = BucketRegistry(capacity=5, per=1.0, reserve=1)  # the same rule, on the same window
    sent = [
        await h.send(h.general, person, f"{h.bot.mention} reply-{i} [[repeat:40]]") for i, person in enumerate(people)
    ]

    def finished() -> bool:
        mine = h.bot_messages(h.general)
        return len(mine) >= 10 and reply_finished(mine)

    await h.wait_for(finished, timeout=60, message="ten finished replies")
    assert not [c for c in h.calls if c.status == 429]
    assert not h.errors()
    for msg in sent:
        [reply] = [m for m in h.bot_messages(h.general) if m.reference and int(m.reference["message_id"]) == msg.id]
        assert visible_text(reply).split() == [f"w{k}" for k in range(40)]
    writes = [c for c in h.message_writes() if c.channel_id == h.general.id]
    assert len(writes) >= 10  # one write per reply at least; waiting for budget coalesces the rest
