"""Settings are a public contract: every field is documented in `.env.example`, and values parse the way the
documentation says."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT
from pydantic import ValidationError

from models.settings import Settings, get_settings

ENV_EXAMPLE = ROOT / ".env.example"


def documented_names() -> set[str]:
    names = set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*#?\s*([A-Z][A-Z0-9_]*)=", line)
        if match:
            names.add(match.group(1))
    return names


def test_every_setting_is_documented_in_env_example() -> None:
    missing = sorted(name.upper() for name in Settings.model_fields if name.upper() not in documented_names())
    assert not missing, f"add these to .env.example (with a comment): {missing}"


def test_env_example_names_only_real_settings() -> None:
    known = {name.upper() for name in Settings.model_fields}
    unknown = sorted(documented_names() - known)
    assert not unknown, f".env.example documents settings that do not exist: {unknown}"


def test_env_example_itself_parses() -> None:
    settings = Settings(_env_file=ENV_EXAMPLE)
    assert settings.engine == "llamacpp"
    assert settings.redis_url == ""
    assert settings.discord_token is None or not settings.discord_token.get_secret_value()


def test_csv_lists_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None, chat_channels="1, 2;3").chat_channels == [1, 2, 3]
    assert Settings(_env_file=None, allowed_guilds="").allowed_guilds == []
    monkeypatch.setenv("ALLOWED_GUILDS", "10,20")
    monkeypatch.setenv("ALLOWED_ROLES", " 7 ")
    settings = Settings(_env_file=None)
    assert settings.allowed_guilds == [10, 20]
    assert settings.allowed_roles == [7]
    assert settings.allowed_channels == []
    with pytest.raises(ValueError):
        Settings(_env_file=None, chat_channels="general")


def test_user_rate_limit_parses() -> None:
    assert Settings(_env_file=None).rate_limit == (5, 60.0)
    assert Settings(_env_file=None, user_rate_limit="3/10").rate_limit == (3, 10.0)
    assert Settings(_env_file=None, user_rate_limit="0/60").rate_limit[0] == 0  # disabled
    assert Settings(_env_file=None, user_rate_limit="12").rate_limit == (12, 60.0)


@pytest.mark.parametrize("bad", ["abc", "5/0", "5/-1", "-1/60", "5/x", "", "1.5/60", "5/inf"])
def test_a_wrong_user_rate_limit_fails_at_startup_with_a_clear_message(bad: str) -> None:
    with pytest.raises(ValidationError, match="requests/seconds such as 5/60"):
        Settings(_env_file=None, user_rate_limit=bad)


def test_get_settings_names_the_wrong_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER_RATE_LIMIT", "5/0")
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit, match=r"USER_RATE_LIMIT: must be requests/seconds .* not '5/0'"):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_environment_overrides_and_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_CONCURRENCY", "64")
    monkeypatch.setenv("EMBEDDED_WORKER", "false")
    monkeypatch.setenv("JOB_VISIBILITY_TIMEOUT", "1.5")
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token")
    settings = Settings(_env_file=None)
    assert settings.worker_concurrency == 64
    assert settings.embedded_worker is False
    assert settings.job_visibility_timeout == 1.5
    assert "secret-token" not in repr(settings)  # secrets never print
    with pytest.raises(ValueError):
        Settings(_env_file=None, engine="gpt")


def test_generation_defaults_follow_the_internlm_demo() -> None:
    """Unset sampling is the model's (the worker's engine fills it in); what nobody chose falls back to the
    InternLM chat demo's values, which `GenParams` holds."""
    from models.engines.base import GenParams

    settings = Settings(_env_file=None, engine="openai")
    assert (settings.temperature, settings.top_p, settings.repetition_penalty) == (None, None, None)
    generic = GenParams()
    assert (generic.temperature, generic.top_p, generic.max_new_tokens, generic.repetition_penalty) == (
        0.8,
        0.8,
        1024,
        1.005,
    )
    assert "InternLM (书生·浦语)" in settings.system_prompt


def test_only_explicit_sampling_settings_bind_every_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings no longer guess the model's sampling (the engine knows which model loaded: tests/
    test_sampling_defaults.py); what the environment or code sets explicitly is kept for every model."""
    assert Settings(_env_file=None).explicit_sampling() == {}
    assert Settings(_env_file=ENV_EXAMPLE).explicit_sampling() == {}  # a copied .env.example pins nothing
    monkeypatch.setenv("TOP_P", "")  # empty = unset
    assert Settings(_env_file=None).explicit_sampling() == {}
    monkeypatch.setenv("TEMPERATURE", "0.5")
    monkeypatch.setenv("MAX_NEW_TOKENS", "256")
    assert Settings(_env_file=None).explicit_sampling() == {"temperature": 0.5, "max_new_tokens": 256}
    assert Settings(_env_file=None, repetition_penalty=1.1).explicit_sampling()["repetition_penalty"] == 1.1


def test_readme_settings_table_is_current() -> None:
    """The README's settings tables are generated from .env.example; a new setting must reach both."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "scripts/settings_table.py", "--check"], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
