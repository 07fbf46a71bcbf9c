"""A remote reward service (reward.kind=http): the protocol, and the client the reward actor calls.

Protocol: POST a JSON object {"prompts": [...], "responses": [...], "answers": [...]} (equal-length
lists of strings) and get back {"scores": [...]}, one finite number per sample, in order. An optional
bearer token goes in the Authorization header; it is read from an environment variable so that it
never sits in a config file, a run directory or a log line.

Both ends assume the other may be broken or hostile. The client gives each request one deadline for
the whole exchange (connect, send, wait, read), reads at most ``max_response_bytes`` of an answer, and
checks every score. The reference server is rlhf_ray.rewards.server.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import socket
import threading
import time
from urllib.parse import urlsplit

from rlhf_ray.rewards.functions import check_scores

FIELDS = ("prompts", "responses", "answers")
MAX_RESPONSE_BYTES = 16 * 2**20  # scores are ~20 bytes a sample: an answer this big is not one
ERROR_SNIPPET_BYTES = 4096  # client: how much of an error answer is read, to quote in the error


class RewardServiceError(RuntimeError):
    """The reward service could not be reached, refused the request, or kept failing."""


class HttpRewardClient:
    """Scores samples by POSTing them to ``url``; retries transient failures with exponential backoff.

    ``timeout_s`` bounds one whole attempt (connect, send, the service's work, reading the answer), so a
    service that trickles its answer a byte at a time times out like one that says nothing. An answer
    over ``max_response_bytes`` is refused without being read to the end."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0, max_retries: int = 3,
                 backoff_s: float = 1.0, batch_size: int = 0, token_env: str | None = None,
                 max_response_bytes: int = MAX_RESPONSE_BYTES):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"reward service url {url!r} must be an http:// or https:// address with a host")
        self.url, self.timeout_s, self.max_retries = url, timeout_s, max_retries
        self.backoff_s, self.batch_size, self.token_env = backoff_s, batch_size, token_env
        self.max_response_bytes = max_response_bytes
        self._parts = parts
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.attempts = 0  # HTTP requests sent so far, retries included

    @classmethod
    def from_config(cls, rc) -> HttpRewardClient:
        """From a RewardConfig; the token comes from the environment variable named by reward.token_env."""
        token = None
        if rc.token_env:
            token = os.environ.get(rc.token_env)
            if not token:
                raise ValueError(f"reward.token_env={rc.token_env!r}: environment variable {rc.token_env} is not set "
                                 f"(or empty) on the reward actor's node")
        return cls(rc.url, token, rc.timeout_s, rc.max_retries, rc.backoff_s, rc.batch_size, rc.token_env)

    def score(self, prompts: list[str], responses: list[str], answers: list[str]) -> list[float]:
        n = len(responses)
        if not len(prompts) == n == len(answers):
            raise ValueError(f"{len(prompts)} prompts, {n} responses and {len(answers)} answers: lengths differ")
        step = self.batch_size or max(n, 1)
        scores: list[float] = []
        for i in range(0, n, step):
            scores += self._post({"prompts": list(prompts[i:i + step]), "responses": list(responses[i:i + step]),
                                  "answers": list(answers[i:i + step])})
        return scores

    def _post(self, body: dict) -> list[float]:
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.attempts += 1
            try:
                status, raw = self._exchange(data)
            except (OSError, http.client.HTTPException) as e:  # refused, reset, DNS, timeouts (TimeoutError ⊂ OSError)
                last = f"{type(e).__name__}: {e}"
                continue
            if 200 <= status < 300:
                return self._parse(raw, len(body["responses"]))
            last = f"HTTP {status}: {_snippet(raw)}"
            if status in (401, 403):
                raise RewardServiceError(f"reward service {self.url}: {self._token_problem()} ({last})")
            if status == 413:
                raise RewardServiceError(f"reward service {self.url} refused a request of {len(data)} bytes as too "
                                         f"large ({last}); a smaller reward.batch_size sends fewer samples per request")
            if status != 429 and status < 500:  # the same request would be refused again
                raise RewardServiceError(f"reward service {self.url} refused the request: {last}")
        raise RewardServiceError(f"reward service {self.url}: no answer after {self.max_retries + 1} attempts "
                                 f"(reward.max_retries={self.max_retries}, reward.timeout_s={self.timeout_s:g}); "
                                 f"last: {last}")

    def _exchange(self, data: bytes) -> tuple[int, bytes]:
        """One POST → (status, body), all of it within timeout_s; the body of an error status is cut short.

        Each socket operation waits at most timeout_s, and a watchdog shuts the socket when the whole
        attempt has taken timeout_s, which wakes whatever read or write is still waiting."""
        p = self._parts
        conn_class = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
        conn = conn_class(p.hostname, p.port, timeout=self.timeout_s)
        expired, connected = threading.Event(), []

        def cut_off():
            expired.set()
            sock = conn.sock or (connected[0] if connected else None)  # conn forgets it once a response has it
            if sock is not None:
                with contextlib.suppress(OSError):  # socket.socket's own shutdown, under an SSL socket's too
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

        watchdog = threading.Timer(self.timeout_s, cut_off)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.connect()  # a TLS handshake included
            connected.append(conn.sock)
            try:
                conn.request("POST", (p.path or "/") + (f"?{p.query}" if p.query else ""), body=data,
                             headers=self._headers)
            except OSError as send_error:  # a server may answer early (413, 401) and stop reading: read that answer
                try:
                    response = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    raise send_error from None
            else:
                response = conn.getresponse()
            ok = 200 <= response.status < 300
            raw = self._read_bounded(response, self.max_response_bytes if ok else ERROR_SNIPPET_BYTES, strict=ok)
            if expired.is_set():  # the watchdog's shutdown reads as an end of stream, not as an error
                raise TimeoutError
            if ok and response.length:  # closed before the Content-Length it announced
                raise http.client.IncompleteRead(raw, response.length)
            return response.status, raw
        except (OSError, http.client.HTTPException):
            if expired.is_set():
                raise TimeoutError(f"timed out: no complete answer within {self.timeout_s:g} s") from None
            raise
        finally:
            watchdog.cancel()
            conn.close()

    def _read_bounded(self, response: http.client.HTTPResponse, limit: int, strict: bool) -> bytes:
        """At most ``limit`` bytes of the body; with ``strict``, a longer body is an error (and is not read)."""
        declared = response.getheader("Content-Length", "")
        if strict and declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise ValueError(self._too_big(f"announced {int(declared)} bytes"))
        chunks, size = [], 0
        while size <= limit:
            chunk = response.read(min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit and strict:
            raise ValueError(self._too_big(f"sent more than {limit} bytes"))
        return b"".join(chunks)[:limit]

    def _too_big(self, what: str) -> str:
        return (f"reward service {self.url} {what}, over the client's limit of {self.max_response_bytes} bytes "
                f"(max_response_bytes): not a scores answer")

    def _token_problem(self) -> str:
        if "Authorization" not in self._headers:
            return "it wants a bearer token and none was sent: set reward.token_env to the name of a variable holding it"
        source = f" from environment variable {self.token_env}" if self.token_env else ""
        return f"it rejected the bearer token{source}"

    def _parse(self, raw: bytes, n: int) -> list[float]:
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested ten thousand deep
            raise ValueError(f"reward service {self.url} answered with something that is not JSON: {_snippet(raw)}") from None
        scores = answer.get("scores") if isinstance(answer, dict) else None
        if not isinstance(scores, list):
            raise ValueError(f"reward service {self.url} must answer a JSON object with a 'scores' list; "
                             f"got {_snippet(raw)}")
        return checked_scores(scores, n, f"reward service {self.url}")


def checked_scores(values, n: int, source: str) -> list[float]:
    """One finite number per sample as floats, or a ValueError naming ``source`` and the samples."""
    out, bad = [], []
    for i, s in enumerate(values):
        try:
            if isinstance(s, (bool, str, bytes)):  # float() would take "1.5" and True
                raise TypeError
            out.append(float(s))
        except OverflowError:  # an integer too big for a float: non-finite, flagged below
            out.append(math.inf)
        except (TypeError, ValueError):
            bad.append(i)
    if bad:
        raise ValueError(f"{source} returned scores that are not numbers at samples {bad[:10]}")
    check_scores(out, n, source)  # the count, and finite (as the float32 the reward actor keeps)
    return out


def _snippet(raw: bytes, limit: int = 300) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."
