"""bot.streamer.ReplyStreamer against an in-memory Target: pacing, coalescing, splitting, final text.

The end-to-end tests drive the same code through discord.py and the fake Discord; these pin the
streamer's own rules quickly and exactly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import discord

from bot import i18n
from bot.pacing import TokenBucket
from bot.splitting import split_message
from bot.streamer import ReplyStreamer
from bot.targets import Target
from handlers.chat import Reply, Request, Update
from models.protocol import Job


class Memory(Target):
    """Messages kept in a list; every write is logged with its time.  `delay` models a slow or
    rate-limited Discord (discord.py sleeping on a 429 before retrying)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.channel_id = 1
        self.messages: list[dict[str, Any]] = []
        self.log: list[tuple[float, str, int]] = []
        self.delay = delay

    async def send(
        self,
        content: str,
        *,
        view: discord.ui.View | None = None,
        files: list[discord.File] | None = None,
        first: bool = False,
    ) -> int:
        await asyncio.sleep(self.delay)
        assert 0 < len(content) <= 2000 or files
        self.messages.append({"content": content, "view": view, "files": files})
        self.log.append((time.monotonic(), "send", len(self.messages) - 1))
        return len(self.messages) - 1

    async def edit(self, handle: int, content: str, *, view: discord.ui.View | None) -> None:
        await asyncio.sleep(self.delay)
        assert 0 < len(content) <= 2000
        self.messages[handle].update(content=content, view=view)
        self.log.append((time.monotonic(), "edit", handle))

    async def delete(self, handle: int) -> None:
        self.messages[handle]["deleted"] = True
        self.log.append((time.monotonic(), "delete", handle))

    def contents(self) -> list[str]:
        return [m["content"] for m in self.messages if not m.get("deleted") and m["content"]]


def _reply() -> Reply:
    return Reply(Job("chat", {}), Request(conversation="t", text="q"))


async def _feed(updates: list[Update | float]) -> AsyncIterator[Update]:
    for item in updates:
        if isinstance(item, float):
            await asyncio.sleep(item)
        else:
            yield item


def _tokens(answer: str, delay: float, step: int = 3) -> list[Update | float]:
    out: list[Update | float] = [Update("started")]
    for i in range(step, len(answer) + step, step):
        out += [delay, Update("text", text=answer[:i])]
    return out


async def test_streams_by_edits_coalesces_and_lands_final_promptly() -> None:
    answer = " ".join(f"word{i}" for i in range(300))  # ~2.6k chars → 2 messages
    target = Memory()
    streamer = ReplyStreamer(target, TokenBucket(5, 5.0), lang=i18n.EN)
    result = await streamer.run(_reply(), _feed([*_tokens(answer, 0.004, step=12), Update("done", text=answer)]))
    assert result.final is not None and result.final.kind == "done"
    assert target.contents() == split_message(answer)
    assert "".join(target.contents()) == answer
    assert len(target.log) <= 12  # ~220 token updates coalesced into a few writes
    assert streamer.synced_at is not None and streamer.final_at is not None
    assert streamer.synced_at - streamer.final_at < 0.8  # no pacing wait (that would be >= 1 s here)


async def test_final_text_is_complete_when_discord_is_slow() -> None:
    answer = "\n".join(f"line {i}: " + "x" * 40 for i in range(80))  # ~3.9k chars
    target = Memory(delay=0.3)  # every write is slow, as under a 429 retry
    streamer = ReplyStreamer(target, TokenBucket(5, 1.0), lang=i18n.EN, min_interval=0.05)
    await streamer.run(_reply(), _feed([*_tokens(answer, 0.001, step=20), Update("done", text=answer)]))
    assert target.contents() == split_message(answer)


async def test_queue_notice_then_answer_and_restart() -> None:
    target = Memory()
    streamer = ReplyStreamer(target, TokenBucket(50, 1.0), lang=i18n.EN, min_interval=0.0)
    updates: list[Update | float] = [
        Update("queued", position=2),
        0.05,
        Update("queued", position=1),
        0.05,
        Update("started"),
        0.05,
        Update("text", text="first try"),
        0.05,
        Update("restart", attempt=2),
        0.05,
        Update("text", text="second", attempt=2),
        0.05,
        Update("done", text="second try", attempt=2),
    ]
    await streamer.run(_reply(), _feed(updates))
    shown = [m["content"] for m in target.messages]
    assert shown == ["second try"]  # one message, edited all along, ending with the full answer
    assert len(target.messages) == 1
    history = [entry[1] for entry in target.log]
    assert history[0] == "send" and set(history[1:]) == {"edit"}


async def test_stopped_and_errors_are_marked() -> None:
    target = Memory()
    streamer = ReplyStreamer(target, TokenBucket(5, 5.0), lang=i18n.ZH)
    await streamer.run(
        _reply(), _feed([Update("text", text="partial"), Update("done", text="partial", data={"stopped": True})])
    )
    assert target.contents() == ["partial\n\n" + i18n.t("stopped", i18n.ZH)]
    target = Memory()
    streamer = ReplyStreamer(target, TokenBucket(5, 5.0), lang=i18n.EN)
    await streamer.run(
        _reply(), _feed([Update("no_worker"), Update("error", data={"message": "No worker", "code": "no_worker"})])
    )
    assert target.contents() == [i18n.t("no_worker_gave_up", i18n.EN)]


async def test_buttons_stop_then_regenerate_on_last_message() -> None:
    states: list[str] = []

    def views(reply: Reply, state: str) -> discord.ui.View:
        states.append(state)
        view = discord.ui.View()
        view.add_item(discord.ui.Button(label=state, custom_id=state))
        return view

    target = Memory()
    streamer = ReplyStreamer(target, TokenBucket(5, 0.5), views=views, min_interval=0.0, first_grace=0.0)
    answer = "y" * 2500
    await streamer.run(_reply(), _feed([*_tokens(answer, 0.001, step=500), Update("done", text=answer)]))
    first, second = target.messages
    assert first["view"] is None
    assert second["view"].children[0].label == "done"
    assert "streaming" in states


async def test_many_replies_in_one_channel_share_the_budget() -> None:
    bucket = TokenBucket(5, 0.5)  # a short window keeps the test short
    target = Memory()
    answers = [f"answer {n} " + "z" * 200 for n in range(10)]
    streamers = [ReplyStreamer(target, bucket, min_interval=0.0) for _ in answers]
    await asyncio.gather(
        *(
            s.run(_reply(), _feed([*_tokens(a, 0.01, step=10), Update("done", text=a)]))
            for s, a in zip(streamers, answers, strict=True)
        )
    )
    assert sorted(target.contents()) == sorted(answers)
    stamps = sorted(t for t, _, _ in target.log)
    for i in range(len(stamps) - 5):  # never more than 5 writes in any window
        assert stamps[i + 5] - stamps[i] >= 0.5 - 0.02


async def test_custom_renderer_shows_steps() -> None:
    from bot.renderer import Renderer

    class Steps(Renderer):
        def __init__(self) -> None:
            super().__init__()
            self.steps: list[str] = []

        def render(self, update: Update) -> str | None:
            if update.kind == "step":
                self.steps.append(f"🔧 {update.data['title']}")
            else:
                super().render(update)
            return "\n".join([*self.steps, self.answer])

    target = Memory()
    streamer = ReplyStreamer(target, TokenBucket(5, 5.0), renderer=Steps(), min_interval=0.0)
    await streamer.run(
        _reply(),
        _feed([Update("step", data={"title": "python"}), 0.05, Update("text", text="42"), Update("done", text="42")]),
    )
    assert target.contents() == ["🔧 python\n42"]


async def test_a_broken_update_stream_still_ends_the_message() -> None:
    async def broken() -> AsyncIterator[Update]:
        yield Update("text", text="half an ans")
        await asyncio.sleep(0.05)
        raise ConnectionError("redis went away")

    target = Memory()
    streamer = ReplyStreamer(target, TokenBucket(5, 5.0), lang=i18n.EN, min_interval=0.0)
    result = await streamer.run(_reply(), broken())
    assert result.final is not None and result.final.kind == "error"
    [content] = target.contents()
    assert content.startswith("half an ans") and i18n.t("lost_track", i18n.EN) in content


class Typing(Memory):
    """Counts typing indicators (entered and left) next to the writes."""

    def __init__(self) -> None:
        super().__init__()
        self.typing_entered = 0

    def typing(self) -> Any:
        target = self

        class _Typing:
            async def __aenter__(self) -> None:
                target.typing_entered += 1
                target.log.append((time.monotonic(), "typing", -1))

            async def __aexit__(self, *exc: object) -> None:
                return None

        return _Typing()


async def test_quick_answer_is_one_write_without_typing() -> None:
    """An answer final shortly after its first text: one send carrying the final buttons, no typing call."""
    states: list[str] = []

    def views(reply: Reply, state: str) -> discord.ui.View:
        states.append(state)
        view = discord.ui.View()
        view.add_item(discord.ui.Button(label=state, custom_id=state))
        return view

    target = Typing()
    streamer = ReplyStreamer(target, TokenBucket(5, 5.0), views=views)
    await streamer.run(
        _reply(), _feed([Update("started"), Update("text", text="hi"), 0.005, Update("done", text="hi there")])
    )
    assert [entry[1] for entry in target.log] == ["send"]
    assert target.messages[0]["content"] == "hi there"
    assert target.messages[0]["view"].children[0].label == "done"
    assert states == ["done"] and target.typing_entered == 0


async def test_slow_answer_shows_typing_before_the_first_write() -> None:
    target = Typing()
    streamer = ReplyStreamer(target, TokenBucket(5, 5.0), min_interval=0.0)
    await streamer.run(
        _reply(),
        _feed(
            [
                Update("started"),
                0.5,
                Update("text", text="slow"),
                0.3,
                Update("text", text="slow answer"),
                0.3,
                Update("done", text="slow answer!"),
            ]
        ),
    )
    kinds = [entry[1] for entry in target.log]
    assert target.typing_entered == 1 and kinds[0] == "typing"
    assert kinds[1:] == ["send", "edit", "edit"]  # streamed: the first text shown before the answer was final
    assert target.contents() == ["slow answer!"]


async def test_stop_stays_visible_while_an_overflowing_answer_streams() -> None:
    """When the answer grows into a second message, the first keeps Stop until the second shows its own."""

    def views(reply: Reply, state: str) -> discord.ui.View:
        view = discord.ui.View()
        view.add_item(discord.ui.Button(label=state, custom_id=state))
        return view

    class Watching(Memory):
        """After every write, notes whether some message shows Stop."""

        def __init__(self) -> None:
            super().__init__(delay=0.01)
            self.stop_shown: list[bool] = []

        def _note(self) -> None:
            self.stop_shown.append(
                any(m["view"] is not None and m["view"].children[0].label == "streaming" for m in self.messages)
            )

        async def send(self, content: str, **kwargs: Any) -> int:
            handle = await super().send(content, **kwargs)
            self._note()
            return handle

        async def edit(self, handle: int, content: str, *, view: discord.ui.View | None) -> None:
            await super().edit(handle, content, view=view)
            self._note()

    target = Watching()
    streamer = ReplyStreamer(target, TokenBucket(50, 1.0), views=views, min_interval=0.0, first_grace=0.0)
    answer = " ".join(f"word{i}" for i in range(700))  # ~6k chars → 4 messages
    await streamer.run(_reply(), _feed([*_tokens(answer, 0.002, step=60), 0.05, Update("done", text=answer)]))
    assert target.contents() == split_message(answer)
    final_writes = len(split_message(answer))  # at most this many writes after the final update
    assert len(target.stop_shown) > final_writes + 3
    assert all(target.stop_shown[:-final_writes]), target.stop_shown  # Stop never missing while streaming
    assert [m["view"] is None for m in target.messages] == [True] * (len(target.messages) - 1) + [False]
