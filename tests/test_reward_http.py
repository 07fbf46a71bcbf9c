"""reward.kind=http: the client against real HTTP servers on 127.0.0.1 (the reference server, and
scripted ones that fail, stall or answer nonsense), the config checks, and one real Ray reward actor."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhf_ray.config import ConfigError, load_config
from rlhf_ray.rewards_http import HttpRewardClient, RewardServiceError, serve_reward_function

FN = "rlhf_ray.tasks.rewards:arithmetic_exact_match"
PROMPTS = ["What is 2 + 3?", "What is 7 - 4?", "What is 6 * 7?"]
RESPONSES = ["2 + 3 = 5", "The answer is 2", "#### 42"]
ANSWERS = ["5", "3", "42"]


@contextlib.contextmanager
def serving(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
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
                              (b'{"prompts": ["a"], "responses": [], "answers": ["c"]}', "must have the same length")]:
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=5)
            assert e.value.code == 400
            assert message in json.loads(e.value.read())["error"]


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
