"""A quiet console: an actor's output goes to its log file, what must be seen still reaches the console."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from rlhf_ray.runs.logs import DRIVER_CHATTER, actor_log_file, route_driver_logs

pytestmark = pytest.mark.unit

# Every kind of writer an actor's process has: print, a library's own handler, C-level writes to fd 2,
# a library logger's warning, rlhf_ray's warning, anyone's error.
ACTOR = r"""
import logging, os, sys
from rlhf_ray.runs.logs import route_actor_output
vllm = logging.getLogger("vllm"); vllm.propagate = False
vllm.addHandler(logging.StreamHandler(sys.stdout)); vllm.setLevel(logging.INFO)
route_actor_output(sys.argv[1] if len(sys.argv) > 1 else None)
print("a print")
vllm.info("INFO Reloading weights inplace")
os.write(2, b"C++ warning on fd 2\n")
logging.getLogger("transformers.modeling").warning("a library warning")
logging.getLogger("rlhf_ray.roles.reward").warning("the reward model's tokenizer differs")
logging.getLogger("deepspeed").error("an error")
"""


def run_actor(*args: str) -> str:
    done = subprocess.run([sys.executable, "-c", ACTOR, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_actor_output_goes_to_its_file_and_only_what_matters_to_the_console(tmp_path):
    log = actor_log_file(tmp_path, "20261207-120000", "rollout", 1)
    assert log == tmp_path.absolute() / "logs" / "20261207-120000" / "rollout-1.log"
    console = run_actor(str(log))
    kept = log.read_text()
    for line in ("a print", "INFO Reloading weights inplace", "C++ warning on fd 2", "a library warning"):
        assert line in kept
        assert line not in console
    assert "the reward model's tokenizer differs" in console
    assert "an error" in console


def test_verbose_leaves_every_stream_alone(tmp_path):
    console = run_actor()  # no file: logging.verbose
    for line in ("a print", "INFO Reloading weights inplace", "C++ warning on fd 2"):
        assert line in console
    assert not (tmp_path / "logs").exists()


def test_driver_chatter_to_driver_log_warnings_to_console(tmp_path, capsys):
    ray_log = logging.getLogger("ray")
    console = logging.StreamHandler(sys.stderr)
    ray_log.addHandler(console)
    before = ray_log.handlers[:], ray_log.level
    try:
        path = route_driver_logs(tmp_path, verbose=False)
        ray_log.info("Started a local Ray instance.")
        ray_log.warning("a warning of Ray's")
        for h in ray_log.handlers:
            h.flush()
        assert path == tmp_path.absolute() / "logs" / "driver.log"
        assert "Started a local Ray instance." in path.read_text()
        err = capsys.readouterr().err
        assert "Started a local Ray instance." not in err
        assert "a warning of Ray's" in err
        assert route_driver_logs(tmp_path / "other", verbose=True) is None
    finally:
        for name in DRIVER_CHATTER:
            log = logging.getLogger(name)
            for h in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
                log.removeHandler(h)
                h.close()
        ray_log.handlers[:] = before[0]
        ray_log.setLevel(before[1])
        ray_log.removeHandler(console)
