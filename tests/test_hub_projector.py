"""LLAMACPP_CLIP_MODEL_PATH by name: the vision projector (mmproj) fetched like LLAMACPP_MODEL, through the real
`huggingface_hub` client and the local stand-in of the Hub's HTTP API (tests/fakehub.py), then opened by the real
llama.cpp engine (`libmtmd`'s InternVL path, with the tiny random-weight projector of tests/tinyvision.py)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants
from test_hub import BUNDLED, BUNDLED_FILE, hub_lines, settings_for, sha256

from models.engines.base import ChatMessage, EngineError, GenParams, ImageInput
from models.engines.llamacpp import LlamaCppEngine
from models.hub import Hub, HubError, HubReference, locate_projector, pick_files
from tests.fakehub import FakeHub

pytest.importorskip("gguf")
REPO = "testorg/tiny-internvl-gguf"
MMPROJ = "mmproj-tiny-internvl-F16.gguf"


@pytest.fixture(scope="module")
def projector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tinyvision import build_internvl_mmproj

    return build_internvl_mmproj(tmp_path_factory.mktemp("mmproj") / MMPROJ)


@pytest.fixture
def fake(projector: Path) -> Iterator[FakeHub]:
    hub = FakeHub()
    hub.add(REPO, BUNDLED_FILE, source=BUNDLED)  # the model the projector belongs to (SmolLM2's width)
    hub.add(REPO, MMPROJ, source=projector)
    hub.add(REPO, "README.md", data=b"# tiny InternVL projector (test)\n", lfs=False)
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture(autouse=True)
def client_online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


def test_projectors_are_picked_by_quantisation_then_f16() -> None:
    names = ["model-Q4_K_M.gguf", "mmproj-model-f16.gguf", "mmproj-model-Q8_0.gguf", "README.md"]
    assert pick_files(HubReference("o/r"), names, projector=True) == ["mmproj-model-f16.gguf"]
    assert pick_files(HubReference("o/r", "Q8_0"), names, projector=True) == ["mmproj-model-Q8_0.gguf"]
    assert pick_files(HubReference("o/r", "mmproj-model-Q8_0.gguf"), names, projector=True) == [
        "mmproj-model-Q8_0.gguf"
    ]
    assert pick_files(HubReference("o/r"), ["m-Q4_K_M.gguf", "mmproj-x.gguf"], projector=True) == ["mmproj-x.gguf"]
    with pytest.raises(HubError, match=r"no Q4_0 projector \(mmproj\) GGUF; its mmproj files: mmproj-model-f16"):
        pick_files(HubReference("o/r", "Q4_0"), names, projector=True)
    with pytest.raises(HubError, match="it has no mmproj GGUF files"):
        pick_files(HubReference("o/r"), ["model-Q4_K_M.gguf"], projector=True)


def test_a_projector_reference_downloads_with_progress_verifies_and_hits_the_cache(
    fake: FakeHub, projector: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="models.hub")
    settings = settings_for(fake.url, tmp_path, "bundled", llamacpp_clip_model_path=REPO)
    path = locate_projector(settings)
    assert path is not None and path.name == MMPROJ and (tmp_path / "hf" / "hub") in path.parents
    assert sha256(path) == sha256(projector)
    lines = hub_lines(caplog)
    assert any(f"{REPO}/{MMPROJ}" in line and "100%" in line for line in lines), lines
    assert any("checksum verified" in line for line in lines)
    assert [r.path.rsplit("/", 1)[-1] for r in fake.body_gets()] == [sha256(projector)]  # only the projector
    assert locate_projector(settings) == path  # the next start: a cache hit
    assert len(fake.body_gets()) == 1
    offline = settings.model_copy(update={"hf_hub_offline": True})
    assert locate_projector(offline) == path  # and offline, from the cache, without asking


def test_a_cut_projector_download_is_fetched_again_and_verified(fake: FakeHub, projector: Path, tmp_path: Path) -> None:
    """The same resumable path as the model (huggingface_hub keeps whole 10 MiB chunks, so this 0.9 MB file starts
    over; the byte-range resume itself is tested with the 98 MB model in tests/test_hub.py)."""
    fake.cut_next_body_after = projector.stat().st_size // 2
    path = locate_projector(settings_for(fake.url, tmp_path, "bundled", llamacpp_clip_model_path=f"{REPO}:F16"))
    assert path is not None and sha256(path) == sha256(projector)
    assert len(fake.body_gets()) == 2
    assert not list((tmp_path / "hf" / "hub").rglob("*.partial"))


def test_a_corrupt_projector_is_deleted_and_named(fake: FakeHub, projector: Path, tmp_path: Path) -> None:
    settings = settings_for(fake.url, tmp_path, "bundled", llamacpp_clip_model_path=f"{REPO}:{MMPROJ}")
    fake.corrupt.add(sha256(projector))
    with pytest.raises(HubError, match=r"does not match the hub's checksum"):
        locate_projector(settings)
    assert Hub(settings).cached(HubReference(REPO, MMPROJ), projector=True) is None


def test_missing_projectors_are_clear_errors(fake: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubError, match=r"has no file 'mmproj-nope\.gguf'"):
        locate_projector(
            settings_for(fake.url, tmp_path, "bundled", llamacpp_clip_model_path=f"{REPO}:mmproj-nope.gguf")
        )
    with pytest.raises(HubError, match="no model repository 'nobody/nothing'"):
        locate_projector(settings_for(fake.url, tmp_path, "bundled", llamacpp_clip_model_path="nobody/nothing"))
    with pytest.raises(HubError, match=r"LLAMACPP_CLIP_MODEL_PATH=.* is not in the local cache"):
        locate_projector(
            settings_for(fake.url, tmp_path, "bundled", llamacpp_clip_model_path=REPO, hf_hub_offline=True)
        )
    with pytest.raises(HubError, match="neither a file nor a hub reference"):
        locate_projector(settings_for(fake.url, tmp_path, "bundled", llamacpp_clip_model_path="./no/such.gguf"))


@pytest.mark.slow
async def test_the_engine_fetches_model_and_projector_at_start_and_sees_images(fake: FakeHub, tmp_path: Path) -> None:
    from PIL import Image

    settings = settings_for(
        fake.url, tmp_path, f"{REPO}:{BUNDLED_FILE}", llamacpp_clip_model_path=REPO, llamacpp_n_ctx=1024
    )
    engine = LlamaCppEngine.from_settings(settings)
    assert engine.supports_vision and engine.clip_model_path is None  # nothing fetched before start
    await engine.start()
    try:
        assert engine.clip_model_path is not None and engine.clip_model_path.name == MMPROJ
        assert engine.llm.chat_handler is not None  # the projector is open
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), "red").save(buf, "PNG")
        messages = [ChatMessage("user", "What colour is it?", [ImageInput(buf.getvalue(), "image/png")])]
        pieces = [
            p async for p in engine.stream_chat(messages, GenParams(temperature=0.0, max_new_tokens=4), asyncio.Event())
        ]
        assert "".join(pieces)
    finally:
        await engine.close()
    bad = LlamaCppEngine.from_settings(settings.model_copy(update={"llamacpp_clip_model_path": "nobody/nothing"}))
    with pytest.raises(EngineError, match="no model repository 'nobody/nothing'"):
        await bad.start()
