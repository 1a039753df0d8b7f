"""`MODEL_HUB=modelscope`: LLAMACPP_MODEL / LLAMACPP_CLIP_MODEL_PATH references fetched from ModelScope (魔搭, what
users in mainland China reach), with the same references, file picking, progress, resume and sha256 check as the
Hugging Face Hub (models/hub_files.py).

Why two HTTP calls rather than the `modelscope` SDK: the SDK is a large install (and 1.38+ delegates to yet another
package) for what is, for one file, two requests.  They are the ones the SDK 1.x makes (modelscope/modelscope
v1.30.0: `hub/api.py` `HubApi.get_model_files`, `hub/file_download.py` `get_file_download_url`,
`http_get_model_file`, `download_file`), sent with httpx (installed with openai and huggingface_hub):

* `GET {endpoint}/api/v1/models/{owner}/{name}/repo/files?Revision={rev}&Recursive=True` → JSON
  `{"Code": 200, "Data": {"Files": [{"Name", "Path", "Type": "blob" | "tree", "Size", "Sha256", …}]}, …}`; the SDK
  reads `Data.Files`, skips `tree` entries, and treats HTTP 404 as "the model does not exist" (`handle_http_response`)
  and a `Code` other than 200 as an error carrying `Message` (`raise_on_error`).
* `GET {endpoint}/api/v1/models/{owner}/{name}/repo?Revision={rev}&FilePath={path}` → the file (redirects followed).
  A partial file continues with `Range: bytes={have}-{size - 1}`, as the SDK resumes; the result must match the
  listing's `Sha256` (`file_integrity_validation`), else it is deleted.

The environment is the SDK's: `MODELSCOPE_DOMAIN` (default `www.modelscope.cn`, reached over https; a value with a
scheme, such as a local mirror's `http://host:port`, is used as it is) and `MODELSCOPE_CACHE` (default
`~/.cache/modelscope/hub`).  Files land where the SDK keeps them — `{cache}/models/{owner}/{name}/{path}`, dots in
the name written `___` — and partial downloads in `{cache}/models/._____temp/{owner}/{name}/`.  Not done: the SDK's
own cache index (`.mdl`/`.msc`), so the SDK itself would fetch such a file again; private models (no token); the
SDK's choice of a release tag by date (the revision is `master`, its `MASTER_MODEL_BRANCH`, or what the reference
does not override).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .hub_files import (
    PROBE_TIMEOUT,
    BaseHub,
    HubError,
    HubReference,
    HubUnavailable,
    RemoteFile,
    Transfer,
    _describe,
    _size,
    pick_cached,
    reachable,
    verify,
)
from .settings import Settings

log = logging.getLogger("models.hub")

DEFAULT_DOMAIN = "www.modelscope.cn"
REVISION = "master"  # the SDK's MASTER_MODEL_BRANCH
TEMPORARY_FOLDER = "._____temp"  # the SDK's TEMPORARY_FOLDER_NAME
CHUNK = 1 << 20
ATTEMPTS = 3  # transfers per file and start; the partial file is kept between them and across starts
TIMEOUT = 60.0  # seconds without a byte before a transfer counts as cut (the SDK's API_FILE_DOWNLOAD_TIMEOUT)
# InternLM2.5-1.8B-Chat's GGUF, named as Shanghai AI Lab names InternLM on ModelScope (the 7B one is
# Shanghai_AI_Laboratory/internlm2_5-7b-chat-gguf; this one's existence was not checked from here: no network);
# the default reference when MODEL_HUB=modelscope.  If it is missing, the default falls back to the bundled model.
DEFAULT_REPO = "Shanghai_AI_Laboratory/internlm2_5-1_8b-chat-gguf"


def endpoint_of(domain: str) -> str:
    domain = domain.strip() or DEFAULT_DOMAIN
    return (domain if "://" in domain else f"https://{domain}").rstrip("/")


class ModelScopeHub(BaseHub):
    """ModelScope's HTTP API and the SDK's cache layout, as the settings give them."""

    name = "ModelScope"

    def __init__(self, settings: Settings, *, probe_timeout: float = PROBE_TIMEOUT) -> None:
        self.endpoint = endpoint_of(settings.modelscope_domain)
        root = (
            Path(settings.modelscope_cache).expanduser()
            if settings.modelscope_cache.strip()
            else Path.home() / ".cache" / "modelscope" / "hub"
        )
        self.cache_root = root / "models"
        self.offline = settings.hf_hub_offline
        self.probe_timeout = probe_timeout

    def model_dir(self, ref: HubReference) -> Path:
        owner, name = ref.repo_id.split("/", 1)
        return self.cache_root / owner / name.replace(".", "___")

    def _partial(self, ref: HubReference, path: str) -> Path:
        owner, name = ref.repo_id.split("/", 1)
        return self.cache_root / TEMPORARY_FOLDER / owner / name / path

    def _revision(self, ref: HubReference) -> str:
        return REVISION if ref.revision == "main" else ref.revision  # HubReference's default means "the default"

    # ------------------------------------------------------------------ the hub's state
    def offline_reason(self, ref: HubReference) -> str | None:
        if self.offline:
            return "HF_HUB_OFFLINE is set"
        if not reachable(f"{self.endpoint}/api/v1/models/{ref.repo_id}", self.probe_timeout):
            return f"ModelScope ({self.endpoint}) is unreachable"
        return None

    def cached(self, ref: HubReference, *, projector: bool = False) -> Path | None:
        return pick_cached(self.model_dir(ref), ref, projector=projector)

    # ------------------------------------------------------------------ the two calls
    def list_files(self, ref: HubReference) -> list[RemoteFile]:
        """`GET /api/v1/models/{model}/repo/files?Revision=…&Recursive=True` → the files with their sha256."""
        import httpx

        url = f"{self.endpoint}/api/v1/models/{ref.repo_id}/repo/files"
        try:
            response = httpx.get(
                url, params={"Revision": self._revision(ref), "Recursive": "True"}, timeout=30, follow_redirects=True
            )
        except httpx.HTTPError as exc:
            raise HubUnavailable(
                f"could not list {ref.repo_id} on ModelScope ({self.endpoint}): {_describe(exc)}"
            ) from None
        if response.status_code == 404:
            raise HubError(
                f"ModelScope ({self.endpoint}) has no model {ref.repo_id!r} (revision "
                f"{self._revision(ref)}); ModelScope names InternLM's as Shanghai_AI_Laboratory/…"
            )
        if response.status_code >= 500:
            raise HubUnavailable(f"ModelScope ({self.endpoint}) answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400 or not isinstance(body, dict) or body.get("Code") != 200:
            message = body.get("Message") if isinstance(body, dict) else ""
            raise HubError(
                f"ModelScope refused to list {ref.repo_id} (HTTP {response.status_code}"
                f"{': ' + str(message)[:200] if message else ''})"
            )
        files = ((body.get("Data") or {}).get("Files")) or []
        return [
            RemoteFile(str(f["Path"]), int(f.get("Size") or 0), f.get("Sha256") or None, "")
            for f in files
            if isinstance(f, dict) and f.get("Type") != "tree" and f.get("Path")
        ]

    def _download(self, ref: HubReference, remote: RemoteFile) -> Path:
        """`GET /api/v1/models/{model}/repo?Revision=…&FilePath=…` into the cache, continuing a partial file."""
        target = self.model_dir(ref) / remote.path
        if target.is_file():
            if target.stat().st_size == remote.size:
                return target
            raise HubError(
                f"the cached {target} has {target.stat().st_size} bytes, ModelScope lists {remote.size}: "
                "delete it to fetch it again"
            )
        partial = self._partial(ref, remote.path)
        partial.parent.mkdir(parents=True, exist_ok=True)
        label = f"{ref.repo_id}/{remote.path}"
        transfer = Transfer(label, remote.size)
        import httpx

        for attempt in range(1, ATTEMPTS + 1):  # a cut transfer continues where it stopped (the SDK retries too)
            try:
                self._get(ref, remote, partial, transfer)
                break
            except HubError:
                raise
            except httpx.TransportError as exc:
                if attempt == ATTEMPTS:
                    raise HubError(
                        f"could not download {label} from ModelScope: {_describe(exc)} (start again to resume)"
                    ) from None
                log.warning("the download of %s broke off (%s): resuming", label, _describe(exc))
            except Exception as exc:
                raise HubError(
                    f"could not download {label} from ModelScope: {_describe(exc)} (start again to resume)"
                ) from None
        if remote.sha256:
            verify(partial, remote)
            checked = "checksum verified"
        elif partial.stat().st_size != remote.size:
            partial.unlink(missing_ok=True)
            raise HubError(f"{label}: ModelScope sent a file of another size than it lists; it was deleted")
        else:
            checked = "size checked (ModelScope lists no sha256 for it)"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(target)
        log.info("fetched %s (%s), %s, into %s", label, _size(remote.size), checked, target.parent)
        return target

    def _get(self, ref: HubReference, remote: RemoteFile, partial: Path, transfer: Transfer) -> None:
        import httpx

        have = partial.stat().st_size if partial.exists() else 0
        if have > remote.size:
            partial.unlink()
            have = 0
        bar: Any = transfer.progress_class()(
            total=remote.size, initial=have, unit="B", unit_scale=True, desc=remote.path.rsplit("/", 1)[-1]
        )
        try:
            if have == remote.size:
                return
            headers = {"Range": f"bytes={have}-{remote.size - 1}"} if have else {}
            url = f"{self.endpoint}/api/v1/models/{ref.repo_id}/repo"
            params = {"Revision": self._revision(ref), "FilePath": remote.path}
            with httpx.stream(
                "GET", url, params=params, headers=headers, timeout=TIMEOUT, follow_redirects=True
            ) as response:
                if response.status_code == 404:
                    raise HubError(f"ModelScope has no file {remote.path!r} in {ref.repo_id}")
                response.raise_for_status()
                mode = "ab" if have and response.status_code == 206 else "wb"  # 200 = the server sent it whole
                with partial.open(mode) as f:
                    for chunk in response.iter_bytes(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
        finally:
            bar.close()
