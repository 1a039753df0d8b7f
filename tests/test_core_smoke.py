"""The queue path end to end in one process: submit → worker → events → history."""

from __future__ import annotations

from handlers.chat import ChatHandler, Request
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from models.protocol import Bus
from models.settings import Settings
from models.worker import Worker


async def test_chat_roundtrip(settings: Settings, bus: Bus, worker: Worker) -> None:
    history = HistoryStore(bus.redis)
    chat = ChatHandler(bus, history, ConfStore(bus.redis, settings), settings)
    reply = await chat.ask(Request(conversation="console:t", text="hello there"))
    updates = [u async for u in chat.follow(reply)]
    assert updates[-1].kind == "done"
    assert updates[-1].text.startswith("echo: hello there")
    assert any(u.kind == "text" for u in updates)
    turns = await history.recent("console:t")
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].content == updates[-1].text
    reply = await chat.ask(Request(conversation="console:t", text="again"))
    final = [u async for u in chat.follow(reply)][-1]
    assert "turns=2" in final.text
