"""The tree's rules, checked: the import contracts (.importlinter: layers bot → handlers → models, no cycles
at any depth, cogs independent, the sandbox's child side isolated), every Redis key spelled in one module,
and no module over about 400 lines without a reason at its top.

These read the source (import-linter's graph, Python's own parser); nothing is mocked.
"""

from __future__ import annotations

import ast
import contextlib
import io
from pathlib import Path

import pytest
from importlinter import configuration
from importlinter.application.use_cases import SUCCESS, lint_imports

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "handlers", "models")
KEYS_MODULE = Path("models/protocol/keys.py")
# Discord component custom ids share the "ilm:" prefix but are not Redis keys.
NOT_REDIS = {Path("bot/buttons.py")}
MAX_LINES = 420  # "about 400"


def _modules() -> list[Path]:
    return sorted(p.relative_to(ROOT) for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))  # the contract type in tests/import_contracts.py
    configuration.configure()  # what the lint-imports command does first
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = lint_imports(config_filename=str(ROOT / ".importlinter"), no_logo=True, cache_dir=None)
    assert result == SUCCESS, out.getvalue()


def _key_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants (also the literal parts of f-strings) that look like a Redis key of the project."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("ilm:"):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            parts = [v for v in node.values if isinstance(v, ast.Constant)]
            if parts and isinstance(parts[0].value, str) and parts[0].value.startswith("ilm:"):
                found.append((node.lineno, parts[0].value))
            elif any(
                isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Attribute) and v.value.attr == "prefix"
                for v in node.values
            ):
                found.append((node.lineno, "{...prefix}"))
    return found


def test_every_redis_key_is_spelled_in_the_keys_module() -> None:
    offenders = []
    for path in _modules():
        if path == KEYS_MODULE or path in NOT_REDIS:
            continue
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        offenders += [f"{path}:{line}: {text!r}" for line, text in _key_literals(tree)]
    assert not offenders, "Redis key names belong in models/protocol/keys.py (KEYS):\n" + "\n".join(offenders)
    keys = ast.parse((ROOT / KEYS_MODULE).read_text(encoding="utf-8"))
    assert _key_literals(keys), "the check above must see the keys module's own spelling"


def test_the_key_check_catches_a_raw_key() -> None:
    assert _key_literals(ast.parse('redis.get("ilm:hist:x")'))
    assert _key_literals(ast.parse('redis.get(f"ilm:rate:{user}")'))
    assert _key_literals(ast.parse('redis.get(f"{KEYS.prefix}:conf:{scope}")'))
    assert not _key_literals(ast.parse("redis.get(KEYS.history(c))"))


def test_no_module_is_long_without_a_reason() -> None:
    long = []
    for path in _modules():
        text = (ROOT / path).read_text(encoding="utf-8")
        if text.count("\n") <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "Why " not in doc:
            long.append(f"{path}: {text.count(chr(10))} lines, no 'Why ...' reason in its docstring")
    assert not long, "\n".join(long)
