"""bot.splitting: parts fit Discord's limit, code fences survive a cut, nothing is lost or added."""

from __future__ import annotations

import random

import pytest

from bot.splitting import DISCORD_LIMIT, Fence, _advance, split_message, split_parts


def _end_state(text: str) -> Fence | None:
    state = None
    for line in text.splitlines(keepends=True):
        state = _advance(state, line)
    return state


def _fences_balanced(parts: list[str], text: str) -> bool:
    """Every part but the last closes what it opens; the last ends as the answer itself ends."""
    return all(_end_state(p) is None for p in parts[:-1]) and (_end_state(parts[-1]) is None) == (
        _end_state(text) is None
    )


def _check(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    parts = split_parts(text, limit)
    assert "".join(p.body for p in parts) == text  # the bodies are the answer, in order
    for part in parts:
        assert len(part.render()) <= limit
    assert _fences_balanced([p.render() for p in parts], text)
    return [p.render() for p in parts]


def test_short_text_is_one_part() -> None:
    assert split_message("hello") == ["hello"]
    assert split_parts("x" * DISCORD_LIMIT) == split_parts("x" * DISCORD_LIMIT)
    assert len(split_parts("x" * DISCORD_LIMIT)) == 1


def test_prefers_paragraph_breaks() -> None:
    para = ("word " * 60).strip()  # 299 chars
    text = "\n\n".join([para] * 12)  # ~3600 chars
    parts = _check(text)
    assert len(parts) == 2
    assert parts[0].endswith("\n\n")  # cut right after a paragraph break
    assert parts[1].startswith("word")


def test_code_block_cut_is_closed_and_reopened_with_language() -> None:
    code = "\n".join(f"    print({i})  # line {i}" for i in range(200))
    text = "Here is the code:\n\n```python\n" + code + "\n```\n\nDone."
    assert len(text) > 4500
    parts = _check(text)
    assert len(parts) >= 3
    assert parts[0].rstrip().endswith("```")
    for part in parts[1:-1]:
        assert part.startswith("```python\n")
        assert part.rstrip().endswith("```")
    assert parts[-1].startswith("```python\n")
    assert parts[-1].endswith("Done.")


def test_tilde_fence_and_long_fence_markers() -> None:
    body = "\n".join("x = 1" for _ in range(600))
    text = "~~~js\n" + body + "\n~~~\nafter"
    parts = split_parts(text, 500)
    assert "".join(p.body for p in parts) == text
    assert parts[1].prefix == "~~~js\n"
    assert all(len(p.render()) <= 500 for p in parts)
    text = "````md\n```inner```\n" + "y\n" * 800 + "````\n"
    parts = split_parts(text, 300)
    assert parts[1].prefix == "````md\n"
    assert parts[0].suffix.endswith("````")


def test_single_line_longer_than_limit() -> None:
    text = "a" * 4500
    parts = _check(text)
    assert [len(p) for p in parts] == [2000 - 4, 2000 - 4, 4500 - 2 * (2000 - 4)]
    words = ("lorem ipsum " * 500).strip()
    parts = _check(words)
    assert all(not p.startswith(" ") for p in parts[1:])  # cut after a space, not inside a word
    assert all(p.endswith(" ") for p in parts[:-1])


def test_long_line_inside_code_block() -> None:
    text = "```\n" + "z" * 5000 + "\n```"
    parts = _check(text)
    assert all(p.startswith("```") for p in parts)


def test_whitespace_only_parts_are_not_sent() -> None:
    text = "a" * 1990 + "\n" * 30
    assert all(p.strip() for p in split_message(text))


@pytest.mark.parametrize("seed", range(25))
def test_random_markdown(seed: int) -> None:
    rng = random.Random(seed)
    lines: list[str] = []
    fence_open = False
    for _ in range(rng.randint(50, 400)):
        roll = rng.random()
        if roll < 0.06:
            lines.append("```" + ("" if fence_open else rng.choice(["", "py", "rust", "c++"])))
            fence_open = not fence_open
        elif roll < 0.15:
            lines.append("")
        elif roll < 0.17:
            lines.append("q" * rng.randint(1000, 5000))
        else:
            lines.append(" ".join("w" * rng.randint(1, 12) for _ in range(rng.randint(0, 30))))
    text = "\n".join(lines)
    limit = rng.choice([100, 500, 2000])
    parts = split_parts(text, limit)
    assert "".join(p.body for p in parts) == text
    assert all(len(p.render()) <= limit for p in parts)
    assert _fences_balanced([p.render() for p in parts], text)
