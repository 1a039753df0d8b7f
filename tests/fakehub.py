"""A local stand-in for the Hugging Face Hub's HTTP API, as `huggingface_hub` (2.x) calls it.

Built from the real thing's behaviour, as the client reads it (huggingface_hub 2.4.0, `file_download.py`,
`hf_api.py`, `utils/_http.py`) and as the Hub answers (the headers below are the ones huggingface.co sends):

* `GET /api/models/{repo}/tree/{revision}?recursive=True&expand=False` → a JSON list of entries
  `{"type": "file", "oid": <git blob sha1>, "size": n, "path": ..., "lfs": {"oid": <sha256>, "size": n,
  "pointerSize": m}}` (`lfs` only for LFS files; for them `oid` is the id of the LFS pointer blob).
* `HEAD|GET /{repo}/resolve/{revision}/{file}` → for an LFS file a 302 to a CDN on another origin, carrying
  `X-Repo-Commit`, `X-Linked-Etag: "<sha256>"`, `X-Linked-Size` and the pointer's `ETag`; for a git file a
  200 with `ETag: "<git blob id>"` and the body.  The client does not follow a redirect off the Hub's origin
  on HEAD: the metadata is read from the 302 itself, then it GETs the `Location`.
* The CDN answers `GET` with `Accept-Ranges: bytes` and honours `Range: bytes=N-` with a 206 and
  `Content-Range` (how the client resumes a cut transfer).
* Errors as the Hub sends them: an unknown repository → 401 with `X-Error-Code: RepoNotFound` (the Hub does
  not tell a missing repo from a private one); a missing file → 404 with `X-Error-Code: EntryNotFound` and
  `X-Repo-Commit`.  Both carry `X-Error-Message`.

Faults a test can switch on: cut the next body after N bytes (the connection drops mid-transfer, once), serve
bytes that differ from the advertised checksum, answer the API with an error status (the Hub down).  Every
request is recorded for the tests to count.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "6a1b2c3d4e5f60718293a4b5c6d7e8f901234567"  # the one revision of every repository here


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores instead of the content (spec v1)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class HostedFile:
    path: str
    source: Path | None = None  # served from this file (large), or
    data: bytes = b""  # from these bytes
    lfs: bool = True
    sha256: str = ""
    size: int = 0

    def __post_init__(self) -> None:
        if self.source is not None:
            digest = hashlib.sha256()
            with self.source.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            self.sha256, self.size = digest.hexdigest(), self.source.stat().st_size
        else:
            self.sha256, self.size = hashlib.sha256(self.data).hexdigest(), len(self.data)

    @property
    def git_oid(self) -> str:
        if self.lfs:
            return git_blob_id(lfs_pointer(self.sha256, self.size))
        return git_blob_id(self.data)

    def read(self, start: int, end: int) -> bytes:
        if self.source is None:
            return self.data[start:end]
        with self.source.open("rb") as f:
            f.seek(start)
            return f.read(end - start)


@dataclass
class Request:
    origin: str  # "hub" or "cdn"
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeHub:
    """Two loopback servers: the Hub (API + resolve) and its CDN (another origin, as on huggingface.co)."""

    repos: dict[str, dict[str, HostedFile]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    cut_next_body_after: int | None = None  # drop the connection after this many body bytes, once
    corrupt: set[str] = field(default_factory=set)  # sha256s whose served bytes differ from the advertised
    api_status: int | None = None  # answer every /api/ request with this status (e.g. 503: the Hub is down)
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ content
    def add(
        self, repo_id: str, path: str, *, source: Path | None = None, data: bytes = b"", lfs: bool = True
    ) -> HostedFile:
        hosted = HostedFile(path, source=source, data=data, lfs=lfs)
        self.repos.setdefault(repo_id, {})[path] = hosted
        return hosted

    def body_gets(self) -> list[Request]:
        """The requests that transferred file content (CDN GETs and git-file GETs)."""
        return [r for r in self.requests if r.method == "GET" and (r.origin == "cdn" or "/resolve/" in r.path)]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeHub:
        for origin in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, origin))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, name=f"fakehub-{origin}", daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def _by_sha(self, sha256: str) -> HostedFile | None:
        for files in self.repos.values():
            for hosted in files.values():
                if hosted.sha256 == sha256:
                    return hosted
        return None

    def _take_cut(self) -> int | None:
        with self._lock:
            cut, self.cut_next_body_after = self.cut_next_body_after, None
            return cut


_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)/?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CDN = re.compile(r"^/repos/(?P<sha>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(?P<start>\d+)-(?P<end>\d*)$")


def _handler(hub: FakeHub, origin: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        # -------------------------------------------------------------- routing
        def _serve(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(Request(origin, self.command, path, {k.lower(): v for k, v in self.headers.items()}))
            if origin == "cdn":
                match = _CDN.match(path)
                hosted = hub._by_sha(match["sha"]) if match else None
                if hosted is None:
                    return self._error(404, "", "Not found")
                return self._body(hosted, head)
            if hub.api_status is not None and path.startswith("/api/"):
                return self._error(hub.api_status, "", "Service Unavailable")
            if match := _TREE.match(path):
                return self._tree(match["repo"], match["rev"])
            if match := _RESOLVE.match(path):
                return self._resolve(match["repo"], match["rev"], match["file"], head)
            if path.startswith("/api/models/"):
                repo = path.removeprefix("/api/models/").strip("/")
                if repo in hub.repos:
                    return self._json({"id": repo, "sha": COMMIT})
                return self._error(401, "RepoNotFound", "Repository not found")
            return self._error(404, "", "Not found")

        def _tree(self, repo: str, revision: str) -> None:
            if repo not in hub.repos:
                return self._error(401, "RepoNotFound", "Repository not found")
            if revision not in ("main", COMMIT):
                return self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
            entries = []
            for hosted in hub.repos[repo].values():
                entry: dict[str, object] = {
                    "type": "file",
                    "oid": hosted.git_oid,
                    "size": hosted.size,
                    "path": hosted.path,
                }
                if hosted.lfs:
                    pointer = lfs_pointer(hosted.sha256, hosted.size)
                    entry["lfs"] = {"oid": hosted.sha256, "size": hosted.size, "pointerSize": len(pointer)}
                entries.append(entry)
            self._json(entries)

        def _resolve(self, repo: str, revision: str, filename: str, head: bool) -> None:
            if repo not in hub.repos:
                return self._error(401, "RepoNotFound", "Repository not found")
            hosted = hub.repos[repo].get(filename)
            if hosted is None:
                return self._error(404, "EntryNotFound", "Entry not found", commit=True)
            if not hosted.lfs:
                return self._body(hosted, head, hub_headers=True)
            pointer = lfs_pointer(hosted.sha256, hosted.size)
            body = b"Found. Redirecting to the CDN"
            self.send_response(302)
            self.send_header("Location", f"{hub.cdn_url}/repos/{hosted.sha256}")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{hosted.sha256}"')
            self.send_header("X-Linked-Size", str(hosted.size))
            self.send_header("ETag", f'"{git_blob_id(pointer)}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        # -------------------------------------------------------------- answers
        def _body(self, hosted: HostedFile, head: bool, hub_headers: bool = False) -> None:
            start, end = 0, hosted.size
            match = _RANGE.match(self.headers.get("Range", ""))
            if match:
                start = int(match["start"])
                end = int(match["end"]) + 1 if match["end"] else hosted.size
            self.send_response(206 if match else 200)
            if match:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{hosted.size}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start))
            self.send_header("ETag", f'"{hosted.sha256 if hosted.lfs else hosted.git_oid}"')
            if hub_headers:
                self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()
            if head:
                return
            cut = hub._take_cut()
            position = start
            while position < end:
                chunk = hosted.read(position, min(end, position + (1 << 20)))
                if hosted.sha256 in hub.corrupt:
                    chunk = bytes(b ^ 0xFF for b in chunk[:1]) + chunk[1:]  # same length, other bytes
                if cut is not None and position + len(chunk) - start >= cut:
                    self.wfile.write(chunk[: cut - (position - start)])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the connection drops mid-body
                    return
                self.wfile.write(chunk)
                position += len(chunk)

        def _json(self, value: object) -> None:
            body = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, commit: bool = False) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler
