"""A local HTTP server that answers the Hugging Face hub's model API for a few repos held in memory,
so that the online path (``huggingface_hub``'s own client: repo info, tree listing, downloads, the
error codes) runs for real without the network.

It speaks only what ``huggingface_hub`` asks of a public model repo: ``/api/models/ORG/NAME/revision/REV``,
``/api/models/ORG/NAME/tree/REV``, and ``HEAD``/``GET`` of ``/ORG/NAME/resolve/REV/FILE``, with the
hub's ``X-Error-Code`` header on errors (``RepoNotFound``, ``RevisionNotFound``, ``GatedRepo``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> file name -> content
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    gated: bool = False

    def add(self, commit: str, files: dict[str, bytes], ref: str | None = "main") -> None:
        self.commits[commit] = files
        if ref:
            self.refs[ref] = commit

    def commit_of(self, rev: str) -> str | None:
        return rev if rev in self.commits else self.refs.get(rev)


def files_of(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []  # "METHOD path" of every request, for the tests to read
        self.downloads: list[str] = []  # the file names sent with GET
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                server._serve(self, body=False)

            def do_GET(self):
                server._serve(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _error(self, h, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _json(self, h, obj, body: bool) -> None:
        data = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _serve(self, h, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append(f"{h.command} {path}")
        parts = path.strip("/").split("/")
        api = parts[:2] == ["api", "models"]
        if api:
            parts = parts[2:]
            if len(parts) == 2:  # the repo's info at its default branch
                parts += ["revision", "main"]
        if len(parts) < 4:
            return self._error(h, 404, "EntryNotFound", f"no route {path}")
        repo_id, verb, rev, rest = "/".join(parts[:2]), parts[2], parts[3], "/".join(parts[4:])
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", f"Repository not found: {repo_id}")
        commit = repo.commit_of(rev)
        if commit is None:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = repo.commits[commit]
        if api and verb == "revision":
            return self._json(h, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                                  "gated": "manual" if repo.gated else False, "disabled": False, "tags": [],
                                  "siblings": [{"rfilename": f} for f in files]}, body)
        if api and verb == "tree":
            entries = []
            for name, data in files.items():
                entry = {"type": "file", "oid": _git_oid(data), "size": len(data), "path": name}
                if name.endswith(LFS_SUFFIXES):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            return self._json(h, entries, body)
        if not api and verb == "resolve":
            if repo.gated:
                return self._error(h, 401, "GatedRepo", f"Access to model {repo_id} is restricted.")
            if rest not in files:
                return self._error(h, 404, "EntryNotFound", f"{rest} does not exist")
            data = files[rest]
            lfs = rest.endswith(LFS_SUFFIXES)
            h.send_response(200)
            h.send_header("X-Repo-Commit", commit)
            h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest() if lfs else _git_oid(data)}"')
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Content-Type", "application/octet-stream")
            h.end_headers()
            if body:
                self.downloads.append(rest)
                h.wfile.write(data)
            return None
        return self._error(h, 404, "EntryNotFound", f"no route {path}")
