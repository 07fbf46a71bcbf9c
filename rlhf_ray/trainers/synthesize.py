"""``rlhf-ray synthesize``: synthetic preference pairs (or distilled SFT rows) from one or more models.

    the task's training prompts → each model of synthesize.models samples synthesize.samples_per_prompt
    candidates on rollout engines of its own (its tokenizer, its chat template) → the reward role scores
    every candidate from its text (a reward model re-tokenizes for itself; a rule or a service reads text)
    → pairs (rlhf_ray.data.synthetic) → JSONL that offline.train_file of the DPO family (or SFT) reads

Only the reward actors and, one model at a time, that model's engines run: models never share memory.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import torch

from rlhf_ray.cluster.dispatch import generate_balanced
from rlhf_ray.config import Config
from rlhf_ray.data.prompts import encode_prompts, run_system_prompt
from rlhf_ray.data.synthetic import Candidate, choose_pairs, distill_rows, pair_rows
from rlhf_ray.models.loading import load_tokenizer, resolve_model_path
from rlhf_ray.planning.checks_models import CAUSAL_LM, check_architecture
from rlhf_ray.roles import Rollout
from rlhf_ray.runs.rundir import check_output_file
from rlhf_ray.trainers.inputs import PromptInputs, repeat_prompts
from rlhf_ray.trainers.judges import score_texts
from rlhf_ray.trainers.online import OnlineController
from rlhf_ray.trainers.sidecar import Sidecar

MODEL_SEED_STRIDE = 1_000_003  # model i samples with seeds trainer.seed + i × stride + its sample index


def sample_candidates(cfg: Config, model_path: str, rows: list[dict], n: int, seed: int, name: str) -> dict:
    """``n`` sampled answers per row from the model at ``model_path`` (grouped per row), with each one's seed."""
    tok = load_tokenizer(model_path)
    prompts = encode_prompts(tok, rows, cfg, f"training prompts ({model_path})", system_prompt=run_system_prompt(cfg),
                             drop_long=False)
    side = Sidecar.start(cfg, "rollout", Rollout, model_path, name)
    try:
        out = generate_balanced(side.group.actors, repeat_prompts(prompts.ids, n), greedy=False, seed=seed,
                                timeout_s=cfg.trainer.call_timeout_s)
    finally:
        side.shutdown()
    # Rollout.generate seeds the request at position i of the whole call with seed + i.
    return {"texts": tok.batch_decode(out["response_ids"], skip_special_tokens=True),
            "seeds": [seed + i for i in range(len(out["response_ids"]))],
            "ended": [f == "stop" for f in out["finish_reasons"]]}


def scorer_name(cfg: Config) -> str:
    rc = cfg.reward
    return {"rule": f"rule:{rc.function}", "model": f"reward_model:{rc.model_path}", "http": f"http:{rc.url}"}[rc.kind]


def output_path(cfg: Config) -> Path:
    """synthesize.out_file: absolute, or inside trainer.run_dir."""
    out = Path(cfg.synthesize.out_file)
    return out if out.is_absolute() else Path(cfg.trainer.run_dir) / out


def run_synthesize(cfg: Config) -> dict:
    """Samples, scores and writes the rows; returns a summary (also synthesize_summary.json in the run directory)."""
    sc = cfg.synthesize
    if cfg.reward.kind not in ("rule", "model", "http"):
        raise ValueError(f"synthesize scores candidates with the reward role: reward.kind={cfg.reward.kind} "
                         "cannot (use rule, model or http)")
    if sc.mode == "pairs" and sc.samples_per_prompt * max(1, len(sc.models)) < 2:
        raise ValueError("synthesize.mode=pairs needs at least 2 candidates per prompt: raise synthesize.samples_per_prompt")
    out_path = check_output_file(output_path(cfg), "synthesize.out_file")  # before a single sample is drawn
    inputs = PromptInputs.load(cfg)
    names = sc.models or [cfg.model.path]
    paths = [resolve_model_path(m) for m in names]  # every folder checked before any actor starts
    for i, path in enumerate(paths):
        check_architecture(path, f"synthesize.models[{i}]" if sc.models else "model.path", "synthesize candidate",
                           CAUSAL_LM)
    ctl = OnlineController(inputs, roles=("reward",))
    try:
        rows, k = ctl.train_set.rows, sc.samples_per_prompt
        candidates: list[list[Candidate]] = [[] for _ in rows]
        for i, (name, path) in enumerate(zip(names, paths)):
            got = sample_candidates(cfg, path, rows, k, cfg.trainer.seed + i * MODEL_SEED_STRIDE, f"{ctl.run_id}-model{i}")
            scores = score_texts(ctl.reward, repeat_prompts(rows, k), got["texts"], f"scores of {name}'s candidates",
                                 got["ended"])
            for j, (text, s, seed) in enumerate(zip(got["texts"], scores.tolist(), got["seeds"])):
                candidates[j // k].append(Candidate(text, s, name, seed))
    finally:
        ctl.shutdown()
    prompts, scorer = [r["prompt"] for r in rows], scorer_name(cfg)
    if sc.mode == "distill":
        out_rows = distill_rows(prompts, candidates, scorer)
    else:
        table = torch.tensor([[c.score for c in cands] for cands in candidates])
        out_rows = pair_rows(prompts, candidates, choose_pairs(table, sc.pairing, sc.min_margin, cfg.trainer.seed), scorer)
    path = out_path
    with path.open("w") as f:
        for row in out_rows:
            f.write(json.dumps(row) + "\n")
    summary = {"file": str(path), "mode": sc.mode, "prompts": len(rows), "rows": len(out_rows),
               "candidates_per_prompt": len(candidates[0]), "models": dict(zip(names, paths)), "scorer": scorer,
               "score_mean": statistics.fmean(c.score for cands in candidates for c in cands)}
    if sc.mode == "pairs" and out_rows:
        summary["margin_mean"] = statistics.fmean(r["margin"] for r in out_rows)
        summary["chosen_by_model"] = dict(Counter(r["chosen_model"] for r in out_rows))
        summary["rejected_by_model"] = dict(Counter(r["rejected_model"] for r in out_rows))
    (ctl.run_dir / "synthesize_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
