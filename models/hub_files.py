"""What every model hub serves and how a download is checked — shared by the Hugging Face Hub (models/hub.py) and
ModelScope (models/modelscope.py): references (`owner/repo[:TAG]`), which GGUF files a reference means (llama.cpp's
`-hf` rules), the checksum check, and the progress of a transfer (a tqdm bar on a terminal, a log line every 10%).

Why a module of its own: both hubs fetch the same way, and `hub.py` picks between them, so the common part must
not live in either (the import contract forbids the cycle).  Its log lines go to the `models.hub` logger, the one
an operator follows for every fetch, whichever hub it is from.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("models.hub")

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


class BaseHub:
    """What a hub does with a reference, whichever hub it is: the cache first when the hub cannot be asked, else
    list the repository, pick the files (`pick_files`) and download each (`_download`, verified).  A hub class
    provides `cache_root`, `offline_reason`, `cached`, `list_files` and `_download`."""

    cache_root: Path

    def offline_reason(self, ref: HubReference) -> str | None:
        raise NotImplementedError

    def cached(self, ref: HubReference, *, projector: bool = False) -> Path | None:
        raise NotImplementedError

    def list_files(self, ref: HubReference) -> list[RemoteFile]:
        raise NotImplementedError

    def _download(self, ref: HubReference, remote: RemoteFile) -> Path:
        raise NotImplementedError

    def fetch(self, ref: HubReference, *, probed: bool = False, projector: bool = False) -> Path:
        """The local path of the reference's GGUF (its mmproj GGUF with `projector`): from the cache, or downloaded
        (with progress) and verified.  `probed`: the caller has just found the hub reachable."""
        reason = None if probed else self.offline_reason(ref)
        if reason is not None:
            cached = self.cached(ref, projector=projector)
            if cached is not None:
                log.info("%s: using %s from the local cache", reason, ref)
                return cached
            setting, other = (
                ("LLAMACPP_CLIP_MODEL_PATH", "a local projector file")
                if projector
                else ("LLAMACPP_MODEL", "a local GGUF or LLAMACPP_MODEL=bundled")
            )
            raise HubError(
                f"{setting}={ref} is not in the local cache ({self.cache_root}) and {reason}; "
                f"connect once to fetch it, or choose {other}"
            )
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


def pick_cached(folder: Path, ref: HubReference, *, projector: bool = False) -> Path | None:
    """The file `ref` names among those already in a hub's cache folder, or None (a cache miss, not an error)."""
    if not folder.is_dir():
        return None
    names = [str(p.relative_to(folder)).replace("\\", "/") for p in folder.rglob("*") if p.is_file()]
    try:
        parts = pick_files(ref, names, projector=projector)
    except HubError:
        return None
    return folder / parts[0]


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
    raise HubError(
        f"{path.name}: the downloaded file does not match the hub's checksum ({kind} {got[:12]}… "
        f"instead of {want[:12]}…, {size} of {remote.size} bytes); it was deleted — start again "
        "to fetch it anew, or check the mirror (HF_ENDPOINT)"
    )


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
                log.info("fetching %s: %d%% (%s of %s)", self.label, min(percent, 100), _size(done), _size(self.total))

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
