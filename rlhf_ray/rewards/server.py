"""The reference reward server: serves any rule reward 'module:function' over the protocol of
rlhf_ray.rewards.client (`rlhf-ray serve-reward`).

It assumes every client may be broken or hostile: it reads a body only with a Content-Length no
larger than ``max_body_bytes``, cuts off a connection that stalls (``socket_timeout_s``) or trickles
(``request_timeout_s`` for the whole request), serves at most ``max_connections`` connections at once
(503 to the next), checks its function's scores before sending them, and answers every refusal with
a JSON ``{"error": ...}``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from rlhf_ray.rewards.client import FIELDS, checked_scores
from rlhf_ray.rewards.functions import RewardFn, import_reward_function

PATHS = ("/", "/score")  # where the server takes a POST
MAX_BODY_BYTES = 64 * 2**20  # a body this big is a bug upstream, not a batch worth reading into memory
SOCKET_TIMEOUT_S = 10.0  # a connection silent this long (mid-request or not reading the answer) is closed
REQUEST_TIMEOUT_S = 60.0  # the whole request (line, headers, body) must have arrived by then
MAX_CONNECTIONS = 64  # connections served at once; the next one is answered 503 (which clients retry)


class _Refusal(Exception):
    """A request the server will not score: the HTTP status and the message for {"error": ...}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _read_request(handler, max_body_bytes: int = MAX_BODY_BYTES) -> dict:
    """The request body as {field: list of strings}, or a _Refusal saying what is wrong with it.

    The body is read only once its Content-Length is known to be within ``max_body_bytes``."""
    limit = f"send a Content-Length header and a body of at most {max_body_bytes} bytes"
    if handler.headers.get("Transfer-Encoding") is not None:
        raise _Refusal(411, f"Transfer-Encoding {handler.headers['Transfer-Encoding']!r} is not accepted: {limit}")
    lengths = handler.headers.get_all("Content-Length") or []
    if not lengths:
        raise _Refusal(411, f"the request has no Content-Length header: {limit}")
    declared = lengths[0].strip()
    if len(lengths) > 1 or not (declared.isascii() and declared.isdigit()):  # int() would take "+5", " 5", "5_0"
        raise _Refusal(400, f"Content-Length {', '.join(lengths)[:100]!r} is not one byte count: {limit}")
    length = int(declared)
    if length > max_body_bytes:
        raise _Refusal(413, f"a body of {length} bytes is over the limit of {max_body_bytes} bytes "
                            f"(max_body_bytes): send fewer samples per request")
    try:
        data = handler.rfile.read(length)
    except TimeoutError:
        data = None
    except OSError as e:  # reset: the client has gone, and the refusal will reach nobody
        raise _Refusal(400, f"the connection broke while the body was read ({type(e).__name__})") from None
    if data is None or handler.cut_off.is_set():
        raise _Refusal(408, f"the body did not arrive in time: {length} bytes announced, and a request must arrive "
                            f"within {handler.request_timeout_s:g} s with no pause over {handler.timeout:g} s")
    if len(data) < length:
        raise _Refusal(400, f"the body ended after {len(data)} of the {length} bytes its Content-Length announced")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError; RecursionError: [[[[...
        raise _Refusal(400, f"the body is not JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(body, dict):
        raise _Refusal(400, f"the body must be a JSON object with the lists {list(FIELDS)}")
    for key in FIELDS:
        if not isinstance(body.get(key), list) or not all(isinstance(x, str) for x in body[key]):
            raise _Refusal(400, f"'{key}' must be a list of strings")
    if len({len(body[k]) for k in FIELDS}) != 1:
        raise _Refusal(400, "'prompts', 'responses' and 'answers' must have the same length: "
                            + ", ".join(f"{len(body[k])} {k}" for k in FIELDS))
    return body


class RewardServer(ThreadingHTTPServer):
    """ThreadingHTTPServer serving at most ``max_connections`` connections at once: the next one gets a
    503 at once (clients retry it), so slow or idle clients cannot pile up threads without bound."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int = MAX_CONNECTIONS):
        if max_connections < 1:
            raise ValueError(f"max_connections={max_connections} must be at least 1")
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            return self._refuse_busy(request)
        try:
            super().process_request(request, client_address)  # the slot goes back when its thread ends
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request) -> None:
        """503 without reading anything, and without ever blocking the accept loop."""
        data = json.dumps({"error": f"busy: {self.max_connections} connections are being served "
                                    f"(max_connections); retry later"}).encode()
        head = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                f"Retry-After: 1\r\nConnection: close\r\n\r\n").encode()
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(head + data)
        self.shutdown_request(request)


def serve_reward_function(function_path: str | RewardFn, host: str = "127.0.0.1", port: int = 0,
                          token: str | None = None, *, max_body_bytes: int = MAX_BODY_BYTES,
                          socket_timeout_s: float = SOCKET_TIMEOUT_S, request_timeout_s: float = REQUEST_TIMEOUT_S,
                          max_connections: int = MAX_CONNECTIONS) -> RewardServer:
    """A server (not yet serving: call ``serve_forever``) scoring with a rule reward 'module:function'
    (or the function itself).

    Loopback by default: a reward service is reachable from other machines only when asked for.
    ``max_body_bytes``: larger requests get 413 unread. ``socket_timeout_s``: a connection that sends or
    reads nothing for that long is closed. ``request_timeout_s``: the request line, headers and body
    must all have arrived within that (408 or a closed connection otherwise); the function's own time is
    not counted. ``max_connections``: connections served at once, 503 for the next."""
    if callable(function_path):
        fn, name = function_path, getattr(function_path, "__qualname__", repr(function_path))
    else:
        fn, name = import_reward_function(function_path), function_path
    if max_body_bytes < 0 or socket_timeout_s <= 0 or request_timeout_s <= 0:
        raise ValueError(f"max_body_bytes={max_body_bytes} must be >= 0, socket_timeout_s={socket_timeout_s} "
                         f"and request_timeout_s={request_timeout_s} > 0")
    expected = f"Bearer {token}".encode() if token else None

    class Handler(BaseHTTPRequestHandler):
        timeout = socket_timeout_s  # StreamRequestHandler puts it on the connection: every recv and send
        default_request_version = "HTTP/1.0"  # a garbage request line gets a status line, not a bare HTTP/0.9 body

        def setup(self):
            super().setup()
            self.request_timeout_s = request_timeout_s
            self.cut_off = threading.Event()
            # One deadline for the whole request: a client trickling a byte at a time never trips the
            # per-recv timeout. Shutting the read side wakes the blocked recv with an end of stream.
            self._watchdog = threading.Timer(request_timeout_s, self._cut_off)
            self._watchdog.daemon = True
            self._watchdog.start()

        def _cut_off(self):
            self.cut_off.set()
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RD)

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            if self.cut_off.is_set():  # the headers stopped at the deadline, not at their blank line
                self.send_error(408)
                return False
            return True

        def finish(self):
            self._watchdog.cancel()
            with contextlib.suppress(OSError):  # a client that went away
                super().finish()

        def do_POST(self):
            path = urlsplit(self.path).path
            if path not in PATHS:
                return self._send(404, {"error": f"no such path {path[:100]!r}: POST to one of {list(PATHS)}"})
            # compare_digest: the time taken must not tell how much of a guessed token was right
            if expected and not hmac.compare_digest(self.headers.get("Authorization", "").encode(), expected):
                return self._send(401, {"error": "missing or wrong bearer token"})
            try:
                body = _read_request(self, max_body_bytes)
            except _Refusal as e:
                return self._send(e.status, {"error": ("malformed request: " if e.status == 400 else "") + e.message})
            finally:
                self._watchdog.cancel()  # the request is in (or refused): the function's time is not counted
            n = len(body["responses"])
            try:
                raw_scores = fn(body["prompts"], body["responses"], body["answers"])
            except Exception as e:  # the function's own failure: 500, and the client retries it
                return self._send(500, {"error": f"reward function {name} failed: {type(e).__name__}: {e}"})
            try:
                scores = checked_scores(raw_scores, n, f"reward function {name}")
            except ValueError as e:  # never sent as scores: 500, as a failure of the function
                return self._send(500, {"error": str(e)})
            except TypeError:  # not iterable
                return self._send(500, {"error": f"reward function {name} returned {type(raw_scores).__name__}, "
                                                 f"not a list of scores"})
            self._send(200, {"scores": scores})

        def _not_allowed(self):
            self._send(405, {"error": f"method {self.command} not allowed: POST a JSON body to one of {list(PATHS)}"},
                       {"Allow": "POST"})

        do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed

        def send_error(self, code, message=None, explain=None):
            """The standard library's own refusals (bad request line, header too long, unknown method) in JSON."""
            if self.cut_off.is_set():
                code, message, explain = 408, f"the request did not arrive within {request_timeout_s:g} s", None
            text = message or self.responses.get(code, ("error",))[0]
            self._send(int(code), {"error": f"{text}: {explain}" if explain else text})

        def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
            if code >= 400:  # one request a connection; an unread body is not worth reading
                self.close_connection = True
            data = json.dumps(payload, allow_nan=False).encode()
            with contextlib.suppress(OSError):  # the client has gone (or stopped reading): nothing to tell it
                self.send_response(code)
                for key, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                   **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

    return RewardServer((host, port), Handler, max_connections)
