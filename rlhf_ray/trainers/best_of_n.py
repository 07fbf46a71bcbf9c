"""Best-of-n inference: n sampled responses per prompt, scored by the reward role; the best is kept.

No training: only the rollout and reward roles start (and environment actors with env.*). Writes ``raft.best_of_n_file`` into the run
directory, one JSON object per prompt: prompt, answer, the best response, its score and all n scores.
With a rule reward (1 = correct) the mean best score is best-of-n accuracy (pass@n for a 0/1 verifier)
and the first sample's mean is plain sampling accuracy, so the two show what the reranking buys.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhf_ray.config import Config
from rlhf_ray.runs.rundir import check_output_file
from rlhf_ray.trainers.inputs import PromptInputs, repeat_prompts
from rlhf_ray.trainers.online import OnlineController, inference_roles


def best_rows(scores: torch.Tensor, group_size: int) -> list[int]:
    """Row of the best sample of each group of ``group_size`` consecutive rows (the first on ties)."""
    groups = scores.reshape(-1, group_size)
    first_max = (groups == groups.max(dim=1, keepdim=True).values).float().argmax(dim=1)
    return (torch.arange(len(groups)) * group_size + first_max).tolist()


def run_best_of_n(cfg: Config) -> dict:
    """Samples, scores and writes the chosen responses; returns a summary of the scores."""
    path = check_output_file(Path(cfg.trainer.run_dir) / cfg.raft.best_of_n_file, "raft.best_of_n_file")
    ctl = OnlineController(PromptInputs.load(cfg), roles=inference_roles(cfg))
    try:
        prompts = ctl.eval_set if cfg.raft.best_of_n_split == "eval" else ctl.train_set
        n = cfg.raft.samples_per_prompt
        rows = repeat_prompts(list(range(len(prompts.ids))), n)
        gen, _, scores = ctl.generate_and_score(prompts, rows, seed=cfg.trainer.seed)
    finally:
        ctl.shutdown()
    best = best_rows(scores, n)
    groups = scores.reshape(-1, n)
    with path.open("w") as f:
        for p, row in enumerate(best):
            src = prompts.rows[p]
            f.write(json.dumps({"prompt": src["prompt"], "answer": src["answer"], "response": gen["texts"][row],
                                "score": float(scores[row]), "scores": groups[p].tolist()}) + "\n")
    summary = {"file": str(path), "prompts": len(best), "samples_per_prompt": n, "split": cfg.raft.best_of_n_split,
               "best_mean": float(groups.max(dim=1).values.mean()), "first_mean": float(groups[:, 0].mean()),
               "sample_mean": float(groups.mean())}
    (ctl.run_dir / "best_of_n_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
