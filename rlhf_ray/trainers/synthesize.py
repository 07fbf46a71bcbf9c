"""``rlhf-ray synthesize``: synthetic preference pairs (or distilled SFT rows) from one or more models.

    the task's training prompts → each model of synthesize.models samples synthesize.samples_per_prompt
    candidates on rollout engines of its own (its tokenizer, its chat template) → the reward role scores
    every candidate from its text (a reward model re-tokenizes for itself; a rule or a service reads text)
    → pairs (rlhf_ray.data.synthetic) → JSONL that offline.train_file of the DPO family (or SFT) reads

Candidates are sampled and scored synthesize.chunk_prompts prompts at a time and each chunk is kept in
<out_file>.candidates/ before the next (rlhf_ray.data.candidates): a failure late in a long generation
keeps what was done, and a rerun with the same --out continues after the last whole chunk.

Only the reward actors and, one model at a time, that model's engines run: models never share memory.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from collections import Counter
from pathlib import Path

import torch

from rlhf_ray.cluster.dispatch import generate_balanced
from rlhf_ray.config import Config
from rlhf_ray.data.candidates import CandidateFile
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


def model_candidates(cfg: Config, reward, name: str, path: str, rows: list[dict], seed: int,
                     store: CandidateFile, side_name: str) -> list[list[Candidate]]:
    """synthesize.samples_per_prompt scored candidates per row from the model at ``path``, sampled and
    scored synthesize.chunk_prompts prompts at a time, each chunk on disk (``store``) before the next:
    a rerun continues after the last whole chunk. The candidate at position i of the model's whole
    call is sampled with seed + i (chunking changes no sample)."""
    k, chunk = cfg.synthesize.samples_per_prompt, cfg.synthesize.chunk_prompts
    done = store.done()
    if done:
        print(f"[synthesize] {name}: the candidates of {len(done)} of {len(rows)} prompts kept from {store.path}"
              + ("" if len(done) == len(rows) else "; continuing"), flush=True)
    if len(done) == len(rows):
        return done
    tok = load_tokenizer(path)
    prompts = encode_prompts(tok, rows, cfg, f"training prompts ({path})", system_prompt=run_system_prompt(cfg),
                             drop_long=False).ids
    side = Sidecar.start(cfg, "rollout", Rollout, path, side_name)
    try:
        for start in range(len(done), len(rows), chunk):
            part = rows[start:start + chunk]
            out = generate_balanced(side.group.actors, repeat_prompts(prompts[start:start + chunk], k), greedy=False,
                                    seed=seed + start * k, timeout_s=cfg.trainer.call_timeout_s)
            texts = tok.batch_decode(out["response_ids"], skip_special_tokens=True)
            scores = score_texts(reward, repeat_prompts(part, k), texts, f"scores of {name}'s candidates",
                                 [f == "stop" for f in out["finish_reasons"]]).tolist()
            made = [[Candidate(texts[j * k + c], scores[j * k + c], name, seed + (start + j) * k + c) for c in range(k)]
                    for j in range(len(part))]
            store.append(start, made)
            done += made
    finally:
        side.shutdown()
    return done


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
    parts = out_path.with_name(out_path.name + ".candidates")  # each model's candidates, kept as they are made
    ctl = OnlineController(inputs, roles=("reward",))
    try:
        rows, k = ctl.train_set.rows, sc.samples_per_prompt
        candidates: list[list[Candidate]] = [[] for _ in rows]
        for i, (name, path) in enumerate(zip(names, paths)):
            seed = cfg.trainer.seed + i * MODEL_SEED_STRIDE
            store = CandidateFile(parts / f"model{i}.jsonl", name, k, seed, [r["prompt"] for r in rows], scorer_name(cfg))
            got = model_candidates(cfg, ctl.reward, name, path, rows, seed, store, f"{ctl.run_id}-model{i}")
            for j, cands in enumerate(got):
                candidates[j] += cands
    finally:
        ctl.shutdown()
    prompts, scorer = [r["prompt"] for r in rows], scorer_name(cfg)
    if sc.mode == "distill":
        out_rows = distill_rows(prompts, candidates, scorer)
    else:
        table = torch.tensor([[c.score for c in cands] for cands in candidates])
        out_rows = pair_rows(prompts, candidates, choose_pairs(table, sc.pairing, sc.min_margin, cfg.trainer.seed), scorer)
    path, tmp = out_path, out_path.with_name(out_path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in out_rows))
    os.replace(tmp, path)  # the rows whole, or the file as it was
    shutil.rmtree(parts, ignore_errors=True)  # every candidate is in the rows now
    summary = {"file": str(path), "mode": sc.mode, "prompts": len(rows), "rows": len(out_rows),
               "candidates_per_prompt": len(candidates[0]), "models": dict(zip(names, paths)), "scorer": scorer,
               "score_mean": statistics.fmean(c.score for cands in candidates for c in cands)}
    if sc.mode == "pairs" and out_rows:
        summary["margin_mean"] = statistics.fmean(r["margin"] for r in out_rows)
        summary["chosen_by_model"] = dict(Counter(r["chosen_model"] for r in out_rows))
        summary["rejected_by_model"] = dict(Counter(r["rejected_model"] for r in out_rows))
    (ctl.run_dir / "synthesize_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
