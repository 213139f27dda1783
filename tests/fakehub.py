"""A local stand-in for the Hugging Face hub's HTTP API, enough for huggingface_hub's
snapshot_download: repo info (`/api/models/ID/revision/REV`) and file resolution
(`/ID/resolve/REV/FILE`, HEAD and GET). Tests point HF_ENDPOINT at it; nothing leaves the machine.

A repo may require a token (as a private repo does); every request's Authorization header is
recorded so that tests can check that HF_TOKEN was sent.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


@dataclass
class Repo:
    directory: Path
    token: str | None = None  # required bearer token, as for a private repo
    sha: str = ""

    def __post_init__(self):
        digest = hashlib.sha1()
        for path in self.files():
            digest.update(path.relative_to(self.directory).as_posix().encode())
            digest.update(str(path.stat().st_size).encode())
        self.sha = digest.hexdigest()

    def files(self) -> list[Path]:
        return sorted(path for path in self.directory.rglob("*") if path.is_file())


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    authorizations: list[str | None] = field(default_factory=list)

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                hub.authorizations.append(self.headers.get("Authorization"))
                path = unquote(self.path.split("?")[0])
                if path.startswith("/api/models/"):
                    repo_id, _, _revision = path[len("/api/models/"):].partition("/revision/")
                    repo = self._repo(repo_id, body)
                    if repo:
                        siblings = [{"rfilename": p.relative_to(repo.directory).as_posix()} for p in repo.files()]
                        self._send(200, json.dumps({"id": repo_id, "sha": repo.sha, "siblings": siblings}).encode(),
                                   {"Content-Type": "application/json"}, body)
                    return
                if "/resolve/" in path:
                    repo_id, _, rest = path[1:].partition("/resolve/")
                    repo = self._repo(repo_id, body)
                    if repo:
                        _revision, _, filename = rest.partition("/")
                        file = repo.directory / filename
                        if not file.is_file():
                            self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, body)
                            return
                        data = file.read_bytes()
                        etag = '"' + hashlib.sha256(data).hexdigest() + '"'
                        self._send(200, data, {"X-Repo-Commit": repo.sha, "ETag": etag}, body)
                    return
                self._send(404, b"", {}, body)

            def _repo(self, repo_id: str, body: bool) -> Repo | None:
                repo = hub.repos.get(repo_id)
                if repo is None or (repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}"):
                    # The real hub answers a private repo without the right token like a missing one.
                    self._send(401, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
                    return None
                return repo

            def _send(self, status: int, data: bytes, headers: dict, body: bool):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
