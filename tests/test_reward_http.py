"""reward.kind=http: the client against real HTTP servers on 127.0.0.1 (the reference server, and
scripted ones that fail, stall or answer nonsense), the config checks, and one real Ray reward actor."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhf_ray.config import ConfigError

from rlhf_ray.config.loading import load_config
from rlhf_ray.rewards.client import HttpRewardClient, RewardServiceError
from rlhf_ray.rewards.server import serve_reward_function

FN = "rlhf_ray.tasks.rewards:arithmetic_exact_match"
PROMPTS = ["What is 2 + 3?", "What is 7 - 4?", "What is 6 * 7?"]
RESPONSES = ["2 + 3 = 5", "The answer is 2", "#### 42"]
ANSWERS = ["5", "3", "42"]


@contextlib.contextmanager
def serving(server):
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # quick shutdown
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}/score"
    finally:
        server.shutdown()
        server.server_close()


def scripted(replies):
    """A server answering request i with replies[min(i, last)] = (status, body, delay_s); counts requests."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            status, body, delay = replies[min(server.requests, len(replies) - 1)]
            server.requests += 1
            time.sleep(delay)
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            with contextlib.suppress(OSError):  # a client that timed out has closed the socket
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests = 0
    return server


def client(url, **kw):
    return HttpRewardClient(url, **{"timeout_s": 5.0, "max_retries": 3, "backoff_s": 0.01, **kw})


def test_reference_server_scores_with_the_rule_function():
    server = serve_reward_function(FN)
    assert server.server_address[0] == "127.0.0.1"  # loopback unless asked otherwise
    with serving(server) as url:
        c = client(url)
        assert c.score(PROMPTS, RESPONSES, ANSWERS) == [1.0, 0.0, 1.0]
        assert c.attempts == 1
        batched = client(url, batch_size=2)  # 3 samples in requests of 2 and 1, scores kept in order
        assert batched.score(PROMPTS, RESPONSES, ANSWERS) == [1.0, 0.0, 1.0]
        assert batched.attempts == 2


def test_reference_server_refuses_a_malformed_body():
    with serving(serve_reward_function(FN)) as url:
        for body, message in [(b"{not json", "the body is not JSON"),
                              (b'{"prompts": ["a"], "responses": ["b"]}', "'answers' must be a list of strings"),
                              (b'{"prompts": ["a"], "responses": [], "answers": ["c"]}', "must have the same length"),
                              (b'{"prompts": [1], "responses": ["b"], "answers": ["c"]}', "'prompts' must be a list of strings"),
                              (b'{"prompts": "a", "responses": ["b"], "answers": ["c"]}', "'prompts' must be a list of strings"),
                              (b'{"prompts": ["a"], "responses": [null], "answers": ["c"]}', "'responses' must be a list of str"),
                              (b'[["a"], ["b"], ["c"]]', "must be a JSON object with the lists"),
                              (b"[" * 100_000, "the body is not JSON (RecursionError"),  # nested too deep to parse
                              (b'{"prompts": ["\xff\xfe"]}', "the body is not JSON (UnicodeDecodeError")]:
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=5)
            assert e.value.code == 400
            assert message in json.loads(e.value.read())["error"]
        assert client(url).score(PROMPTS, RESPONSES, ANSWERS) == [1.0, 0.0, 1.0]  # and it keeps serving


def test_bearer_token_is_required_when_set():
    with serving(serve_reward_function(FN, token="s3cret")) as url:
        assert client(url, token="s3cret").score(PROMPTS, RESPONSES, ANSWERS) == [1.0, 0.0, 1.0]
        wrong = client(url, token="guess", token_env="REWARD_TOKEN")
        with pytest.raises(RewardServiceError, match="rejected the bearer token from environment variable REWARD_TOKEN") as e:
            wrong.score(PROMPTS, RESPONSES, ANSWERS)
        assert wrong.attempts == 1  # a refused token is not retried
        assert "guess" not in str(e.value)  # nor is it ever printed
        with pytest.raises(RewardServiceError, match="wants a bearer token and none was sent: set reward.token_env"):
            client(url).score(PROMPTS, RESPONSES, ANSWERS)


def test_token_comes_from_the_named_environment_variable(monkeypatch):
    cfg = load_config(overrides=["reward.kind=http", "reward.url=http://127.0.0.1:9/score",
                                 "reward.token_env=RLHF_TEST_REWARD_TOKEN"])
    monkeypatch.delenv("RLHF_TEST_REWARD_TOKEN", raising=False)
    with pytest.raises(ValueError, match="reward.token_env='RLHF_TEST_REWARD_TOKEN': environment variable"):
        HttpRewardClient.from_config(cfg.reward)
    monkeypatch.setenv("RLHF_TEST_REWARD_TOKEN", "abc")
    c = HttpRewardClient.from_config(cfg.reward)
    assert c._headers["Authorization"] == "Bearer abc"
    assert "abc" not in json.dumps(cfg.model_dump(mode="json"))  # the token never enters the config


def test_retries_503_with_backoff_then_succeeds():
    server = scripted([(503, "busy", 0), (503, "busy", 0), (200, {"scores": [0.5, 1, -2.25]}, 0)])
    with serving(server) as url:
        c = client(url, backoff_s=0.05)
        start = time.monotonic()
        assert c.score(PROMPTS, RESPONSES, ANSWERS) == [0.5, 1.0, -2.25]
        assert c.attempts == server.requests == 3
        assert time.monotonic() - start >= 0.05 + 0.1  # waited backoff_s, then twice that


def test_gives_up_after_max_retries_naming_url_and_cause():
    server = scripted([(200, {"scores": [1, 1, 1]}, 1.0)])  # slower than the client's timeout
    with serving(server) as url:
        c = client(url, timeout_s=0.2, max_retries=1)
        with pytest.raises(RewardServiceError) as e:
            c.score(PROMPTS, RESPONSES, ANSWERS)
    assert f"reward service {url}: no answer after 2 attempts" in str(e.value)
    assert "timed out" in str(e.value)
    with pytest.raises(RewardServiceError, match="no answer after 3 attempts.*last: (URLError|Connection)"):
        client(url, max_retries=2).score(PROMPTS, RESPONSES, ANSWERS)  # that server is gone: refused


def test_other_4xx_fails_at_once():
    server = scripted([(404, "no such path", 0)])
    with serving(server) as url, pytest.raises(RewardServiceError, match="refused the request: HTTP 404: no such path"):
        client(url).score(PROMPTS, RESPONSES, ANSWERS)
    assert server.requests == 1


@pytest.mark.parametrize("body, message", [
    ({"scores": [1.0, 0.0]}, "returned 2 scores for 3 samples"),
    ('{"scores": [1.0, NaN, 0.0]}', "non-finite scores at samples [1]"),
    ({"scores": [1.0, "high", True]}, "not numbers at samples [1, 2]"),
    ({"rewards": [1, 1, 1]}, "must answer a JSON object with a 'scores' list"),
    ("<html>oops</html>", "not JSON: <html>oops</html>"),
    ('{"scores": [1e999, 0, 0]}', "non-finite scores at samples [0]"),  # json reads 1e999 as inf
    ('{"scores": [0, %s, 0]}' % ("9" * 400), "non-finite scores at samples [1]"),  # an int no float holds
    ('{"scores": [0, 0, 1e39]}', "non-finite scores at samples [2]"),  # finite in float64, not in float32
    ("[" * 100_000, "not JSON"),
])
def test_bad_answers_are_errors_naming_the_url(body, message):
    with serving(scripted([(200, body, 0)])) as url, pytest.raises(ValueError) as e:
        client(url).score(PROMPTS, RESPONSES, ANSWERS)
    assert f"reward service {url}" in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("overrides, message", [
    (["reward.kind=http"], "reward.kind=http needs reward.url"),
    (["reward.kind=http", "reward.url=ftp://host/score"], "reward.url='ftp://host/score' must be an http:// or https://"),
    (["reward.kind=http", "reward.url=http://"], "must be an http:// or https:// address with a host"),
])
def test_config_checks(overrides, message):
    with pytest.raises(ConfigError, match="reward: ") as e:
        load_config(overrides=overrides)
    assert message in str(e.value)


def test_cli_refuses_an_unset_token_variable(monkeypatch, capsys):
    from rlhf_ray.cli import main

    monkeypatch.delenv("RLHF_TEST_UNSET", raising=False)
    assert main(["serve-reward", "--function", FN, "--token-env", "RLHF_TEST_UNSET"]) == 2
    assert "--token-env RLHF_TEST_UNSET: environment variable RLHF_TEST_UNSET is not set" in capsys.readouterr().err


def test_reward_actor_scores_through_the_service(local_ray):
    """A real Ray reward actor (another process) reaches a server in this process on 127.0.0.1."""
    from rlhf_ray.roles.reward import Reward

    with serving(serve_reward_function(FN, token="tok")) as url:
        cfg = load_config(overrides=["reward.kind=http", f"reward.url={url}", "reward.token_env=RLHF_TEST_REWARD_TOKEN",
                                     "reward.backoff_s=0.01"])
        actor = local_ray.remote(num_cpus=0.5)(Reward).options(
            runtime_env={"env_vars": {"RLHF_TEST_REWARD_TOKEN": "tok"}}).remote(cfg)
        try:
            assert local_ray.get(actor.init_model.remote(None), timeout=120) == 0
            scores = local_ray.get(actor.score.remote(None, PROMPTS, RESPONSES, ANSWERS), timeout=60)
            assert scores.tolist() == [1.0, 0.0, 1.0]
        finally:
            local_ray.kill(actor)


# --- hostile or broken peers: small limits and short timeouts, every loop bounded ----------------------

LIMIT = 1000  # max_body_bytes of the servers below
OK_BODY = json.dumps({"prompts": PROMPTS, "responses": RESPONSES, "answers": ANSWERS}).encode()


@contextlib.contextmanager
def guarded(fn=FN, **kw):
    """The reference server with small limits; yields (url, port)."""
    kw = {"max_body_bytes": LIMIT, "socket_timeout_s": 0.5, "request_timeout_s": 1.0, **kw}
    with serving(serve_reward_function(fn, **kw)) as url:
        yield url, int(url.split(":")[2].split("/")[0])


def raw(port, data: bytes, shut_write: bool = False, timeout: float = 5.0) -> tuple[int | None, dict | None]:
    """Send raw bytes (then, with shut_write, end the stream); read until the server closes.
    → (status, JSON body), or (None, None) when it closed without a word."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):  # bounded: the server closes, or the timeout raises
            answer += chunk
    if not answer:
        return None, None
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def post_head(*headers: str, path: str = "/score") -> bytes:
    return ("\r\n".join([f"POST {path} HTTP/1.1", "Host: x", *headers]) + "\r\n\r\n").encode()


@pytest.mark.parametrize("headers, status, message", [
    (["Content-Length: 1000000000000"], 413, "a body of 1000000000000 bytes is over the limit of 1000 bytes"),
    ([f"Content-Length: {LIMIT + 1}"], 413, "a body of 1001 bytes is over the limit of 1000 bytes"),
    ([], 411, "the request has no Content-Length header: send a Content-Length header and a body of at most 1000 bytes"),
    (["Transfer-Encoding: chunked"], 411, "Transfer-Encoding 'chunked' is not accepted: send a Content-Length header "
                                          "and a body of at most 1000 bytes"),
    (["Transfer-Encoding: chunked", "Content-Length: 10"], 411, "Transfer-Encoding 'chunked' is not accepted"),
    (["Content-Length: -5"], 400, "Content-Length '-5' is not one byte count: send a Content-Length header and a body of at most 1000"),
    (["Content-Length: +5"], 400, "Content-Length '+5' is not one byte count"),
    (["Content-Length: 5_0"], 400, "Content-Length '5_0' is not one byte count"),
    (["Content-Length: lots"], 400, "Content-Length 'lots' is not one byte count"),
    (["Content-Length: 5", "Content-Length: 6"], 400, "Content-Length '5, 6' is not one byte count"),
])
def test_unbounded_or_unmeasured_body_is_refused_unread(headers, status, message):
    """Only headers are sent: an answer (rather than a 408 once the read times out) shows nothing was read."""
    with guarded(socket_timeout_s=5.0, request_timeout_s=5.0) as (url, port):
        got, body = raw(port, post_head(*headers))
        assert (got, body["error"].replace("malformed request: ", "")[:len(message)]) == (status, message)
        assert client(url).score(PROMPTS, RESPONSES, ANSWERS) == [1.0, 0.0, 1.0]  # and it keeps serving


def test_body_at_the_limit_is_read_and_one_byte_over_is_not():
    with guarded() as (url, port):
        exact = OK_BODY + b" " * (LIMIT - len(OK_BODY))
        assert raw(port, post_head(f"Content-Length: {LIMIT}") + exact) == (200, {"scores": [1.0, 0.0, 1.0]})
        assert raw(port, post_head(f"Content-Length: {LIMIT + 1}") + exact + b" ")[0] == 413
        with pytest.raises(RewardServiceError, match="refused a request of .* bytes as too large .*HTTP 413.*"
                                                     "over the limit of 1000 bytes.*smaller reward.batch_size") as e:
            client(url).score(["x" * 2000], ["y"], ["z"])
        assert e.value.__cause__ is None and "no answer after" not in str(e.value)  # refused, not retried


def test_body_shorter_than_its_content_length():
    with guarded() as (url, port):
        status, body = raw(port, post_head("Content-Length: 500") + b'{"prompts"', shut_write=True)
        assert (status, body["error"]) == (400, "malformed request: the body ended after 10 of the 500 bytes its "
                                                "Content-Length announced")
        start = time.monotonic()  # ... and one that stops sending without closing: the idle timeout (0.5 s)
        status, body = raw(port, post_head("Content-Length: 500") + b'{"prompts"')
        assert status == 408 and "500 bytes announced" in body["error"] and "no pause over 0.5 s" in body["error"]
        assert time.monotonic() - start < 0.9  # before the whole-request deadline (1 s): the idle timeout did it


def drip(port, data: bytes, every_s: float = 0.05, max_s: float = 5.0) -> tuple[float, bytes]:
    """Send data a byte at a time until the server answers or closes; → (seconds until then, its answer)."""
    start, got = time.monotonic(), b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(every_s)
        for i in range(len(data)):
            if time.monotonic() - start > max_s:
                return time.monotonic() - start, got
            try:
                sock.send(data[i:i + 1])
                got = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:  # reset: it closed
                break
            break  # an answer, or b"": closed
        elapsed = time.monotonic() - start
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while got and (chunk := sock.recv(65536)):  # the rest of the answer, up to the close
                got += chunk
    return elapsed, got


def test_slow_clients_are_cut_off_while_others_are_served():
    """Slowloris: one says nothing, one trickles its headers, one its body, a byte every 50 ms (never idle
    for socket_timeout_s). The idle timeout closes the first, the whole-request deadline the others,
    and a well-behaved client is served all the while."""
    results = {}
    with guarded(socket_timeout_s=0.3, request_timeout_s=1.5) as (url, port):
        def silent():
            start = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                results["silent"] = (sock.recv(1024), time.monotonic() - start)

        slow = {"silent": silent,
                "headers": lambda: results.__setitem__("headers", drip(port, post_head("X-Pad: " + "a" * 500))),
                "body": lambda: results.__setitem__("body", drip(port, post_head("Content-Length: 900") + b" " * 900))}
        threads = [threading.Thread(target=f, daemon=True) for f in slow.values()]
        for t in threads:
            t.start()
        time.sleep(0.1)
        start = time.monotonic()
        assert client(url, timeout_s=1.0, max_retries=0).score(PROMPTS, RESPONSES, ANSWERS) == [1.0, 0.0, 1.0]
        assert time.monotonic() - start < 1.0
        for t in threads:
            t.join(timeout=10)
    assert results["silent"][0] == b"" and results["silent"][1] < 1.2  # closed by the 0.3 s idle timeout
    for name in ("headers", "body"):
        elapsed, got = results[name]
        assert got.startswith(b"HTTP/1.0 408 "), (name, got)
        assert b"did not arrive" in got and 1.4 < elapsed < 3.5, (name, elapsed)


def test_connections_over_max_connections_get_503():
    with guarded(socket_timeout_s=5.0, request_timeout_s=5.0, max_connections=2) as (url, port):
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        try:
            status, body = raw(port, b"")  # the third: refused at once, before it sends a byte
            assert (status, body["error"]) == (503, "busy: 2 connections are being served (max_connections); retry later")
        finally:
            for sock in idle:
                sock.close()
        c = client(url, max_retries=6, backoff_s=0.05)  # 503 is retried; the slots come back as the idle ones go
        assert c.score(PROMPTS, RESPONSES, ANSWERS) == [1.0, 0.0, 1.0]


def test_wrong_method_path_or_request_line_get_json_4xx():
    with guarded() as (url, port):
        for method in ("GET", "PUT", "DELETE", "HEAD"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(method, "/score")
            response = conn.getresponse()
            assert (response.status, response.getheader("Allow")) == (405, "POST"), method
            if method != "HEAD":
                assert json.loads(response.read())["error"] == (f"method {method} not allowed: POST a JSON body to "
                                                                f"one of ['/', '/score']")
            conn.close()
        cases = [(post_head(f"Content-Length: {len(OK_BODY)}", path="/admin") + OK_BODY, 404, "no such path '/admin'"),
                 (b"BREW /score HTTP/1.0\r\n\r\n", 501, "Unsupported method ('BREW')"),
                 (b"hello there\r\n\r\n", 400, "Bad HTTP/0.9 request type ('hello')"),
                 (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 x y z\r\n\r\n", 400, "Bad request"),  # TLS hello-ish
                 (b"POST /score HTTP/7.0\r\n\r\n", 505, "Invalid HTTP version (7.0)"),
                 (b"POST /score HTTP/1.0\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431, "Line too long"),
                 (b"POST /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n", 414, "Request-URI Too Long")]
        for data, status, message in cases:
            got, body = raw(port, data)
            assert got == status and body["error"].startswith(message), (data[:30], got, body)
        assert client(url).score(PROMPTS, RESPONSES, ANSWERS) == [1.0, 0.0, 1.0]  # still serving


@pytest.mark.parametrize("scores, message", [
    ([1.0], "returned 1 scores for 3 samples"),
    ([1.0, math.nan, 0.0], "returned non-finite scores at samples [1]"),
    (["1", 0.0, True], "returned scores that are not numbers at samples [0, 2]"),
    (None, "returned NoneType, not a list of scores"),
])
def test_server_refuses_to_send_bad_scores_from_its_function(scores, message):
    def bad_reward(prompts, responses, answers):
        return scores

    with guarded(bad_reward) as (url, port), pytest.raises(RewardServiceError) as e:
        client(url, max_retries=0).score(PROMPTS, RESPONSES, ANSWERS)
    assert "HTTP 500" in str(e.value) and f"reward function {bad_reward.__qualname__} {message}" in str(e.value)


def test_hung_reward_function_times_out_the_client_and_others_are_still_served():
    release = threading.Event()

    def sometimes_hangs(prompts, responses, answers):
        if prompts[0] == "hang":
            release.wait(timeout=5)  # bounded
        return [1.0] * len(prompts)

    with guarded(sometimes_hangs) as (url, port):
        try:
            c = client(url, timeout_s=0.3, max_retries=1, backoff_s=0.05)
            start = time.monotonic()
            with pytest.raises(RewardServiceError) as e:
                c.score(["hang"], ["b"], ["c"])
            assert time.monotonic() - start < 1.5 and c.attempts == 2
            assert str(e.value).startswith(f"reward service {url}: no answer after 2 attempts (reward.max_retries=1, "
                                           f"reward.timeout_s=0.3); last: TimeoutError: timed out")
            assert client(url, max_retries=0).score(["fine"], ["b"], ["c"]) == [1.0]  # two threads still hang
        finally:
            release.set()


def raw_replies(write):
    """A server whose do_POST reads the request and then calls write(handler) to answer, byte by byte if it likes."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            with contextlib.suppress(OSError):  # the client has given up
                write(self.wfile)

        def log_message(self, *args):
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def trickle(wfile):
    wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: 200\r\n\r\n")
    for _ in range(60):  # a byte every 50 ms: never idle for the client's timeout_s, never done in it
        wfile.write(b" ")
        time.sleep(0.05)


def test_trickling_answer_times_out_the_whole_request():
    with serving(raw_replies(trickle)) as url:
        c = client(url, timeout_s=0.5, max_retries=1, backoff_s=0.01)
        start = time.monotonic()
        with pytest.raises(RewardServiceError, match=r"no answer after 2 attempts .*reward.timeout_s=0.5\); "
                                                     r"last: TimeoutError: timed out: no complete answer within 0.5 s"):
            c.score(PROMPTS, RESPONSES, ANSWERS)
        assert time.monotonic() - start < 2.0


def announces_a_gigabyte(wfile):
    wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: 1000000000\r\n\r\n" + b"0" * 100)
    time.sleep(1.0)


def streams_without_length(wfile):
    wfile.write(b"HTTP/1.0 200 OK\r\n\r\n")
    for _ in range(100):  # until the client hangs up (then the write fails), at most 6.4 MB
        wfile.write(b"9" * 65536)


@pytest.mark.parametrize("write, message", [
    (announces_a_gigabyte, "announced 1000000000 bytes, over the client's limit of 1000 bytes (max_response_bytes)"),
    (streams_without_length, "sent more than 1000 bytes, over the client's limit of 1000 bytes (max_response_bytes)"),
])
def test_oversized_answer_is_refused_unread(write, message):
    with serving(raw_replies(write)) as url:
        c = client(url, max_response_bytes=1000)
        start = time.monotonic()
        with pytest.raises(ValueError, match=f"reward service {url} ") as e:
            c.score(PROMPTS, RESPONSES, ANSWERS)
        assert message in str(e.value) and c.attempts == 1 and time.monotonic() - start < 0.9


def cut_short(wfile):
    wfile.write(b'HTTP/1.0 200 OK\r\nContent-Length: 200\r\n\r\n{"scores": [1, 1, 1]}')  # 21 of 200 bytes, then closed


def test_answer_shorter_than_its_content_length_is_retried_not_parsed():
    with serving(raw_replies(cut_short)) as url:
        c = client(url, max_retries=1)
        with pytest.raises(RewardServiceError, match=r"no answer after 2 attempts .*last: IncompleteRead: IncompleteRead\(21 bytes read, "
                                                     r"179 more expected\)"):
            c.score(PROMPTS, RESPONSES, ANSWERS)


def test_early_refusal_of_a_big_body_reaches_the_client():
    """The server answers 413 (or 401) from the headers and closes without reading the body, so the client's
    send fails midway; it still reads the refusal, rather than retrying a broken pipe."""
    big = ["x" * 8_000_000]
    with guarded(token="t", socket_timeout_s=5.0, request_timeout_s=5.0) as (url, port):
        c = client(url, token="t")
        with pytest.raises(RewardServiceError, match="refused a request of 8000055 bytes as too large .*HTTP 413"):
            c.score(big, ["y"], ["z"])
        wrong = client(url, token="guess")
        with pytest.raises(RewardServiceError, match="rejected the bearer token .*HTTP 401"):
            wrong.score(big, ["y"], ["z"])
        assert c.attempts == wrong.attempts == 1
