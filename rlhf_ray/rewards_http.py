"""A remote reward service (reward.kind=http): the client the reward actor calls, and a reference server.

Protocol: POST a JSON object {"prompts": [...], "responses": [...], "answers": [...]} (equal-length
lists of strings) and get back {"scores": [...]}, one finite number per sample, in order. An optional
bearer token goes in the Authorization header; it is read from an environment variable so that it
never sits in a config file, a run directory or a log line.

Standard library only: the server must run where nothing but Python is installed.
"""

from __future__ import annotations

import hmac
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rlhf_ray.reward_functions import check_scores, import_reward_function

FIELDS = ("prompts", "responses", "answers")
MAX_BODY_BYTES = 64 * 2**20  # a body this big is a bug upstream, not a batch worth reading into memory


class RewardServiceError(RuntimeError):
    """The reward service could not be reached, refused the request, or kept failing."""


class HttpRewardClient:
    """Scores samples by POSTing them to ``url``; retries transient failures with exponential backoff."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0, max_retries: int = 3,
                 backoff_s: float = 1.0, batch_size: int = 0, token_env: str | None = None):
        self.url, self.timeout_s, self.max_retries = url, timeout_s, max_retries
        self.backoff_s, self.batch_size, self.token_env = backoff_s, batch_size, token_env
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
            request = urllib.request.Request(self.url, data=data, headers=self._headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as e:  # before OSError: HTTPError is one
                last = f"HTTP {e.code}: {_snippet(e.read())}"
                if e.code in (401, 403):
                    raise RewardServiceError(f"reward service {self.url}: {self._token_problem()} ({last})") from None
                if e.code != 429 and e.code < 500:  # the same request would be refused again
                    raise RewardServiceError(f"reward service {self.url} refused the request: {last}") from None
            except (OSError, http.client.HTTPException) as e:  # refused, reset, DNS, timeouts (TimeoutError ⊂ OSError)
                last = f"{type(e).__name__}: {e}"
            else:
                return self._parse(raw, len(body["responses"]))
        raise RewardServiceError(f"reward service {self.url}: no answer after {self.max_retries + 1} attempts "
                                 f"(reward.max_retries={self.max_retries}, reward.timeout_s={self.timeout_s:g}); "
                                 f"last: {last}")

    def _token_problem(self) -> str:
        if "Authorization" not in self._headers:
            return "it wants a bearer token and none was sent: set reward.token_env to the name of a variable holding it"
        source = f" from environment variable {self.token_env}" if self.token_env else ""
        return f"it rejected the bearer token{source}"

    def _parse(self, raw: bytes, n: int) -> list[float]:
        try:
            answer = json.loads(raw)
        except ValueError:
            raise ValueError(f"reward service {self.url} answered with something that is not JSON: {_snippet(raw)}") from None
        scores = answer.get("scores") if isinstance(answer, dict) else None
        if not isinstance(scores, list):
            raise ValueError(f"reward service {self.url} must answer a JSON object with a 'scores' list; "
                             f"got {_snippet(raw)}")
        bad = [i for i, s in enumerate(scores) if isinstance(s, bool) or not isinstance(s, (int, float))]
        if bad:
            raise ValueError(f"reward service {self.url} returned scores that are not numbers at samples {bad[:10]}")
        check_scores(scores, n, f"reward service {self.url}")  # one finite number per sample
        return [float(s) for s in scores]


def _snippet(raw: bytes, limit: int = 300) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _read_request(handler: BaseHTTPRequestHandler) -> dict:
    """The request body as {field: list of strings}, or a ValueError saying what is wrong with it."""
    try:
        length = int(handler.headers.get("Content-Length", ""))
    except ValueError:
        raise ValueError("the request needs a Content-Length header") from None
    if not 0 <= length <= MAX_BODY_BYTES:
        raise ValueError(f"Content-Length {length} is outside 0..{MAX_BODY_BYTES}")
    try:
        body = json.loads(handler.rfile.read(length))
    except ValueError as e:
        raise ValueError(f"the body is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise ValueError(f"the body must be a JSON object with the lists {list(FIELDS)}")
    for key in FIELDS:
        if not isinstance(body.get(key), list) or not all(isinstance(x, str) for x in body[key]):
            raise ValueError(f"'{key}' must be a list of strings")
    if len({len(body[k]) for k in FIELDS}) != 1:
        raise ValueError("'prompts', 'responses' and 'answers' must have the same length: "
                         + ", ".join(f"{len(body[k])} {k}" for k in FIELDS))
    return body


def serve_reward_function(function_path: str, host: str = "127.0.0.1", port: int = 0,
                          token: str | None = None) -> ThreadingHTTPServer:
    """A server (not yet serving: call ``serve_forever``) scoring with a rule reward 'module:function'.

    Loopback by default: a reward service is reachable from other machines only when asked for."""
    fn = import_reward_function(function_path)
    expected = f"Bearer {token}".encode() if token else None

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            # compare_digest: the time taken must not tell how much of a guessed token was right
            if expected and not hmac.compare_digest(self.headers.get("Authorization", "").encode(), expected):
                return self._send(401, {"error": "missing or wrong bearer token"})
            try:
                body = _read_request(self)
            except ValueError as e:
                return self._send(400, {"error": f"malformed request: {e}"})
            try:
                scores = [float(s) for s in fn(body["prompts"], body["responses"], body["answers"])]
            except Exception as e:  # the function's own failure: 500, and the client retries it
                return self._send(500, {"error": f"reward function {function_path} failed: {type(e).__name__}: {e}"})
            self._send(200, {"scores": scores})

        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return ThreadingHTTPServer((host, port), Handler)
