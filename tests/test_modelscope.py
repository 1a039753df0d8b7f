"""MODEL_HUB=modelscope: LLAMACPP_MODEL references fetched through ModelScope's HTTP API (the two calls the modelscope
SDK 1.x makes for one file), from a local stand-in built from the SDK's source (tests/fakemodelscope.py) serving the
bundled SmolLM2 GGUF; then the real llama.cpp engine loads what was fetched.  No test reaches ModelScope."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_hub import BUNDLED, BUNDLED_FILE, BUNDLED_SHA, hub_lines, sha256

from models import hub as hub_module
from models.engines.base import ChatMessage, GenParams
from models.engines.llamacpp import LlamaCppEngine
from models.hub import DEFAULT_FILE, HubError, HubReference, hub_for, locate_gguf
from models.modelscope import DEFAULT_REPO, ModelScopeHub, endpoint_of
from models.settings import Settings
from tests.fakemodelscope import FakeModelScope

REPO = "testorg/smollm2-0.1b-gguf"  # a dot in the name: the SDK's cache writes it as ___
SLOW = pytest.mark.slow


@pytest.fixture
def fake() -> Iterator[FakeModelScope]:
    ms = FakeModelScope()
    ms.add(REPO, BUNDLED_FILE, source=BUNDLED)
    ms.add(REPO, "README.md", data=b"# SmolLM2 (test copy)\n")
    ms.start()
    yield ms
    ms.stop()


@pytest.fixture
def hub_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="models.hub")
    return caplog


def ms_settings(fake: FakeModelScope, tmp_path: Path, model: str, **extra: object) -> Settings:
    values: dict[str, object] = {
        "engine": "llamacpp",
        "llamacpp_model": model,
        "model_hub": "modelscope",
        "modelscope_domain": fake.url,
        "modelscope_cache": str(tmp_path / "ms"),
        "hf_hub_offline": False,
        **extra,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def model_dir(tmp_path: Path) -> Path:
    return tmp_path / "ms" / "models" / "testorg" / "smollm2-0___1b-gguf"


def test_the_sdks_environment_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_HUB", "modelscope")
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "modelscope.example.cn")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "cache"))
    hub = hub_for(Settings(_env_file=None))
    assert isinstance(hub, ModelScopeHub)
    assert hub.endpoint == "https://modelscope.example.cn" and hub.cache_root == tmp_path / "cache" / "models"
    assert endpoint_of("") == "https://www.modelscope.cn" and endpoint_of("http://127.0.0.1:1/") == "http://127.0.0.1:1"
    monkeypatch.delenv("MODELSCOPE_CACHE")
    assert ModelScopeHub(Settings(_env_file=None)).cache_root == Path.home() / ".cache/modelscope/hub/models"
    monkeypatch.delenv("MODEL_HUB")
    assert not isinstance(hub_for(Settings(_env_file=None)), ModelScopeHub)


@SLOW
def test_first_start_downloads_with_progress_verifies_then_hits_the_cache(
    fake: FakeModelScope, tmp_path: Path, hub_log: pytest.LogCaptureFixture
) -> None:
    settings = ms_settings(fake, tmp_path, f"{REPO}:Q4_1")
    path = locate_gguf(settings)
    assert path == model_dir(tmp_path) / BUNDLED_FILE and sha256(path) == BUNDLED_SHA  # the SDK's layout
    listing = [r for r in fake.requests if r.path.endswith("/repo/files")]
    assert listing and listing[0].query == {"Revision": "master", "Recursive": "True"}
    (download,) = fake.downloads()
    assert download.query == {"Revision": "master", "FilePath": BUNDLED_FILE} and "range" not in download.headers
    lines = hub_lines(hub_log)
    percents = {int(line.split(": ")[1].split("%")[0]) for line in lines if "%" in line}
    assert {p // 10 for p in percents} == set(range(1, 11)), lines
    assert any("checksum verified" in line for line in lines)
    assert not list((tmp_path / "ms").rglob("._____temp/**/*.gguf"))  # the partial became the file
    assert locate_gguf(settings) == path and len(fake.downloads()) == 1  # a second start: the cache
    offline = settings.model_copy(update={"hf_hub_offline": True})
    asked = len(fake.requests)
    assert locate_gguf(offline) == path and len(fake.requests) == asked  # offline: not even asked


@SLOW
def test_a_cut_connection_resumes_with_the_sdks_range(
    fake: FakeModelScope, tmp_path: Path, hub_log: pytest.LogCaptureFixture
) -> None:
    cut = 25_000_000
    fake.cut_next_body_after = cut
    path = locate_gguf(ms_settings(fake, tmp_path, f"{REPO}:{BUNDLED_FILE}"))
    assert path is not None and sha256(path) == BUNDLED_SHA
    first, second = fake.downloads()
    assert "range" not in first.headers
    start, _, end = second.headers["range"].removeprefix("bytes=").partition("-")
    assert 0 < int(start) <= cut and int(end) == BUNDLED.stat().st_size - 1  # bytes=N-(size-1), as the SDK asks
    assert any("broke off" in line and "resuming" in line for line in hub_lines(hub_log, logging.WARNING))


@SLOW
def test_a_restart_continues_the_partial_download(
    fake: FakeModelScope, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ms_settings(fake, tmp_path, f"{REPO}:Q4_1")
    advance = hub_module.Transfer.advance

    def killed_at_30_mb(self: hub_module.Transfer, done: int, n: int) -> None:
        if done >= 30_000_000:
            raise KeyboardInterrupt
        advance(self, done, n)

    monkeypatch.setattr(hub_module.Transfer, "advance", killed_at_30_mb)
    with pytest.raises(KeyboardInterrupt):
        locate_gguf(settings)
    (partial,) = [p for p in (tmp_path / "ms" / "models" / "._____temp").rglob("*") if p.is_file()]
    kept = partial.stat().st_size
    assert 0 < kept < BUNDLED.stat().st_size
    assert ModelScopeHub(settings).cached(HubReference(REPO, "Q4_1")) is None  # a partial file is never the model
    monkeypatch.setattr(hub_module.Transfer, "advance", advance)
    path = locate_gguf(settings)
    assert path is not None and sha256(path) == BUNDLED_SHA
    assert fake.downloads()[-1].headers["range"] == f"bytes={kept}-{BUNDLED.stat().st_size - 1}"


@SLOW
def test_a_checksum_mismatch_fails_and_leaves_nothing(fake: FakeModelScope, tmp_path: Path) -> None:
    settings = ms_settings(fake, tmp_path, f"{REPO}:Q4_1")
    fake.corrupt.add(BUNDLED_SHA)
    with pytest.raises(HubError, match=r"does not match the hub's checksum \(sha256 .*deleted"):
        locate_gguf(settings)
    assert not [p for p in (tmp_path / "ms").rglob("*") if p.is_file() and p.stat().st_size > 1000]
    fake.corrupt.clear()
    path = locate_gguf(settings)
    assert path is not None and sha256(path) == BUNDLED_SHA


def test_unknown_model_and_file_are_named(fake: FakeModelScope, tmp_path: Path) -> None:
    with pytest.raises(HubError, match=r"ModelScope \(http://127\.0\.0\.1:\d+\) has no model 'nobody/nothing'"):
        locate_gguf(ms_settings(fake, tmp_path, "nobody/nothing:Q4_K_M"))
    with pytest.raises(HubError, match=r"has no file 'nope\.gguf'; its GGUF files: " + BUNDLED_FILE):
        locate_gguf(ms_settings(fake, tmp_path, f"{REPO}:nope.gguf"))
    with pytest.raises(HubError, match=r"LLAMACPP_MODEL=.* is not in the local cache .* and HF_HUB_OFFLINE is set"):
        locate_gguf(ms_settings(fake, tmp_path, f"{REPO}:Q4_1", hf_hub_offline=True))
    fake.api_status = 503
    with pytest.raises(HubError, match="answered HTTP 503"):
        locate_gguf(ms_settings(fake, tmp_path, f"{REPO}:Q4_1"))
    assert not fake.downloads()


def test_the_default_model_comes_from_shanghai_ai_laboratorys_repository(fake: FakeModelScope, tmp_path: Path) -> None:
    """Nothing configured + MODEL_HUB=modelscope: InternLM2.5-1.8B-Chat's GGUF under ModelScope's name for it (a
    few bytes here: only the choice is tested, not the model)."""
    fake.add(DEFAULT_REPO, DEFAULT_FILE, data=b"GGUF" + bytes(60))
    path = locate_gguf(ms_settings(fake, tmp_path, ""))
    assert path is not None and path.name == DEFAULT_FILE
    assert path.parent == tmp_path / "ms" / "models" / "Shanghai_AI_Laboratory" / "internlm2_5-1_8b-chat-gguf"
    assert fake.downloads()[0].path == f"/api/v1/models/{DEFAULT_REPO}/repo"


@SLOW
async def test_the_engine_loads_the_fetched_gguf_and_generates(fake: FakeModelScope, tmp_path: Path) -> None:
    engine = LlamaCppEngine.from_settings(ms_settings(fake, tmp_path, f"{REPO}:Q4_1", llamacpp_n_ctx=512))
    await engine.start()
    try:
        assert engine.model_path == model_dir(tmp_path) / BUNDLED_FILE
        pieces = [
            p
            async for p in engine.stream_chat(
                [ChatMessage("user", "Say hello.")], GenParams(temperature=0.0, max_new_tokens=6), asyncio.Event()
            )
        ]
        assert "".join(pieces).strip()
    finally:
        await engine.close()
