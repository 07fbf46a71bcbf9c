"""Where a run's output goes: the console shows the run, the run directory keeps the chatter.

By default the console shows the progress bar, the step lines, evaluations, alarms and errors. Every
actor's own output (vLLM's engine INFO lines, DeepSpeed's and transformers' messages, the progress
bars of model loading, C++ warnings: everything its process writes to stdout or stderr) goes to
``<run_dir>/logs/<run id>/<role>-<rank>.log``, and the driver's library INFO (Ray's) to
``<run_dir>/logs/driver.log``. Warnings of rlhf_ray's own loggers and errors of any logger still
reach the console. ``logging.verbose=true`` leaves every stream where it was.

An actor's streams are redirected at the file descriptors, not by logging handlers: vLLM configures
its own handlers (to the stdout object of its import time), DeepSpeed and tqdm write to the streams
directly, and C++ code writes to fd 2. Ray forwards to the driver what a worker writes to its
original stdout and stderr, which this module keeps a copy of for what must still be seen.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ACTOR_LOG_ENV = "RLHF_RAY_ACTOR_LOG"  # set per actor by its worker group; absent with logging.verbose
LOGS_DIR = "logs"
DRIVER_LOG = "driver.log"
# Driver-side loggers whose INFO is chatter (Ray's start-up lines); their warnings still show.
DRIVER_CHATTER = ("ray", "vllm", "transformers", "DeepSpeed", "datasets")


def actor_log_file(run_dir: str | Path, run_id: str, role: str, rank: int) -> Path:
    """One folder per start of the run (its run id, or a sidecar's name), one file per actor."""
    return Path(run_dir).absolute() / LOGS_DIR / run_id.replace("/", "-") / f"{role}-{rank}.log"


class _ConsoleWorthy(logging.Filter):
    """rlhf_ray's own warnings, and errors of anyone."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or (record.levelno >= logging.WARNING
                                                   and record.name.split(".")[0] == "rlhf_ray")


def route_actor_output(log_file: str | None) -> None:
    """In an actor's process: fds 1 and 2 (and so sys.stdout, sys.stderr, every library's handlers and
    C code) append to ``log_file``; of what reaches the root logger, everything goes to the file and
    what ``_ConsoleWorthy`` passes to the original stderr too (which Ray forwards to the driver). No-op without a file (logging.verbose)."""
    if not log_file:
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    console = os.fdopen(os.dup(2), "w", buffering=1)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    to_console, to_file = logging.StreamHandler(console), logging.StreamHandler(sys.stderr)  # fd 2: the file now
    to_console.addFilter(_ConsoleWorthy())
    root = logging.getLogger()
    for handler in (to_console, to_file):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    if root.level > logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)


def route_driver_logs(run_dir: str | Path, verbose: bool) -> Path | None:
    """The driver's library INFO into ``<run_dir>/logs/driver.log`` (everything at INFO and above from
    the DRIVER_CHATTER loggers); their console handlers keep WARNING and above. Returns the file."""
    if verbose:
        return None
    path = Path(run_dir).absolute() / LOGS_DIR / DRIVER_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in DRIVER_CHATTER:
        log = logging.getLogger(name)
        for h in log.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(max(h.level, logging.WARNING))
        if to_file not in log.handlers:
            log.addHandler(to_file)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
    return path
