"""Fitting a conversation into the model's context window, with the engine's own tokenizer."""

from __future__ import annotations

from .engines.base import ChatMessage, Engine


def fit_messages(engine: Engine, system: str, turns: list[ChatMessage], reply_budget: int) -> list[ChatMessage]:
    """The system prompt plus the newest turns that fit `context_window - reply_budget`.

    The newest user turn is always kept; if it alone does not fit it is cut from the front (its end is
    usually the question).  Older turns are dropped whole, oldest first, never split.  A system prompt that
    would take more than half the budget is cut (its end) to half, so the question always has room.
    """
    # A reply budget as large as the window (MAX_NEW_TOKENS 8192 on a 4k model) would leave no room for the
    # conversation at all; then the prompt gets half, and the engine stops at its context end.
    if reply_budget >= engine.context_window - 64:
        reply_budget = engine.context_window // 2
    budget = max(64, engine.context_window - reply_budget)
    head = [ChatMessage("system", system)] if system else []
    used = engine.count_message_tokens(head) if head else 0
    if used > budget // 2:
        head = [_truncate_back(engine, head[0], budget // 2)]
        used = engine.count_message_tokens(head)
    kept: list[ChatMessage] = []
    for index, turn in enumerate(reversed(turns)):
        cost = engine.count_message_tokens([turn])
        if used + cost > budget:
            if index == 0:
                kept.append(_truncate_front(engine, turn, budget - used))
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    # A conversation must not start with an assistant turn for most chat templates.
    while kept and kept[0].role == "assistant":
        kept.pop(0)
    return head + kept


def _truncate_back(engine: Engine, turn: ChatMessage, budget: int) -> ChatMessage:
    """The longest beginning of the turn that fits `budget` (message overhead included)."""
    text = turn.content
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix that fits
        mid = (lo + hi + 1) // 2
        if engine.count_message_tokens([ChatMessage(turn.role, text[:mid] + "…")]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return ChatMessage(turn.role, text[:lo] + "…", turn.images, turn.name)


def _truncate_front(engine: Engine, turn: ChatMessage, budget: int) -> ChatMessage:
    text = turn.content
    lo, hi = 0, len(text)
    while lo < hi:  # smallest cut that fits
        mid = (lo + hi) // 2
        if engine.count_tokens(text[mid:]) + 8 <= max(budget, 8):
            hi = mid
        else:
            lo = mid + 1
    return ChatMessage(turn.role, "…" + text[lo:], turn.images, turn.name)
