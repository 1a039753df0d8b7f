"""A local stand-in for ModelScope's HTTP API, the two calls the `modelscope` SDK 1.x makes for one model file.

Built from the SDK's source (modelscope/modelscope v1.30.0):

* `GET /api/v1/models/{owner}/{name}/repo/files?Revision={rev}&Recursive=True` (`hub/api.py`
  `HubApi.get_model_files`) → `{"Code": 200, "Data": {"Files": [...]}, "Message": "success", "Success": true}`, each
  file `{"Name", "Path", "Type": "blob", "Size", "Sha256", "Revision", "IsLFS"}` (the fields the SDK and its tests
  read: `Path`, `Size`, `Sha256`, `Type`, `Name`); folders are `"Type": "tree"` entries.  An unknown model → HTTP
  404 (the SDK's `handle_http_response`: "The request model: … does not exist!").
* `GET /api/v1/models/{owner}/{name}/repo?Revision={rev}&FilePath={path}` (`hub/file_download.py`
  `get_file_download_url`) → the bytes; `Range: bytes=N-M` (how `http_get_model_file` resumes) → 206 with
  `Content-Range`.  An unknown file → 404.
* `HEAD /api/v1/models/{owner}/{name}` answers (the bot's reachability probe asks this).

Faults a test can switch on: cut the next body after N bytes (once), serve bytes that differ from the listed
`Sha256`, answer the API with an error status.  Every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.fakehub import HostedFile  # a file's bytes, size and sha256: the same for either hub

_FILES = re.compile(r"^/api/v1/models/(?P<repo>[^/]+/[^/]+)/repo/files$")
_FILE = re.compile(r"^/api/v1/models/(?P<repo>[^/]+/[^/]+)/repo$")
_MODEL = re.compile(r"^/api/v1/models/(?P<repo>[^/]+/[^/]+)$")
_RANGE = re.compile(r"^bytes=(?P<start>\d+)-(?P<end>\d*)$")


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeModelScope:
    repos: dict[str, dict[str, HostedFile]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    cut_next_body_after: int | None = None
    corrupt: set[str] = field(default_factory=set)  # sha256s served with other bytes (same length)
    api_status: int | None = None
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, repo_id: str, path: str, *, source: Path | None = None, data: bytes = b"") -> HostedFile:
        hosted = HostedFile(path, source=source, data=data)
        self.repos.setdefault(repo_id, {})[path] = hosted
        return hosted

    def downloads(self) -> list[Seen]:
        return [r for r in self.requests if r.method == "GET" and _FILE.match(r.path)]

    def start(self) -> FakeModelScope:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fakemodelscope", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _take_cut(self) -> int | None:
        with self._lock:
            cut, self.cut_next_body_after = self.cut_next_body_after, None
            return cut


def _handler(ms: FakeModelScope) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve()

        def do_GET(self) -> None:
            self._serve()

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            ms.requests.append(Seen(self.command, parts.path, query, {k.lower(): v for k, v in self.headers.items()}))
            if ms.api_status is not None:
                return self._json(
                    {"Code": ms.api_status, "Message": "Service Unavailable", "Success": False}, ms.api_status
                )
            if match := _FILES.match(parts.path):
                return self._files(match["repo"], query)
            if match := _FILE.match(parts.path):
                return self._file(match["repo"], query)
            if match := _MODEL.match(parts.path):
                found = match["repo"] in ms.repos
                return self._json(
                    {
                        "Code": 200 if found else 404,
                        "Data": {"Path": match["repo"]} if found else None,
                        "Success": found,
                    },
                    200 if found else 404,
                )
            return self._json({"Code": 404, "Message": "Not Found", "Success": False}, 404)

        def _files(self, repo: str, query: dict[str, str]) -> None:
            if repo not in ms.repos or query.get("Revision", "master") != "master":
                return self._json(
                    {"Code": 404, "Message": f"The request model: {repo} does not exist!", "Success": False}, 404
                )
            files: list[dict[str, object]] = []
            folders = sorted({h.path.rsplit("/", 1)[0] for h in ms.repos[repo].values() if "/" in h.path})
            files += [
                {"Name": f.rsplit("/", 1)[-1], "Path": f, "Type": "tree", "Size": 0, "Sha256": ""} for f in folders
            ]
            files += [
                {
                    "Name": h.path.rsplit("/", 1)[-1],
                    "Path": h.path,
                    "Type": "blob",
                    "Size": h.size,
                    "Sha256": h.sha256,
                    "Revision": "c0ffee",
                    "IsLFS": h.size > 1000,
                }
                for h in ms.repos[repo].values()
            ]
            self._json({"Code": 200, "Data": {"Files": files}, "Message": "success", "Success": True})

        def _file(self, repo: str, query: dict[str, str]) -> None:
            hosted = ms.repos.get(repo, {}).get(query.get("FilePath", ""))
            if hosted is None:
                return self._json({"Code": 404, "Message": "file not found", "Success": False}, 404)
            start, end = 0, hosted.size
            match = _RANGE.match(self.headers.get("Range", ""))
            if match:
                start = int(match["start"])
                end = min(int(match["end"]) + 1 if match["end"] else hosted.size, hosted.size)
            self.send_response(206 if match else 200)
            if match:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{hosted.size}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            self.end_headers()
            if self.command == "HEAD":
                return
            cut = ms._take_cut()
            position = start
            while position < end:
                chunk = hosted.read(position, min(end, position + (1 << 20)))
                if hosted.sha256 in ms.corrupt:
                    chunk = bytes(b ^ 0xFF for b in chunk[:1]) + chunk[1:]
                if cut is not None and position + len(chunk) - start >= cut:
                    self.wfile.write(chunk[: cut - (position - start)])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(chunk)
                position += len(chunk)

        def _json(self, value: object, status: int = 200) -> None:
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler
