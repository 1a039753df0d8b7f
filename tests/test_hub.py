"""LLAMACPP_MODEL by name: the real `huggingface_hub` client, pointed with HF_ENDPOINT at a local stand-in of the
Hugging Face Hub's HTTP API (tests/fakehub.py, built from huggingface_hub 2.4.0's calls and the Hub's recorded
headers), serving the bundled SmolLM2 GGUF under test repository ids.  Then the real llama.cpp engine loads what
was fetched.  No test here (or anywhere in the suite) reaches a real hub."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants

from models import hub as hub_module
from models.engines.base import ChatMessage, EngineError, GenParams
from models.engines.llamacpp import BUNDLED_FILE, LlamaCppEngine, bundled_model_path
from models.hub import (
    DEFAULT_FILE,
    DEFAULT_REPO,
    PROBE_TIMEOUT,
    Hub,
    HubError,
    HubReference,
    RemoteFile,
    locate_gguf,
    parse_reference,
    pick_files,
    reachable,
)
from models.settings import Settings
from tests.fakehub import FakeHub

REPO = "testorg/smollm2-135m-instruct-gguf"
SLOW = pytest.mark.slow  # downloads the 98 MB GGUF from the stand-in, or loads it in llama.cpp (tests/markers.py)
BUNDLED = bundled_model_path()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


BUNDLED_SHA = sha256(BUNDLED)


@pytest.fixture
def fake() -> Iterator[FakeHub]:
    hub = FakeHub()
    hub.add(REPO, BUNDLED_FILE, source=BUNDLED)
    hub.add(REPO, "README.md", data=b"# SmolLM2-135M-Instruct GGUF (test copy)\n", lfs=False)
    hub.add(REPO, ".gitattributes", data=b"*.gguf filter=lfs diff=lfs merge=lfs -text\n", lfs=False)
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture(autouse=True)
def client_online(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest sets HF_HUB_OFFLINE=1 for the whole suite; here the client may talk to the stand-in."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="models.hub")
    return caplog


def settings_for(endpoint: str, tmp_path: Path, model: str, **extra: object) -> Settings:
    values: dict[str, object] = {
        "engine": "llamacpp",
        "llamacpp_model": model,
        "hf_endpoint": endpoint,
        "hf_home": str(tmp_path / "hf"),
        "hf_hub_offline": False,
        **extra,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there once closed


def hub_lines(log: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in log.records if r.name == "models.hub" and r.levelno >= level]


# ---------------------------------------------------------------------- references (llama.cpp's -hf rules)
def test_references_parse_like_llama_cpp_hf(tmp_path: Path) -> None:
    assert parse_reference("bundled") is None and parse_reference(" Bundled ") is None
    assert parse_reference(str(BUNDLED)) == BUNDLED
    assert parse_reference("internlm/internlm2_5-1_8b-chat-gguf") == HubReference(DEFAULT_REPO)
    ref = parse_reference("internlm/internlm2_5-1_8b-chat-gguf:Q4_K_M")
    assert ref == HubReference(DEFAULT_REPO, "Q4_K_M") and isinstance(ref, HubReference) and not ref.filename
    ref = parse_reference(f"{DEFAULT_REPO}:{DEFAULT_FILE}")
    assert isinstance(ref, HubReference) and ref.filename == DEFAULT_FILE
    # Paths stay paths, even ones that do not exist yet (the engine then names the missing file).
    assert parse_reference("models/internlm2_5-7b-chat-q4_k_m.gguf") == Path("models/internlm2_5-7b-chat-q4_k_m.gguf")
    assert parse_reference("./a/b") == Path("./a/b") and parse_reference("/x/y/z.gguf") == Path("/x/y/z.gguf")


def test_files_are_picked_as_llama_cpp_picks_them() -> None:
    names = [
        "README.md",
        "mmproj-model-f16.gguf",
        "model-Q8_0.gguf",
        "model-q4_k_m.gguf",
        "model-Q4_K_S.gguf",
        "model.imatrix.gguf",
        "big-Q6_K-00002-of-00002.gguf",
        "big-Q6_K-00001-of-00002.gguf",
    ]
    assert pick_files(HubReference("o/r"), names) == ["model-q4_k_m.gguf"]  # Q4_K_M first when none is named
    assert pick_files(HubReference("o/r", "Q8_0"), names) == ["model-Q8_0.gguf"]
    assert pick_files(HubReference("o/r", "Q4_K_M"), names) == ["model-q4_k_m.gguf"]  # case-insensitive
    assert pick_files(HubReference("o/r", "q6_k"), names) == [
        "big-Q6_K-00001-of-00002.gguf",
        "big-Q6_K-00002-of-00002.gguf",
    ]  # all parts, first
    assert pick_files(HubReference("o/r", "MODEL-Q8_0.GGUF"), names) == ["model-Q8_0.gguf"]
    assert pick_files(HubReference("o/r"), ["mmproj-f16.gguf", "x-Q5_K_M.gguf"]) == ["x-Q5_K_M.gguf"]
    with pytest.raises(HubError, match=r"no Q2_K GGUF; its GGUF files: .*model-Q8_0\.gguf"):
        pick_files(HubReference("o/r", "Q2_K"), names)
    with pytest.raises(HubError, match=r"lacks big-Q6_K-00002-of-00002\.gguf"):
        pick_files(HubReference("o/r", "Q6_K"), ["big-Q6_K-00001-of-00002.gguf"])
    with pytest.raises(HubError, match=r"has no file 'nope\.gguf'"):
        pick_files(HubReference("o/r", "nope.gguf"), names)


# ---------------------------------------------------------------------- fetching through the real client
@SLOW
def test_first_start_downloads_with_progress_and_verifies(
    fake: FakeHub, tmp_path: Path, hub_log: pytest.LogCaptureFixture
) -> None:
    path = locate_gguf(settings_for(fake.url, tmp_path, f"{REPO}:Q4_1"))
    assert path is not None and path.name == BUNDLED_FILE
    assert (tmp_path / "hf" / "hub") in path.parents  # the hub's own cache layout, under HF_HOME
    assert sha256(path) == BUNDLED_SHA
    lines = hub_lines(hub_log)
    percents = {int(line.split(": ")[1].split("%")[0]) for line in lines if "%" in line}
    assert {p // 10 for p in percents} == set(range(1, 11)), lines  # one line per 10% step, up to 100%
    assert max(percents) == 100
    assert any("checksum verified" in line for line in lines)
    assert len(fake.body_gets()) == 1
    # The layout is huggingface_hub's own: the library itself finds the file offline.
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = tmp_path / "hf" / "hub"
    assert Path(try_to_load_from_cache(REPO, BUNDLED_FILE, cache_dir=cache)) == path  # type: ignore[arg-type]
    assert Path(hf_hub_download(REPO, BUNDLED_FILE, cache_dir=cache, local_files_only=True)) == path
    assert path.is_symlink() and path.resolve().parent.name == "blobs"


@SLOW
def test_second_start_is_a_cache_hit(fake: FakeHub, tmp_path: Path, hub_log: pytest.LogCaptureFixture) -> None:
    settings = settings_for(fake.url, tmp_path, f"{REPO}:{BUNDLED_FILE}")
    first = locate_gguf(settings)
    hub_log.clear()
    second = locate_gguf(settings)
    assert first == second and second is not None
    assert len(fake.body_gets()) == 1  # no second download
    assert not [line for line in hub_lines(hub_log) if "%" in line]


@SLOW
def test_a_cut_connection_resumes_with_a_range_request(fake: FakeHub, tmp_path: Path) -> None:
    cut = 25_000_000  # past two of huggingface_hub's 10 MiB read chunks: those are kept, the torn third is not
    fake.cut_next_body_after = cut
    path = locate_gguf(settings_for(fake.url, tmp_path, f"{REPO}:Q4_1"))
    assert path is not None and sha256(path) == BUNDLED_SHA
    gets = fake.body_gets()
    assert len(gets) == 2
    assert "range" not in gets[0].headers
    start = int(gets[1].headers["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= cut  # it asked only for the rest


@SLOW
def test_a_restart_continues_the_partial_download(
    fake: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(fake.url, tmp_path, f"{REPO}:Q4_1")
    advance = hub_module.Transfer.advance

    def killed_at_30_mb(self: hub_module.Transfer, done: int, n: int) -> None:
        if done >= 30_000_000:
            raise KeyboardInterrupt  # Ctrl-C (or the machine going down) in the middle of the download
        advance(self, done, n)

    monkeypatch.setattr(hub_module.Transfer, "advance", killed_at_30_mb)
    with pytest.raises(KeyboardInterrupt):
        locate_gguf(settings)
    partial = [p for p in (tmp_path / "hf" / "hub").rglob("*.partial")]
    assert len(partial) == 1
    kept = partial[0].stat().st_size
    assert 0 < kept < BUNDLED.stat().st_size
    assert Hub(settings).cached(HubReference(REPO, "Q4_1")) is None  # a partial file is never the model
    monkeypatch.setattr(hub_module.Transfer, "advance", advance)
    path = locate_gguf(settings)  # the next start
    assert path is not None and sha256(path) == BUNDLED_SHA
    gets = fake.body_gets()
    assert len(gets) == 2 and gets[1].headers["range"] == f"bytes={kept}-"
    assert not list((tmp_path / "hf" / "hub").rglob("*.partial"))


@SLOW
def test_a_checksum_mismatch_fails_and_leaves_nothing_to_reuse(fake: FakeHub, tmp_path: Path) -> None:
    settings = settings_for(fake.url, tmp_path, f"{REPO}:Q4_1")
    fake.corrupt.add(BUNDLED_SHA)  # same size, other bytes: huggingface_hub's own size check passes
    with pytest.raises(HubError, match=r"does not match the hub's checksum \(sha256 .*deleted"):
        locate_gguf(settings)
    cache = tmp_path / "hf" / "hub"
    assert not [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock" and p.stat().st_size > 1000]
    assert Hub(settings).cached(HubReference(REPO, "Q4_1")) is None
    fake.corrupt.clear()
    path = locate_gguf(settings)  # the next start fetches it anew
    assert path is not None and sha256(path) == BUNDLED_SHA
    assert len(fake.body_gets()) == 2


def test_unknown_repository_and_file_are_named(fake: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubError, match=r"no model repository 'nobody/nothing-gguf' .*HF_TOKEN"):
        locate_gguf(settings_for(fake.url, tmp_path, "nobody/nothing-gguf:Q4_K_M"))
    with pytest.raises(HubError, match=rf"{REPO} has no file 'nope\.gguf'; its GGUF files: {BUNDLED_FILE}"):
        locate_gguf(settings_for(fake.url, tmp_path, f"{REPO}:nope.gguf"))
    with pytest.raises(HubError, match=rf"{REPO} has no Q2_K GGUF"):
        locate_gguf(settings_for(fake.url, tmp_path, f"{REPO}:Q2_K"))
    # A file the listing shows but `resolve` answers 404 for (EntryNotFound, as the Hub sends it).
    hub = Hub(settings_for(fake.url, tmp_path, ""))
    with pytest.raises(HubError, match=rf"{REPO} has no file 'ghost\.gguf'"):
        hub._download(HubReference(REPO), RemoteFile("ghost.gguf", 10, "0" * 64, "0" * 40))
    assert not [r for r in fake.requests if r.origin == "cdn"]


@SLOW
def test_the_token_reaches_the_hub_but_never_the_log_or_the_cdn(
    fake: FakeHub, tmp_path: Path, hub_log: pytest.LogCaptureFixture
) -> None:
    secret = "hf_TestTokenThatMustNotLeak123"
    locate_gguf(settings_for(fake.url, tmp_path, f"{REPO}:Q4_1", hf_token=secret))
    client = [r for r in fake.requests if r.origin == "hub" and ("/tree/" in r.path or "/resolve/" in r.path)]
    assert client and all(r.headers.get("authorization") == f"Bearer {secret}" for r in client)
    probes = [r for r in fake.requests if r.origin == "hub" and r not in client]
    assert probes and all("authorization" not in r.headers for r in probes)  # the reachability probe sends none
    assert all("authorization" not in r.headers for r in fake.requests if r.origin == "cdn")
    assert secret not in hub_log.text


# ---------------------------------------------------------------------- the default, online and offline
@SLOW
def test_the_default_is_internlm_when_the_hub_answers(
    fake: FakeHub, tmp_path: Path, hub_log: pytest.LogCaptureFixture
) -> None:
    fake.add(DEFAULT_REPO, DEFAULT_FILE, source=BUNDLED)  # stand-in bytes under the real default's name
    path = locate_gguf(settings_for(fake.url, tmp_path, ""))
    assert path is not None and path.name == DEFAULT_FILE and sha256(path) == BUNDLED_SHA
    assert any(f"{DEFAULT_REPO}/{DEFAULT_FILE}" in line for line in hub_lines(hub_log))
    assert [r.path for r in fake.body_gets()] == [f"/repos/{BUNDLED_SHA}"]


@SLOW
async def test_offline_the_default_is_the_bundled_model_with_one_line(
    tmp_path: Path, hub_log: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(closed_port_url(), tmp_path, "", llamacpp_n_ctx=256)
    assert locate_gguf(settings) is None
    warnings = hub_lines(hub_log, logging.WARNING)
    assert len(warnings) == 1 and "unreachable" in warnings[0] and "bundled SmolLM2-135M" in warnings[0]
    assert "about 1.1 GB" in warnings[0] and "LLAMACPP_MODEL=bundled" in warnings[0]
    engine = LlamaCppEngine.from_settings(settings)
    await engine.start()
    try:
        assert engine.describe() == f"llamacpp:{BUNDLED_FILE}" and engine.model_path == BUNDLED
    finally:
        await engine.close()


def test_the_reachability_probe_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert PROBE_TIMEOUT <= 2.0  # a machine without a network starts at once
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        assert reachable(f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout=0.2) is False
    finally:
        silent.close()
    assert reachable(closed_port_url(), timeout=0.2) is False
    seen: list[float] = []
    monkeypatch.setattr(hub_module, "reachable", lambda url, timeout: seen.append(timeout) or False)
    assert locate_gguf(settings_for("https://hub.invalid", tmp_path, "")) is None
    assert seen == [PROBE_TIMEOUT]


@SLOW
def test_hf_hub_offline_asks_nothing(fake: FakeHub, tmp_path: Path) -> None:
    offline = settings_for(fake.url, tmp_path, "", hf_hub_offline=True)
    assert locate_gguf(offline) is None  # the default: bundled, without a request
    named = offline.model_copy(update={"llamacpp_model": f"{REPO}:Q4_1"})
    with pytest.raises(HubError, match=r"not in the local cache .*HF_HUB_OFFLINE is set"):
        locate_gguf(named)
    assert fake.requests == []
    fetched = locate_gguf(settings_for(fake.url, tmp_path, f"{REPO}:Q4_1"))
    count = len(fake.requests)
    assert locate_gguf(named) == fetched  # from the cache, quantisation resolved from the cached names
    assert len(fake.requests) == count
    unreachable = named.model_copy(update={"hf_hub_offline": False, "hf_endpoint": closed_port_url()})
    assert locate_gguf(unreachable) == fetched


@SLOW
def test_a_cached_model_stands_in_when_the_hub_fails(
    fake: FakeHub, tmp_path: Path, hub_log: pytest.LogCaptureFixture
) -> None:
    named = settings_for(fake.url, tmp_path, f"{REPO}:Q4_1")
    fetched = locate_gguf(named)
    # The probe still gets an answer; the tree listing fails.  520 is what a CDN in front of a dead origin says;
    # the client retries 5xx like 503 for about 20 s first (huggingface_hub's backoff), which this test skips.
    fake.api_status = 520
    assert locate_gguf(named) == fetched
    assert any("520" in line and "from the local cache" in line for line in hub_lines(hub_log, logging.WARNING))
    fresh = settings_for(fake.url, tmp_path / "other", f"{REPO}:Q4_1")  # nothing cached there
    with pytest.raises(HubError, match=rf"could not list {REPO}"):
        locate_gguf(fresh)
    assert locate_gguf(fresh.model_copy(update={"llamacpp_model": ""})) is None  # the default: bundled


def test_local_paths_bundled_and_the_older_setting(tmp_path: Path) -> None:
    assert locate_gguf(settings_for("http://unused", tmp_path, "bundled")) is None
    assert locate_gguf(settings_for("http://unused", tmp_path, str(BUNDLED))) == BUNDLED
    assert locate_gguf(settings_for("http://unused", tmp_path, "", llamacpp_model_path=str(BUNDLED))) == BUNDLED
    with pytest.raises(HubError, match="neither a GGUF file nor a hub reference"):
        locate_gguf(settings_for("http://unused", tmp_path, str(tmp_path / "missing.gguf")))


# ---------------------------------------------------------------------- the engine on what was fetched
@SLOW
async def test_the_engine_locates_its_model_once_at_start_never_during_a_job() -> None:
    calls: list[str] = []

    def locate() -> Path:
        calls.append("locate")
        return BUNDLED

    engine = LlamaCppEngine(n_ctx=256, n_threads=2, locate=locate)
    await engine.start()  # Worker.run awaits this before its first claim
    try:
        assert calls == ["locate"]
        [
            p
            async for p in engine.stream_chat(
                [ChatMessage("user", "Hi")], GenParams(temperature=0.0, max_new_tokens=2), asyncio.Event()
            )
        ]
        engine.count_tokens("a few words")
        assert calls == ["locate"]
    finally:
        await engine.close()


async def test_the_engine_fails_to_start_with_the_hubs_reason(fake: FakeHub, tmp_path: Path) -> None:
    engine = LlamaCppEngine.from_settings(settings_for(fake.url, tmp_path, "nobody/nothing-gguf"))
    with pytest.raises(EngineError, match="no model repository 'nobody/nothing-gguf'"):
        await engine.start()
    assert engine.llm is None


@SLOW
async def test_the_engine_loads_the_fetched_gguf_and_generates(fake: FakeHub, tmp_path: Path) -> None:
    settings = settings_for(fake.url, tmp_path, f"{REPO}:Q4_1", llamacpp_n_ctx=512, llamacpp_threads=2)
    engine = LlamaCppEngine.from_settings(settings)
    await engine.start()  # the fetch happens here, before any job
    try:
        assert engine.model_path is not None and (tmp_path / "hf" / "hub") in engine.model_path.parents
        assert engine.describe() == f"llamacpp:{BUNDLED_FILE}"
        pieces = [
            p
            async for p in engine.stream_chat(
                [ChatMessage("user", "Say hello.")], GenParams(temperature=0.0, max_new_tokens=8), asyncio.Event()
            )
        ]
        assert "".join(pieces).strip()
    finally:
        await engine.close()
    assert len(fake.body_gets()) == 1


def test_a_xet_download_logs_once_per_step(hub_log: pytest.LogCaptureFixture) -> None:
    """Repositories on Xet storage download through hf_xet, whose reporter draws two bars from our tqdm class
    (bytes written, bytes received).  Driven here with huggingface_hub's own reporter: the log follows the first
    one only, so each 10% step is one line."""
    from types import SimpleNamespace

    from huggingface_hub.utils._xet_progress_reporting import XetDownloadProgressReporter

    total = 1_000_000
    transfer = hub_module.Transfer("o/r/model-Q4_K_M.gguf", total)
    reporter = XetDownloadProgressReporter(
        reconstruction_desc="model: reconstructing file",
        transfer_desc="model: downloading bytes",
        total=total,
        log_level=logging.INFO,
        tqdm_class=transfer.progress_class(),
    )
    for done in range(50_000, total + 1, 50_000):
        reporter.update_progress(
            SimpleNamespace(
                total_bytes_completed=done,
                total_transfer_bytes_completed=done // 2,
                total_bytes_completion_rate=None,
                total_transfer_bytes_completion_rate=None,
                total_bytes=total,
            )
        )
    reporter.close()
    lines = hub_lines(hub_log)
    assert len([line for line in lines if line.startswith("fetching o/r") and "%" not in line]) == 1
    percents = [int(line.split(": ")[1].split("%")[0]) for line in lines if "%" in line]
    assert percents == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert transfer.received == total


@SLOW
def test_the_command_line_fetches_ahead_of_the_workers(
    fake: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from models import settings as settings_module

    monkeypatch.setattr(settings_module, "get_settings", lambda: settings_for(fake.url, tmp_path, ""))
    assert hub_module.main([f"{REPO}:Q4_1"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.name == BUNDLED_FILE and sha256(printed) == BUNDLED_SHA
    assert hub_module.main(["nobody/nothing-gguf"]) == 1
    assert "no model repository 'nobody/nothing-gguf'" in capsys.readouterr().err
