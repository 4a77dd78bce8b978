"""A real HTTP server on 127.0.0.1 that answers the Hub's file-resolve endpoint from a local folder.

``huggingface_hub`` asks ``HEAD`` then ``GET`` on ``/{repo_id}/resolve/{revision}/{filename}`` and needs
``ETag``, ``X-Repo-Commit`` and ``Content-Length``; that is all ``hf_hub_download`` uses. Repos are folders
``<root>/<org>/<name>/``. ``failing`` maps a repo id to an HTTP status (e.g. 503) that every request for it
gets, as from a failing mirror.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = 'a' * 40
_RESOLVE = re.compile(r'^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$')


class HubServer:
    """Serve ``root`` as a Hub on a free loopback port; use as a context manager."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.requests: list[str] = []
        self.failing: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _file(self) -> Path | None:
                m = _RESOLVE.match(self.path.split('?')[0])
                if m is None:
                    return None
                path = server.root / m['repo'] / m['file']
                return path if path.is_file() else None

            def _headers(self, path: Path) -> bytes:
                data = path.read_bytes()
                self.send_response(200)
                self.send_header('Content-Length', str(len(data)))
                self.send_header('ETag', f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header('X-Repo-Commit', COMMIT)
                self.send_header('Content-Type', 'application/octet-stream')
                self.end_headers()
                return data

            def _missing(self) -> None:
                self.send_response(404)
                self.send_header('X-Error-Code', 'EntryNotFound')
                self.send_header('Content-Length', '0')
                self.end_headers()

            def _failing(self) -> bool:
                m = _RESOLVE.match(self.path.split('?')[0])
                status = server.failing.get(m['repo']) if m else None
                if status is None:
                    return False
                self.send_response(status)
                self.send_header('Content-Length', '0')
                self.end_headers()
                return True

            def do_HEAD(self) -> None:
                server.requests.append(f'HEAD {self.path}')
                path = self._file()
                if self._failing():
                    return
                if path is None:
                    self._missing()
                else:
                    self._headers(path)

            def do_GET(self) -> None:
                server.requests.append(f'GET {self.path}')
                path = self._file()
                if self._failing():
                    return
                if path is None:
                    self._missing()
                else:
                    self.wfile.write(self._headers(path))

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
