"""The three DPO contenders of bench_dpo.py; each runs in a fresh process of its own:

    python benchmarks/dpo_contenders.py {plain,rlhf_ray,trl} SPEC.json RESULT.json

SPEC (written by bench_dpo.py) holds the model folder, the settings and every step's pairs as
rlhf_ray's token ids, so all contenders train on the same ids in the same order. RESULT gets the
seconds of every optimiser step, the loss of every step and the reference precompute seconds.

`trl` runs under .venv-bench's python and imports only torch, datasets and trl.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# ------------------------------------------------------------------ plain: one process, no framework
def run_plain(spec: dict) -> dict:
    """Policy and frozen reference in this process, torch AdamW, one optimiser step per batch.

    It reuses rlhf_ray's forward (`sequence_logprobs`, which runs the LM head on response positions
    only), its batch layout and its loss: the ratio against rlhf_ray then measures what the system
    adds (actors, DeepSpeed, transfers), not a modelling difference."""
    import torch

    from rlhf_ray.algos.offline import preference_objective
    from rlhf_ray.config import OfflineConfig
    from rlhf_ray.data import Unit, collate
    from rlhf_ray.data.batch import micro_batches
    from rlhf_ray.models.forward import sequence_logprobs
    from rlhf_ray.models.loading import load_causal_lm, load_tokenizer

    set_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    pad = load_tokenizer(spec["model"]).pad_token_id
    policy = load_causal_lm(spec["model"]).train()
    reference = load_causal_lm(spec["model"]).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=spec["lr"], betas=tuple(spec["adam_betas"]), weight_decay=0.0)
    oc = OfflineConfig(beta=spec["beta"])
    rows = 2 * spec["micro"]  # a pair is two adjacent rows (chosen, rejected)
    batches = [[Unit(u["prompt"], [u["chosen"], u["rejected"]], str(u["index"])) for u in b] for b in spec["batches"]]

    @torch.no_grad()
    def reference_logps(batch) -> torch.Tensor:
        return torch.cat([sequence_logprobs(reference, mb)[:, 0] for mb in micro_batches(batch, rows)])

    cache, precompute_s = {}, None
    if spec["reference"] == "precompute":
        start = time.perf_counter()
        for units in batches:
            for u, logps in zip(units, reference_logps(collate(units, pad)).view(-1, 2)):
                cache[u.where] = logps
        precompute_s = time.perf_counter() - start

    step_s, losses = [], []
    for units in batches:
        start = time.perf_counter()
        batch = collate(units, pad)
        batch["ref_logps"] = torch.cat([cache[u.where] for u in units]) if cache else reference_logps(batch)
        opt.zero_grad(set_to_none=True)
        n_micro, loss_sum = len(units) // spec["micro"], 0.0
        for mb in micro_batches(batch, rows):
            logps = sequence_logprobs(policy, mb)[:, 0]
            loss, _ = preference_objective("dpo", oc, logps, mb["response_lengths"], mb["ref_logps"])
            (loss / n_micro).backward()  # as DeepSpeed and TRL: the mean over the step's micro-batches
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), spec["max_grad_norm"])
        opt.step()
        step_s.append(time.perf_counter() - start)
        losses.append(loss_sum / n_micro)
    return {"step_s": step_s, "loss": losses, "ref_precompute_s": precompute_s}


# ------------------------------------------------------------------ rlhf_ray: the real OfflineTrainer
def run_rlhf_ray(spec: dict) -> dict:
    """`OfflineTrainer` through a local Ray, as `rlhf-ray train` runs it. Step seconds come from its
    metrics.jsonl (`time/step`: batch + reference + learner update, as the plain loop times)."""
    import ray

    from rlhf_ray.config.loading import load_config
    from rlhf_ray.trainers.offline import OfflineTrainer

    set_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix="bench_dpo_") as run_dir:
        cfg = load_config(overrides=[*spec["rlhf_ray_overrides"], f"trainer.run_dir={run_dir}"])
        trainer = OfflineTrainer.from_config(cfg)
        try:
            check_same_units(trainer, spec)
            trainer.fit()
        finally:
            trainer.shutdown()
            ray.shutdown()
        with open(f"{run_dir}/metrics.jsonl") as f:
            rows = [json.loads(line) for line in f]
    steps = [r for r in rows if r["step"] >= 1]
    keys = ("time/batch", "time/reference", "time/update", "learner/compute_s")
    detail = {k: sum(r.get(k, 0.0) for r in steps) / len(steps) for k in keys}
    return {"step_s": [r["time/step"] for r in steps], "loss": [r.get("learner/loss") for r in steps],
            "ref_precompute_s": rows[0].get("time/reference") if spec["reference"] == "precompute" else None,
            "detail": {k: v for k, v in detail.items() if v}}


def check_same_units(trainer, spec: dict) -> None:
    """The trainer tokenised the file itself: its units and batch order must be the spec's."""
    from rlhf_ray.data.prompts import PromptSampler

    sampler = PromptSampler(len(trainer.train.units), trainer.cfg.trainer.seed)
    for b in spec["batches"]:
        for i, u in zip(sampler.next(len(b)), b):
            got = trainer.train.units[i]
            if i != u["index"] or [got.prompt, *got.responses] != [u["prompt"], u["chosen"], u["rejected"]]:
                raise RuntimeError(f"rlhf_ray's batches differ from the benchmark's at unit {i}")


# ------------------------------------------------------------------ trl: DPOTrainer
def run_trl(spec: dict) -> dict:
    """TRL's DPOTrainer on the spec's token ids, in the spec's order (sequential sampler), fp32,
    no gradient checkpointing (TRL turns it on by default; rlhf_ray and the plain loop do not),
    no eval, no saving. Step seconds are the gaps between TrainerCallback.on_step_end calls, so they
    include TRL's per-step logging (kept on for the loss column: a few dict operations a step)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    set_threads(spec["threads"])
    precompute = {"s": 0.0}

    class PreTokenized(DPOTrainer):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset  # already rlhf_ray's ids: tokenising the text again would give other ids

        def _precompute_ref_logps(self, *args, **kwargs):
            start = time.perf_counter()
            out = super()._precompute_ref_logps(*args, **kwargs)
            precompute["s"] += time.perf_counter() - start
            return out

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks, self.losses = [], []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    rows = [{"prompt_ids": u["prompt"], "chosen_ids": u["chosen"], "rejected_ids": u["rejected"]}
            for b in spec["batches"] for u in b]
    pairs, micro = len(spec["batches"][0]), spec["micro"]
    out_dir = tempfile.mkdtemp(prefix="bench_dpo_trl_")
    args = DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=micro, gradient_accumulation_steps=pairs // micro,
        max_steps=len(spec["batches"]), learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=spec["adam_betas"][0], adam_beta2=spec["adam_betas"][1], weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=spec["max_grad_norm"], beta=spec["beta"], loss_type=["sigmoid"], max_length=spec["max_length"],
        precompute_ref_log_probs=spec["reference"] == "precompute", gradient_checkpointing=False, bf16=False,
        fp16=False, use_cpu=True, train_sampling_strategy="sequential", dataloader_num_workers=0, seed=spec["seed"],
        eval_strategy="no", save_strategy="no", report_to="none", logging_strategy="steps", logging_steps=1,
        disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    clock = Clock()
    trainer = PreTokenized(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                           processing_class=tokenizer, callbacks=[clock])
    set_threads(spec["threads"])  # in case accelerate's setup changed it
    trainer.train()
    step_s = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    return {"step_s": step_s, "loss": clock.losses, "ref_precompute_s": precompute["s"] if args.precompute_ref_log_probs
            else None, "versions": {"trl": __import__("trl").__version__}}


# plain_keep_freed: the plain loop, started by bench_dpo.py with rlhf_ray's CPU malloc settings.
CONTENDERS = {"plain": run_plain, "plain_keep_freed": run_plain, "rlhf_ray": run_rlhf_ray, "trl": run_trl}

if __name__ == "__main__":
    name, spec_path, result_path = sys.argv[1:4]
    with open(spec_path) as f:
        result = CONTENDERS[name](json.load(f))
    with open(result_path, "w") as f:
        json.dump(result, f)
