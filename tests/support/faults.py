"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the loopback S3 endpoint, for the fault drills.

Every request is forwarded to the real endpoint unless the proxy decides (seeded, so repeatable
for one order of requests) to fail it, at most `budget` times:

    slowdown   503 SlowDown, before the request reaches the store
    internal   500 InternalError, before the request reaches the store
    reset      the connection is reset, before the request reaches the store
    lost       the request reaches the store, then the connection is reset: the response is lost

`deny` answers every request with 403 and the given S3 error code (bad credentials, no access).
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("slowdown", "internal", "reset", "lost")


def _error_xml(code: str, message: str) -> bytes:
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return ('<?xml version="1.0" encoding="UTF-8"?>' + body).encode()


class FaultProxy:
    """Start with `with FaultProxy(upstream, share=0.2, budget=40, seed=1) as proxy:`; `proxy.url` is the endpoint.

    Attributes:
        injected: faults injected so far, by kind.
        requests: requests seen.
    """

    def __init__(
        self,
        upstream: str,
        share: float = 0.0,
        budget: int = 0,
        seed: int = 0,
        kinds: tuple[str, ...] = KINDS,
        deny: str | None = None,
    ):
        self.upstream = urlsplit(upstream)
        self.share, self.budget, self.kinds, self.deny = share, budget, kinds, deny
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter = Counter()
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._pick()
                if proxy.deny is not None:
                    return self._reply(403, _error_xml(proxy.deny, "denied by the fault drill"))
                if fault == "slowdown":
                    return self._reply(503, _error_xml("SlowDown", "Please reduce your request rate."))
                if fault == "internal":
                    return self._reply(500, _error_xml("InternalError", "We encountered an internal error."))
                if fault == "reset":
                    return self._reset()
                status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                if fault == "lost":
                    return self._reset()
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _reply(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _pick(self) -> str | None:
        with self.lock:
            self.requests += 1
            if sum(self.injected.values()) >= self.budget or self.rng.random() >= self.share:
                return None
            kind = self.rng.choice(self.kinds)
            self.injected[kind] += 1
            return kind

    def _forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            fwd = {k: v for k, v in headers.items() if k.lower() != "expect"}  # the body is already here
            conn.request(method, path, body=body or None, headers=fwd)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
