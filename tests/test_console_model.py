"""`/model` in console mode (`python -m bot console`, a real subprocess with its embedded Redis and worker): it
lists `CHAT_MODELS` with what is served, chooses the model the console's requests carry (the test engine
names the model it stands for in each answer, so the output shows who answered), refuses an unknown name,
keeps the choice across runs (Redis AOF under DATA_DIR) and goes back to the default with `--clear`."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_console import run_console

pytestmark = pytest.mark.timeout(180)
MODELS = "alpha=test,beta=test"


def test_console_model_lists_chooses_and_remembers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    notes = tmp_path / "notes.txt"
    notes.write_text("a note\n", encoding="utf-8")
    out = run_console(
        data,
        ["/model", "hi", "/model beta", "again", f"/file {notes} read it", "/model gamma", "/model"],
        engine="test",
        timeout=90,
        CHAT_MODELS=MODELS,
    )
    lines = out.splitlines()
    assert lines[:4] == [
        "Chat model for this console: alpha (the default).",
        "Configured models:",
        " * alpha (test) — served",
        "   beta (test) — served",
    ]
    assert lines[4] == "echo: hi (turns=1, images=0, model=alpha) "
    assert lines[5] == "This console now uses beta."
    assert lines[6] == "echo: again (turns=2, images=0, model=beta) "
    gamma = lines.index("'gamma' is not one of the configured models: alpha, beta.")
    echoed = "\n".join(lines[7:gamma])  # the file's text is echoed too, then the turn count
    assert echoed.startswith("echo: read it") and "File: notes.txt" in echoed and echoed.endswith("model=beta) ")
    assert lines[gamma + 1 :] == [
        "Chat model for this console: beta (chosen here).",
        "Configured models:",
        "   alpha (test) — served",
        " * beta (test) — served",
    ]
    # A second run keeps the choice; --clear goes back to the default.
    out = run_console(data, ["more", "/model --clear", "back"], engine="test", timeout=90, CHAT_MODELS=MODELS)
    lines = out.splitlines()
    assert lines[0] == "echo: more (turns=4, images=0, model=beta) "
    assert lines[1] == "Forgot the model chosen for this console."
    assert lines[2] == "Chat model for this console: alpha (the default)."
    assert lines[-1] == "echo: back (turns=5, images=0, model=alpha) "


def test_console_model_with_one_model_names_it(tmp_path: Path) -> None:
    out = run_console(tmp_path / "data", ["/model", "/model beta", "hi"], engine="test", timeout=60)
    assert out.splitlines() == [
        "Only one chat model is configured here: test.",
        "Only one chat model is configured here: test.",
        "echo: hi (turns=1, images=0) ",
    ]
