"""A run directory belongs to one run; a resume continues that run only with a config it fits.

``<run_dir>/run.json`` records the run's id and, for every start of it, when, the fingerprint of
its resolved config and the checkpoint it resumed from. A run may start in a directory when:

- the directory is new or holds no run outputs (a fresh run, a new id);
- ``trainer.resume`` names a checkpoint (the run goes on; from one of this directory's own
  checkpoints it keeps the id, so its checkpoints go on being pruned together);
- ``trainer.overwrite=true``: the outputs of the run before are deleted first, each one named.

Anything else stops before a model is read or an actor started, offering those three ways; so does a
directory that a run still going on this machine holds (``run.lock``: its process id and host, removed
when the run shuts down; a lock whose process is gone is stale and ignored). A resume
is checked against the checkpoint in everything that would make it load wrongly or not at all (the
algorithm, each trained role's model and tokenizer, its number of ranks, ZeRO stage and precision);
settings that may change on a resume (learning rate, steps, ...) are listed, not refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from rlhf_ray.config import Config
from rlhf_ray.config.loading import save_config
from rlhf_ray.runs.checkpoint import CheckpointError, read_controller_state

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
OUTPUTS = (RUN_FILE, "config.yaml", "metrics.jsonl", "summary.json", "report.txt", "report.png", "checkpoints", "logs",
           "final", "wandb", "tensorboard")
OUTPUT_PATTERNS = ("eval_step*.jsonl",)
RUN_CONTROL = ("trainer.resume", "trainer.overwrite")  # how to start, not what the run is: left out of fingerprints
# Per trained role: settings a DeepSpeed state only loads back under (its ranks' partitions, its dtypes).
RANK_LAYOUT = ("num_actors", "zero_stage", "precision")


class RunDirError(ValueError):
    """The run directory cannot take this run (another run's outputs, not writable)."""


def flat_config(cfg: Config | dict) -> dict[str, object]:
    """{'a.b.c': value} of a config (or a config.yaml's tree), run-control keys left out."""
    tree = cfg.model_dump(mode="json") if isinstance(cfg, Config) else cfg
    out: dict[str, object] = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif f"{prefix}{k}" not in RUN_CONTROL:
                out[f"{prefix}{k}"] = v
    walk(tree, "")
    return out


def fingerprint(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(flat_config(cfg), sort_keys=True).encode()).hexdigest()[:16]


def previous_outputs(run_dir: Path) -> list[str]:
    """The run outputs already in ``run_dir`` (names relative to it)."""
    if not run_dir.is_dir():
        return []
    found = [n for n in OUTPUTS if (run_dir / n).exists()]
    return found + sorted(p.name for pattern in OUTPUT_PATTERNS for p in run_dir.glob(pattern))


def check_run_dir(cfg: Config, resume_from: Path | None) -> list[str]:
    """Whether this run may start in ``trainer.run_dir``; returns the outputs an overwrite deletes.
    Writes nothing (the preflight runs it before anything starts)."""
    run_dir = Path(cfg.trainer.run_dir)
    _check_writable(run_dir)
    _check_not_in_use(run_dir)
    found = previous_outputs(run_dir)
    if not found or cfg.trainer.overwrite:
        return found
    if resume_from is not None:
        return []  # a resume writes into a directory that already holds a run: that is its point
    searched = (" (trainer.resume=auto found no complete checkpoint there)" if cfg.trainer.resume == "auto" else "")
    raise RunDirError(
        f"trainer.run_dir={run_dir} holds another run's outputs ({', '.join(found[:6])}){searched}. "
        f"Continue that run with trainer.resume=auto, start this one in a new trainer.run_dir, or replace "
        f"that run with trainer.overwrite=true (deletes its checkpoints and metrics)")


def _check_writable(run_dir: Path, where: str | None = None) -> None:
    """A file made and removed in the run directory, or its nearest existing parent: permission bits
    alone miss read-only mounts (and say nothing for root). ``where`` starts the error (the key and value)."""
    where = where or f"trainer.run_dir={run_dir}"
    existing = next(p for p in [run_dir, *run_dir.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise RunDirError(f"{where}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise RunDirError(f"{where}: cannot write in {existing} ({e.strerror})") from None


def check_output_file(path: str | Path, key: str) -> Path:
    """A file a command is about to write (``key`` names it in the config or on the command line): not
    a folder, its folder writable (or creatable), the file itself writable if it is there. Checked
    before any generation, so nothing computed is lost to a path that was never writable."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"{key}={path}: is a folder; name a file to write (e.g. {path / 'out.jsonl'})")
    if path.exists() and not _opens_for_append(path):
        raise RunDirError(f"{key}={path}: the file exists and cannot be written")
    _check_writable(path.parent, f"{key}={path}")
    return path


def _opens_for_append(path: Path) -> bool:
    try:
        with path.open("a"):
            return True
    except OSError:
        return False


def _check_not_in_use(run_dir: Path) -> None:
    try:
        holder = json.loads((run_dir / LOCK_FILE).read_text())
        pid, host = int(holder["pid"]), holder["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no lock, or one too broken to name a process: nothing provably running
    if host == socket.gethostname() and pid != os.getpid() and _alive(pid):
        raise RunDirError(f"trainer.run_dir={run_dir} is in use by a run still going on this machine (process "
                          f"{pid}, since {holder.get('since', '?')}): wait for it, stop it, or use another trainer.run_dir")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def release_run_dir(run_dir: str | Path) -> None:
    """Removes this process's run.lock (a run shutting down, however it ended)."""
    lock = Path(run_dir) / LOCK_FILE
    try:
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass


def claim_run_dir(cfg: Config, resume_from: Path | None) -> str:
    """Makes ``trainer.run_dir`` this run's: deletes what an overwrite replaces, writes the resolved
    config and run.json. Returns the run's id (the resumed run's, when resuming from this directory)."""
    run_dir = Path(cfg.trainer.run_dir)
    for name in check_run_dir(cfg, resume_from):
        path = run_dir / name
        print(f"[run_dir] trainer.overwrite=true: deleting {path}", flush=True)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    record = _read_record(run_dir) if resume_from is not None else {}
    run_id = _resumed_id(resume_from, run_dir, record) or uuid.uuid4().hex[:12]
    if record.get("id") != run_id:
        record = {"id": run_id, "starts": []}
    record["starts"].append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "fingerprint": fingerprint(cfg),
                             "resumed_from": str(resume_from) if resume_from else None})
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=1))
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                 "since": record["starts"][-1]["time"]}))
    return run_id


def _read_record(run_dir: Path) -> dict:
    try:
        record = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and isinstance(record.get("starts"), list) else {}


def _resumed_id(resume_from: Path | None, run_dir: Path, record: dict) -> str | None:
    """A resume from this directory's own checkpoint continues its run id; one from elsewhere starts a new id."""
    if resume_from is None or resume_from.resolve().parent != (run_dir / "checkpoints").resolve():
        return None
    return read_controller_state(resume_from).get("run_id") or record.get("id")


# ---------------------------------------------------------------- resume compatibility


def check_resume(path: Path, cfg: Config, models: dict[str, str]) -> list[str]:
    """Raises CheckpointError listing everything that makes the checkpoint at ``path`` unfit for
    ``cfg`` (``models``: trained role → fingerprint of the model folder it starts from, see
    rlhf_ray.models.headers); returns the settings that changed and may ("learner.lr: 1e-06 → 2e-06")."""
    state = read_controller_state(path)
    saved = _read_config(path)
    now = flat_config(cfg)
    problems = []
    if saved.get("algorithm") != cfg.algorithm:
        problems.append(f"algorithm: checkpoint {saved.get('algorithm')}, now {cfg.algorithm}")
    for role in cfg.spec.trained_roles:
        for key in (f"{role}.{k}" for k in RANK_LAYOUT):
            if saved.get(key) != now[key]:
                problems.append(f"{key}: checkpoint {saved.get(key)}, now {now[key]}")
        # The adapters' shape: the checkpoint holds those parameters (and their optimizer state) alone.
        for key in sorted(k for k in set(saved) | set(now) if k == f"{role}.lora" or k.startswith(f"{role}.lora.")):
            if not key.endswith(".dropout") and saved.get(key) != now.get(key):
                problems.append(f"{key}: checkpoint {saved.get(key)}, now {now.get(key)}")
        before = state.get("models", {}).get(role)
        paths = [k for k in ("model.path", f"{role}.model_path") if saved.get(k) != now[k]]
        if (before is not None and before != models.get(role)) or (before is None and paths):
            problems.append(f"{role}'s model: its config or tokenizer files differ from those the checkpoint was "
                            f"trained from (model.path: checkpoint {saved.get('model.path')}, now {cfg.model.path})")
        if not (path / role).is_dir():
            problems.append(f"{role}: the checkpoint has no {role}/ state")
    if problems:
        raise CheckpointError(f"trainer.resume={cfg.trainer.resume}: checkpoint {path} does not fit this config:\n  "
                              + "\n  ".join(problems))
    return [f"{k}: {saved.get(k)!r} → {v!r}" for k, v in now.items() if k in saved and saved[k] != v]


def _read_config(path: Path) -> dict[str, object]:
    try:
        tree = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"checkpoint {path}: config.yaml cannot be read ({e})") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"checkpoint {path}: config.yaml is not a mapping")
    return flat_config(tree)
