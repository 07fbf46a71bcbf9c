"""A judged comparison: the policy's answers against a baseline's, on the held-out prompts.

    the policy's greedy answers (the run's engines, from its held-out evaluation)
    → the baseline's greedy answers (engines on the baseline's folder, once per run)
    → the judge (trainer.eval.judge, rlhf_ray.trainers.judges): preference for the policy per prompt
    → win rate and its bootstrap interval, order bias (LLM judge), length-controlled win rate,
      answer lengths, task accuracy of both sides (rule rewards) (rlhf_ray.algos.judging)
    → a console table; compare_stepNNNNN.{json,md,jsonl,png} in the run directory

``rlhf-ray eval`` runs it once; a training run every trainer.eval.every steps, its metrics logged
as eval/compare/* beside the other held-out metrics.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch

from rlhf_ray.algos.judging import bootstrap_interval, bootstrap_mean_interval, length_controlled_win_rate, order_corrected
from rlhf_ray.cluster.dispatch import generate_balanced
from rlhf_ray.config import Config
from rlhf_ray.data.prompts import encode_prompts, run_system_prompt
from rlhf_ray.models.loading import load_tokenizer, resolve_model_path
from rlhf_ray.planning.checks_models import CAUSAL_LM, CLASSIFIER, check_architecture
from rlhf_ray.rewards.functions import import_reward_function
from rlhf_ray.roles import Rollout
from rlhf_ray.trainers.judges import choice_ids, make_judge
from rlhf_ray.trainers.sidecar import Sidecar

PREFIX = "eval/compare/"


def baseline_path(cfg: Config, initial_policy: str) -> str:
    """trainer.eval.baseline as a folder: 'reference' is the reference model (reference.model_path, else the
    policy the run started from)."""
    b = cfg.trainer.eval.baseline
    if b == "reference":
        return resolve_model_path(cfg.reference.model_path) if cfg.reference.model_path else initial_policy
    return resolve_model_path(b)


def judge_path(cfg: Config) -> str:
    ec = cfg.trainer.eval
    path = ec.judge_model_path or (cfg.reward.model_path if ec.judge == "reward" else None)
    if not path:
        raise ValueError("trainer.eval.judge=reward needs a reward model: set trainer.eval.judge_model_path "
                         "(or reward.model_path)")
    return resolve_model_path(path)


class Comparison:
    """Owned by a controller with rollout engines: the baseline's answers (generated once) and the judge
    (started at the first comparison, kept until ``shutdown``)."""

    def __init__(self, cfg: Config, initial_policy: str):
        """Checks what it can before any actor starts: the baseline's and the judge's folders, the rule."""
        self.cfg, self.run_dir, self.run_id = cfg, Path(cfg.trainer.run_dir), "compare"
        self.initial_policy = initial_policy
        self.baseline_path = baseline_path(cfg, initial_policy)
        self.judge_path = judge_path(cfg)
        ec = cfg.trainer.eval
        check_architecture(self.baseline_path, "trainer.eval.baseline", "baseline", CAUSAL_LM)
        check_architecture(self.judge_path, "trainer.eval.judge_model_path" if ec.judge_model_path else "reward.model_path",
                           f"judge (trainer.eval.judge={ec.judge})", CAUSAL_LM if ec.judge == "llm" else CLASSIFIER)
        if cfg.trainer.eval.judge == "llm":
            choice_ids(load_tokenizer(self.judge_path), cfg.trainer.eval.judge_choices)
        self.accuracy_fn = import_reward_function(cfg.reward.function) if cfg.reward.kind == "rule" else None
        self.baseline: dict | None = None  # ``answers`` of the baseline
        self.judge = None

    def due(self, step: int, last_step: int | None) -> bool:
        """Standalone (``last_step`` None): always; in training: step 0, every trainer.eval.every steps, the last."""
        every = self.cfg.trainer.eval.every
        return last_step is None or bool(every) and (step in (0, last_step) or step % every == 0)

    def run(self, step: int, rows: list[dict], policy: dict, policy_is_initial: bool, run_id: str) -> dict[str, float]:
        """``policy``: the policy's greedy answers to ``rows`` (``answers``). ``policy_is_initial``:
        the engines still serve the initial policy, whose answers are then the baseline's when the
        baseline is that policy (no second engine). ``run_id`` names the actors it starts."""
        self.run_id = run_id
        if self.baseline is None:
            same = policy_is_initial and self.baseline_path == self.initial_policy
            self.baseline = dict(policy) if same else self.generate_baseline(rows)
        if self.judge is None:
            self.judge = make_judge(self.cfg, self.judge_path, self.run_id)
        verdict = self.judge.judge(rows, policy, self.baseline)
        metrics = self.statistics(verdict, rows, policy, self.baseline)
        self.write(step, metrics, rows, policy, verdict)
        return {PREFIX + k: v for k, v in metrics.items()}

    def generate_baseline(self, rows: list[dict]) -> dict:
        """The baseline's greedy answers, on engines of its own started for this and stopped after; its
        prompts in its own chat template and tokenizer."""
        tok = load_tokenizer(self.baseline_path)
        prompts = encode_prompts(tok, rows, self.cfg, "held-out prompts (baseline)", system_prompt=run_system_prompt(self.cfg),
                                 drop_long=False)
        side = Sidecar.start(self.cfg, "rollout", Rollout, self.baseline_path, f"{self.run_id}-baseline")
        try:
            out = generate_balanced(side.group.actors, prompts.ids, greedy=True, seed=0,
                                    timeout_s=self.cfg.trainer.call_timeout_s)
        finally:
            side.shutdown()
        return answers(tok.batch_decode(out["response_ids"], skip_special_tokens=True), out)

    def statistics(self, verdict: dict, rows: list[dict], policy: dict, baseline: dict) -> dict[str, float]:
        ec = self.cfg.trainer.eval
        boot = dict(samples=ec.bootstrap_samples, level=ec.confidence, seed=self.cfg.trainer.seed)
        pref = verdict["preference"].double()
        # Characters, not tokens: the two sides (and the judge) may not share a tokenizer.
        diff = torch.tensor([len(p) - len(b) for p, b in zip(policy["texts"], baseline["texts"])], dtype=torch.float64)
        m = {"win_rate": float(pref.mean()), "prompts": float(len(rows))}
        m["win_rate_low"], m["win_rate_high"] = bootstrap_mean_interval(pref, **boot)
        lc = length_controlled_win_rate(pref, diff)
        m["lc_win_rate"], m["length_effect"] = lc["lc_win_rate"], lc["length_effect"]
        m["lc_win_rate_low"], m["lc_win_rate_high"] = bootstrap_interval(
            lambda idx: length_controlled_win_rate(pref[idx], diff[idx])["lc_win_rate"], len(rows),
            **{**boot, "samples": min(ec.bootstrap_samples, 300)})
        if "policy_first" in verdict:
            order = order_corrected(verdict["policy_first"], verdict["policy_second"])
            m["inconsistency"], m["first_position"] = order["inconsistency"], order["first_position"]
        else:
            m["policy_score"] = float(verdict["policy_score"].mean())
            m["baseline_score"] = float(verdict["baseline_score"].mean())
        for side, answers in (("policy", policy), ("baseline", baseline)):
            m[f"{side}_tokens_mean"] = statistics.fmean(answers["tokens"])
            m[f"{side}_chars_mean"] = statistics.fmean(len(t) for t in answers["texts"])
            m[f"{side}_chars_median"] = float(statistics.median(len(t) for t in answers["texts"]))
        m["policy_longer"] = float((diff > 0).double().mean())
        references = [r.get("answer") or "" for r in rows]  # the task's reference answers (not ``answers`` below)
        if self.accuracy_fn is not None and any(references):
            prompts = [r["prompt"] for r in rows]
            for side, a in (("policy", policy), ("baseline", baseline)):
                m[f"{side}_accuracy"] = statistics.fmean(self.accuracy_fn(prompts, a["texts"], references))
        return m

    def write(self, step: int, metrics: dict, rows: list[dict], policy: dict, verdict: dict) -> None:
        stem = self.run_dir / f"compare_step{step:05d}"
        ec = self.cfg.trainer.eval
        about = {"step": step, "baseline": self.baseline_path, "judge": ec.judge, "judge_model": self.judge_path,
                 "confidence": ec.confidence, "bootstrap_samples": ec.bootstrap_samples, "seed": self.cfg.trainer.seed}
        Path(f"{stem}.json").write_text(json.dumps({**about, "metrics": metrics}, indent=1))
        with open(f"{stem}.jsonl", "w") as f:
            for i, row in enumerate(rows):
                rec = {"prompt": row["prompt"], "policy": policy["texts"][i], "baseline": self.baseline["texts"][i]}
                rec.update({k: float(v[i]) for k, v in verdict.items()})
                f.write(json.dumps(rec) + "\n")
        table = render_table(metrics, about)
        Path(f"{stem}.md").write_text(table + "\n")
        print(table, flush=True)
        plot_comparison(f"{stem}.png", metrics, policy, self.baseline, about)

    def shutdown(self) -> None:
        if self.judge is not None:
            self.judge.shutdown()
            self.judge = None


def answers(texts: list[str], generated: dict) -> dict:
    """One side's answers as a comparison reads them: texts, token counts, and which ended by themselves
    (a reward judge scores a cut answer without an end token, as rlhf_ray's reward models are trained)."""
    return {"texts": texts, "tokens": [len(r) for r in generated["response_ids"]],
            "ended": [f == "stop" for f in generated["finish_reasons"]]}


def render_table(m: dict, about: dict) -> str:
    level = f"{about['confidence']:.0%}"
    lines = [f"### step {about['step']}: policy vs {about['baseline']} (judge: {about['judge']} {about['judge_model']})",
             "", "| metric | value |", "| --- | --- |",
             f"| win rate | {m['win_rate']:.3f} [{m['win_rate_low']:.3f}, {m['win_rate_high']:.3f}] ({level} bootstrap) |",
             f"| length-controlled win rate | {m['lc_win_rate']:.3f} [{m['lc_win_rate_low']:.3f}, "
             f"{m['lc_win_rate_high']:.3f}] |",
             f"| length effect φ (logit per sd of length difference) | {m['length_effect']:+.3f} |"]
    if "inconsistency" in m:
        lines += [f"| order-flip inconsistency | {m['inconsistency']:.3f} |",
                  f"| first-position preference | {m['first_position']:.3f} |"]
    else:
        lines += [f"| mean reward: policy / baseline | {m['policy_score']:.3f} / {m['baseline_score']:.3f} |"]
    lines += [f"| answer tokens (mean): policy / baseline | {m['policy_tokens_mean']:.1f} / {m['baseline_tokens_mean']:.1f} |",
              f"| answer characters (median): policy / baseline | {m['policy_chars_median']:.0f} / "
              f"{m['baseline_chars_median']:.0f} |",
              f"| policy's answer longer | {m['policy_longer']:.3f} |"]
    if "policy_accuracy" in m:
        lines.append(f"| task accuracy: policy / baseline | {m['policy_accuracy']:.3f} / {m['baseline_accuracy']:.3f} |")
    lines.append(f"| prompts | {m['prompts']:.0f} |")
    return "\n".join(lines)


def plot_comparison(path: str, m: dict, policy: dict, baseline: dict, about: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    names, keys = ["win rate", "length-controlled"], ["win_rate", "lc_win_rate"]
    values = [m[k] for k in keys]
    errors = [[v - m[f"{k}_low"] for v, k in zip(values, keys)], [m[f"{k}_high"] - v for v, k in zip(values, keys)]]
    ax1.bar(names, values, yerr=errors, capsize=6, color=["tab:blue", "tab:green"])
    ax1.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax1.set_ylim(0, 1)
    ax1.set_title(f"policy vs baseline, step {about['step']} ({about['confidence']:.0%} intervals)")
    lengths = [[len(t) for t in side["texts"]] for side in (policy, baseline)]
    bins = max(5, int(math.sqrt(len(lengths[0]))))
    ax2.hist(lengths, bins=bins, label=["policy", "baseline"])
    ax2.set_xlabel("answer length (characters)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
