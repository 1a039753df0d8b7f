"""The benchmark harness runs and reports (a smoke run: the figures themselves are in docs/performance.md,
measured with `make bench`; nothing here asserts a timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "ENGINE")}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=180, env=env
    )


def test_registry_modules_expose_run() -> None:
    import importlib

    from bench import REGISTRY

    assert {"cpu_tokens", "overlap", "overhead"} <= set(REGISTRY)
    for module in REGISTRY.values():
        assert callable(importlib.import_module(module).run)


def test_overhead_quick_run_reports_percentiles(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = bench("overhead", "--quick", "--markdown", "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {r["metric"]: r for r in data["results"]}
    for topology in ("embedded worker", "worker process"):
        p50, p99 = rows[f"p50 per job ({topology})"], rows[f"p99 per job ({topology})"]
        assert 0 < p50["value"] <= p99["value"]
        assert p50["target"] and p50["ok"] in (True, False)
    assert "| overhead | p50 per job (embedded worker) |" in result.stdout
    assert "cores" in data["machine"]


def test_unknown_bench_is_refused() -> None:
    result = bench("no-such-bench")
    assert result.returncode == 2 and "known:" in result.stderr


def test_p1_levels_option(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.common import parse_options

    monkeypatch.delenv("BENCH_P1_LEVELS", raising=False)
    assert parse_options(["--p1-levels", "1, 32"])[0].p1_levels == (1, 32)
    assert parse_options([])[0].p1_levels == ()  # the default levels of bench/discord_path.py
    monkeypatch.setenv("BENCH_P1_LEVELS", "32")
    assert parse_options([])[0].p1_levels == (32,)
    for bad in ("1,x", "0", "129"):
        with pytest.raises(SystemExit):
            parse_options(["--p1-levels", bad])
