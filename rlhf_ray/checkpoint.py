"""Checkpoints: written whole or not at all, the last k kept, loaded without unpickling code.

Layout of ``<run_dir>/checkpoints/step_000010/``::

    controller.json      step, prompt-sampler position, KL-controller state, RNG states, weights version
                         (each loop writes what it needs: offline ones add past held-out metrics)
    config.yaml          the resolved config of the run that wrote it
    learner/ critic/     DeepSpeed states (weights, optimizer, every rank's partition) + each rank's RNG
                         (reward/ for reward-model training)
    policy_hf/           the policy as a Hugging Face folder (safetensors), loadable by from_pretrained and vLLM
                         (reward_hf/ for reward-model training)
    COMPLETE             written last

A checkpoint is assembled in ``step_000010.tmp`` and renamed when complete, so a crash during a save
leaves the previous checkpoint whole; `latest()` never returns a folder without COMPLETE.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

MARKER = "COMPLETE"


class CheckpointManager:
    def __init__(self, run_dir: str | Path, keep_last: int):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def begin(self, step: int) -> Path:
        """A fresh temporary folder for a checkpoint at ``step``."""
        tmp = self.root / f"step_{step:06d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, controller_state: dict) -> Path:
        (tmp / "controller.json").write_text(json.dumps(controller_state, indent=1))
        (tmp / MARKER).write_text("ok\n")
        final = tmp.with_suffix("")
        if final.exists():  # a re-run of the same step replaces it only once the new one is whole
            shutil.rmtree(final)
        tmp.rename(final)
        self._prune()
        return final

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("step_*") if p.is_dir() and (p / MARKER).is_file()
                      and not p.name.endswith(".tmp"))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def _prune(self) -> None:
        for old in self.complete()[:-self.keep_last]:
            shutil.rmtree(old)
        for tmp in self.root.glob("step_*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)


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
    return json.loads((path / "controller.json").read_text())


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
