"""Checkpoints: written whole or not at all, the last k kept, loaded without unpickling code.

Layout of ``<run_dir>/checkpoints/step_000010/``::

    controller.json      step, prompt-sampler position, KL-controller state, RNG states, weights version
                         (each loop writes what it needs: offline ones add past held-out metrics)
    config.yaml          the resolved config of the run that wrote it
    learner/ critic/     DeepSpeed states (weights, optimizer, every rank's partition) + each rank's RNG
                         (reward/ for reward-model training)
    policy_hf/           the policy as a Hugging Face folder (safetensors), loadable by from_pretrained and vLLM
                         (reward_hf/ for reward-model training)
    MANIFEST.json        size and SHA-256 of every file above
    COMPLETE             written last

A checkpoint is assembled in ``step_000010.tmp``, every file fsynced, and renamed when complete, so
a crash (or power loss) during a save leaves the previous checkpoint whole; `latest()` never returns
a folder without COMPLETE, and `verify` finds a file changed or cut since (before any actor loads it).

Checkpoints carry the id of the run that wrote them (``run_id`` in controller.json): pruning to
``keep_last`` only ever deletes the writing run's older checkpoints, never another run's and never
the one just committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

MARKER = "COMPLETE"
MANIFEST = "MANIFEST.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: incomplete, unreadable, changed since it was written."""


class CheckpointManager:
    """Checkpoints under ``<run_dir>/checkpoints``; ``run_id``: the run whose checkpoints this
    manager writes and prunes (None: every checkpoint counts as its own, for reading only)."""

    def __init__(self, run_dir: str | Path, keep_last: int, run_id: str | None = None):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.run_id = run_id

    def begin(self, step: int) -> Path:
        """A fresh temporary folder for a checkpoint at ``step``."""
        tmp = self.root / f"step_{step:06d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, controller_state: dict) -> Path:
        """Controller state, manifest and marker into ``tmp``, everything fsynced, then the rename."""
        (tmp / "controller.json").write_text(json.dumps({**controller_state, "run_id": self.run_id}, indent=1))
        (tmp / MANIFEST).write_text(json.dumps(manifest(tmp), indent=1))
        (tmp / MARKER).write_text("ok\n")
        fsync_tree(tmp)
        final = tmp.with_suffix("")
        if final.exists():  # a re-run of the same step replaces it only once the new one is whole
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync_dir(self.root)
        self._prune(keep=final)
        return final

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("step_*") if p.is_dir() and (p / MARKER).is_file()
                      and not p.name.endswith(".tmp"))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def owned(self) -> list[Path]:
        """Complete checkpoints written by this manager's run, oldest first."""
        return [p for p in self.complete() if _writer(p) == self.run_id]

    def _prune(self, keep: Path) -> None:
        mine = [p for p in self.owned() if p != keep]
        for old in mine[:max(len(mine) - (self.keep_last - 1), 0)]:
            shutil.rmtree(old)
        for tmp in self.root.glob("step_*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)


def _writer(path: Path) -> str | None:
    try:
        return json.loads((path / "controller.json").read_text()).get("run_id")
    except (OSError, ValueError):
        return None  # unreadable: not provably ours, so never pruned


def manifest(folder: Path) -> dict[str, list]:
    """{relative path: [bytes, sha256]} of every file under ``folder`` (the manifest and marker aside)."""
    out = {}
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        if f.is_file() and rel not in (MANIFEST, MARKER):
            with f.open("rb") as fh:
                out[rel] = [f.stat().st_size, hashlib.file_digest(fh, "sha256").hexdigest()]
    return out


def verify(path: Path) -> None:
    """Raises CheckpointError naming the first file missing, added, resized or changed since the
    checkpoint was committed. A checkpoint from before manifests were written passes unchecked."""
    listed = path / MANIFEST
    if not listed.is_file():
        return
    try:
        expected = json.loads(listed.read_text())
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is not valid JSON ({e})") from None
    found = {f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file()} - {MANIFEST, MARKER}
    added = sorted(found - set(expected))
    if added:
        raise CheckpointError(f"checkpoint {path}: file {added[0]} is not in its {MANIFEST} (added after the save)")
    for rel, (size, digest) in expected.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path}: file {rel} is missing")
        if f.stat().st_size != size:
            raise CheckpointError(f"checkpoint {path}: file {rel} is {f.stat().st_size} bytes, {size} when saved")
        with f.open("rb") as fh:
            if hashlib.file_digest(fh, "sha256").hexdigest() != digest:
                raise CheckpointError(f"checkpoint {path}: file {rel} changed since the save (SHA-256 differs)")


def fsync_tree(folder: Path) -> None:
    """Every file and folder under ``folder`` to disk, so the rename that commits it never lands first."""
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in [folder, *(d for d in folder.rglob("*") if d.is_dir())]:
        _fsync_dir(d)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resolve_resume(resume: str, run_dir: str | Path) -> Path | None:
    """'none' → None; 'auto' → the newest complete checkpoint of the run (or None); else a path,
    which must be a complete checkpoint."""
    if resume == "none":
        return None
    if resume == "auto":
        return CheckpointManager(run_dir, 1).latest()
    path = Path(resume)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"trainer.resume={resume}: not a complete checkpoint (no {MARKER} file in it)")
    return path


def read_controller_state(path: Path) -> dict:
    try:
        state = json.loads((path / "controller.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: controller.json cannot be read ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"checkpoint {path}: controller.json has no integer 'step'")
    return state


# -- RNG state as plain JSON (so nothing is unpickled on load)
def rng_state() -> dict:
    py = random.getstate()
    return {"python": [py[0], list(py[1]), py[2]], "numpy": _np_state(),
            "torch": torch.get_rng_state().tolist()}


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _np_state() -> list:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def safe_checkpoint_engine(config):
    """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True``: tensors and plain
    containers only, never arbitrary pickled objects, even from a checkpoint someone handed you."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    # The few plain DeepSpeed types its ZeRO optimizer states contain (an enum, loss-scaler records,
    # a two-int dataclass; none has __setstate__): rebuilding them sets attributes and runs no code.
    allowed = [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)

    return WeightsOnlyCheckpointEngine(config)
