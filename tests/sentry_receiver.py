"""A real Sentry envelope endpoint on 127.0.0.1, for tests of what sentry-sdk sends.

The SDK's own HTTP transport posts envelopes (``POST /api/<project>/envelope/``,
https://develop.sentry.dev/sdk/data-model/envelopes/) compressed with gzip or
brotli; this decodes them and keeps every item::

    with SentryReceiver() as receiver:
        sentry_sdk.init(dsn=receiver.dsn, ...)
        ...
        sentry_sdk.flush()
        (event,) = receiver.events()

Loopback only.  Waits are bounded and return as soon as what they wait for
has arrived.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Item = tuple[dict[str, Any], Any]


def decode(body: bytes, encoding: str | None) -> bytes:
    """Undo ``Content-Encoding`` (codings are listed in the order applied)."""
    codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip"):
            body = gzip.decompress(body)
        elif coding == "deflate":
            try:
                body = zlib.decompress(body)
            except zlib.error:  # raw deflate, without the zlib header
                body = zlib.decompress(body, -zlib.MAX_WBITS)
        elif coding == "br":
            import brotli  # only an SDK that found brotli installed sends it

            body = brotli.decompress(body)
        elif coding != "identity":
            raise ValueError(f"unknown content-encoding {coding!r}")
    return body


def parse_envelope(data: bytes) -> tuple[dict[str, Any], list[Item]]:
    """``(envelope header, [(item header, payload)])``; JSON payloads decoded.

    An item header's ``length`` gives the payload's size in bytes; without it
    the payload runs to the end of its line.
    """
    pos = 0

    def line() -> bytes:
        nonlocal pos
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end
        chunk, pos = data[pos:end], end + 1
        return chunk

    header = json.loads(line() or b"{}")
    items: list[Item] = []
    while pos < len(data):
        raw = line()
        if not raw.strip():
            continue
        item_header = json.loads(raw)
        length = item_header.get("length")
        if length is None:
            payload: Any = line()
        else:
            payload = data[pos:pos + length]
            pos += length
            if data[pos:pos + 1] == b"\n":
                pos += 1
        try:
            payload = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            pass  # an attachment
        items.append((item_header, payload))
    return header, items


class SentryReceiver:
    """Collects the items of every envelope posted to it."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        #: (path, content encoding, error or None) of every request
        self.requests: list[tuple[str, str | None, str | None]] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.split("?")[0].strip("/").split("/")
                encoding = self.headers.get("Content-Encoding")
                if len(parts) != 3 or parts[0] != "api" or parts[2] not in ("envelope", "store"):
                    receiver._note(self.path, encoding, "unknown path")
                    self._answer(404, b"{}")
                    return
                try:
                    data = decode(body, encoding)
                    if parts[2] == "store":  # the legacy endpoint: one event, no envelope
                        items: list[Item] = [({"type": "event"}, json.loads(data))]
                        event_id = items[0][1].get("event_id", "")
                    else:
                        header, items = parse_envelope(data)
                        event_id = header.get("event_id", "")
                except Exception as exc:
                    receiver._note(self.path, encoding, repr(exc))
                    self._answer(400, b"{}")
                    return
                receiver._note(self.path, encoding, None, items)
                self._answer(200, json.dumps({"id": event_id}).encode())

            def _answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        #: What ``sentry_sdk.init(dsn=...)`` takes: public key, host, project 1.
        self.dsn = f"http://publickey@127.0.0.1:{self.port}/1"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sentry-receiver", daemon=True
        )

    def _note(self, path: str, encoding: str | None, error: str | None,
              items: list[Item] | None = None) -> None:
        with self._cond:
            self.requests.append((path, encoding, error))
            self.items.extend(items or ())
            self._cond.notify_all()

    # -- reading --------------------------------------------------------------
    def of_type(self, item_type: str) -> list[Any]:
        with self._cond:
            return [payload for header, payload in self.items if header.get("type") == item_type]

    def events(self) -> list[dict[str, Any]]:
        """Error events (not transactions, sessions or client reports)."""
        return self.of_type("event")

    def errors(self) -> list[str]:
        """Requests the receiver could not read (a test should see none)."""
        with self._cond:
            return [f"{path}: {error}" for path, _, error in self.requests if error]

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def clear(self) -> None:
        with self._cond:
            self.items.clear()
            self.requests.clear()

    # -- lifetime -------------------------------------------------------------
    def start(self) -> SentryReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> SentryReceiver:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
