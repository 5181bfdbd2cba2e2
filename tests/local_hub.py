"""A Hugging Face hub on loopback that serves local folders as model repos, for tests of the
download path (`HF_ENDPOINT=hub.url`): the real huggingface_hub client talks to it as it
would to huggingface.co, through the endpoints it uses to list a repo and fetch its files.

A file can be held half-sent (`hold`) until the test releases it, so a test sees a download
in progress for as long as it needs, whatever the machine's speed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
FILE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<name>.+)$")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class LocalHub:
    """`repos` maps a repo id to the folder served as its files."""

    repos: dict[str, Path]
    held: dict[str, threading.Event] = field(default_factory=dict)  # file name -> released
    broken: set[str] = field(default_factory=set)  # file names whose download breaks off half-way for good
    fetched: list[str] = field(default_factory=list)  # "repo/name" of every file body sent
    _server: ThreadingHTTPServer | None = None

    def __enter__(self) -> LocalHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._file(self, body=False)

            def do_GET(self) -> None:
                if INFO.match(self.path.split("?")[0]):
                    hub._info(self)
                else:
                    hub._file(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # Polled every 50 ms rather than 500: `shutdown` waits for the next poll, at every test's end.
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release_all()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def hold(self, name: str) -> None:
        """Send only the first half of `name` (in any repo) until `release`."""
        self.held[name] = threading.Event()

    def release_all(self) -> None:
        for event in self.held.values():
            event.set()

    @staticmethod
    def sha(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def files(self, repo: str) -> dict[str, Path]:
        folder = self.repos[repo]
        return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}

    def _info(self, handler: BaseHTTPRequestHandler) -> None:
        repo = INFO.match(handler.path.split("?")[0])["repo"]
        if repo not in self.repos:
            return self._missing(handler, repo)
        siblings = [{"rfilename": name, "size": path.stat().st_size, "blobId": _digest(path)}
                    for name, path in self.files(repo).items()]
        _json(handler, 200, {"id": repo, "modelId": repo, "sha": self.sha(repo), "private": False, "tags": [],
                             "siblings": siblings})

    def _file(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        match = FILE.match(handler.path.split("?")[0])
        if not match or match["repo"] not in self.repos or match["name"] not in self.files(match["repo"]):
            return self._missing(handler, handler.path)
        path = self.files(match["repo"])[match["name"]]
        data = path.read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("X-Repo-Commit", self.sha(match["repo"]))
        handler.end_headers()
        if not body:
            return
        self.fetched.append(f"{match['repo']}/{match['name']}")
        if match["name"] in self.broken:  # the network goes away mid-file and stays away
            if f"{match['repo']}/{match['name']}" in self.fetched[:-1]:
                data = b""  # asked again: not a byte more, so the client's retries give up
            handler.wfile.write(data[:len(data) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        released = self.held.get(match["name"])
        if released is not None:
            half = len(data) // 2
            handler.wfile.write(data[:half])
            handler.wfile.flush()
            released.wait()
            data = data[half:]
        handler.wfile.write(data)

    @staticmethod
    def _missing(handler: BaseHTTPRequestHandler, what: str) -> None:
        _json(handler, 404, {"error": f"{what} not found"}, {"X-Error-Code": "RepoNotFound"})


def _json(handler: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(payload).encode()
    handler.send_response(status)
    for name, value in {"Content-Type": "application/json", **(headers or {}),
                        "Content-Length": str(len(body))}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def ready_made_repo(exported: Path, dest: Path) -> Path:
    """An export laid out as the hub's ready-made OpenVINO repos are (the IR, the tokenizer IR,
    the configs, the tokenizer files, a model card), in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for file in exported.iterdir():
        if file.is_file() and file.name != "phi3ui-export.json":
            shutil.copy(file, dest / file.name)
    (dest / "README.md").write_text("---\nlicense: mit\nbase_model: microsoft/Phi-3-mini-4k-instruct\n---\n")
    return dest
