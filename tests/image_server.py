"""A local HTTP server that serves images the ways a tenant's server might, for the image-by-reference tests:
plainly, behind redirects, stalling, endlessly, or failing a few times first. Every request is recorded."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class ImageServer:
    host: str
    image: bytes
    # Path -> how many 503 answers it gives before the image (`/flaky...`).
    failures_left: dict[str, int] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    # Set at teardown: a stalling handler waits on it (never a fixed sleep), so the server can stop.
    released: threading.Event = field(default_factory=threading.Event)
    redirect_to: str = ""
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def start(self) -> ImageServer:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.hits.append(self.path)
                path = self.path.split("?")[0]
                if path.startswith("/image"):
                    # Declared as text on purpose: the service reads the format from the bytes.
                    self._send(200, outer.image, content_type="text/plain")
                elif path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", outer.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path.startswith("/stall"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(outer.image)))
                    self.end_headers()
                    self.wfile.write(outer.image[:10])
                    self.wfile.flush()
                    outer.released.wait(60)
                elif path.startswith("/endless"):
                    self.send_response(200)
                    self.end_headers()
                    try:
                        for _ in range(4096):  # 256 MiB at most, should the client never stop reading
                            self.wfile.write(b"\xff" * 65536)
                    except OSError:
                        pass
                elif path.startswith("/flaky"):
                    left = outer.failures_left.get(path, 0)
                    if left > 0:
                        outer.failures_left[path] = left - 1
                        self._send(503, b"try later")
                    else:
                        self._send(200, outer.image)
                else:
                    self._send(404, b"not here")

            def _send(self, status: int, body: bytes, content_type: str = "application/octet-stream") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((self.host, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.released.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@contextmanager
def image_server(host: str, image: bytes) -> Iterator[ImageServer]:
    server = ImageServer(host, image).start()
    try:
        yield server
    finally:
        server.stop()
