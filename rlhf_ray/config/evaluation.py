"""Config sections of judged evaluation and synthetic data (part of the one schema, rlhf_ray.config).

``trainer.eval``: the policy against a baseline, judged (rlhf_ray.trainers.compare). ``synthesize``:
candidates from one or more models, scored, turned into preference pairs or SFT rows
(rlhf_ray.trainers.synthesize). ``iterative``: rounds of synthesize → DPO on the policy's own samples.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rlhf_ray.config.base import Strict

# AlpacaEval-style pairwise prompt, answered by one letter; {question}, {answer_a}, {answer_b} are filled in.
PAIRWISE_TEMPLATE = (
    "Which response answers the user's request better: more helpful, correct and harmless?\n\n"
    "[Request]\n{question}\n\n[Response A]\n{answer_a}\n\n[Response B]\n{answer_b}\n\n"
    "Answer with the letter of the better response, A or B, and nothing else.")


class CompareConfig(Strict):
    baseline: str | None = Field(None, description=(
        "The answers the policy's are judged against: 'reference' (the reference model: reference.model_path or the "
        "initial policy), an HF folder, or 'smollm2'; empty = no judged comparison (held-out accuracy only)."))
    every: int = Field(0, ge=0, description=(
        "Training runs: the judged comparison every K steps (and at step 0 and the end); 0 = never while training. "
        "`rlhf-ray eval` runs it once whenever baseline is set."))
    judge: Literal["reward", "llm"] = Field("reward", description=(
        "reward: a reward model scores both answers (win = higher score); llm: an LLM on its own rollout engines "
        "reads both answers, in both orders, and names the better one."))
    judge_model_path: str | None = Field(None, description=(
        "The judge's HF folder: judge=llm needs one; judge=reward defaults to reward.model_path. A tokenizer "
        "other than the policy's is fine: texts are re-tokenized for it."))
    judge_template: str = Field(PAIRWISE_TEMPLATE, description=(
        "judge=llm: the pairwise prompt (a user message in the judge's chat template) with {question}, {answer_a} "
        "and {answer_b}; the judge's next token decides."))
    judge_choices: tuple[str, str] = Field(("A", "B"), description=(
        "judge=llm: the two answers' labels; each must be one token of the judge's tokenizer. The preference is "
        "P(first label) / (P(first) + P(second)) at the judge's next token."))
    judge_max_prompt_tokens: int = Field(1024, ge=16, description="judge=llm: longest judge prompt; longer ones have both answers cut equally.")
    bootstrap_samples: int = Field(1000, ge=100, description="Bootstrap resamples of the prompts for the win rates' intervals.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Level of the bootstrap intervals.")

    @field_validator("judge_template")
    @classmethod
    def _template_fields(cls, v: str) -> str:
        missing = [f for f in ("{question}", "{answer_a}", "{answer_b}") if f not in v]
        if missing:
            raise ValueError(f"trainer.eval.judge_template lacks {', '.join(missing)}")
        return v

    @model_validator(mode="after")
    def _llm_judge_has_model(self) -> "CompareConfig":
        if self.judge == "llm" and self.baseline and not self.judge_model_path:
            raise ValueError("trainer.eval.judge=llm needs trainer.eval.judge_model_path (the judge's HF folder)")
        if self.judge_choices[0] == self.judge_choices[1]:
            raise ValueError(f"trainer.eval.judge_choices={list(self.judge_choices)}: the two labels must differ")
        return self


class SynthesizeConfig(Strict):
    models: list[str] = Field(default_factory=list, description=(
        "HF folders (or 'smollm2', 'gemma3') whose samples are the candidates, samples_per_prompt from each; "
        "empty = the policy (model.path) alone."))
    samples_per_prompt: int = Field(4, ge=1, description="Candidates each model samples per prompt (and per prompt per round of iterative DPO).")
    mode: Literal["pairs", "distill"] = Field("pairs", description=(
        "pairs: chosen/rejected rows for the DPO family; distill: the best candidate of each prompt as an SFT row."))
    pairing: Literal["best_worst", "best_random"] = Field("best_worst", description=(
        "Which candidates make a pair: the best and the worst scored, or the best and a seeded random other one."))
    min_margin: float = Field(0.0, ge=0, description="Pairs whose chosen score exceeds the rejected by less than this are dropped.")
    out_file: str = Field("synthetic.jsonl", description="Output JSONL, inside trainer.run_dir unless absolute.")
    chunk_prompts: int = Field(64, ge=1, description=(
        "Prompts sampled and scored at a time; each chunk's candidates are kept in <out_file>.candidates/ before "
        "the next, so a rerun with the same out_file continues after the last whole chunk."))


class IterativeConfig(Strict):
    rounds: int = Field(3, ge=1, description="iterative_dpo: rounds of sample → score → pair → DPO → weight sync.")
    prompts_per_round: int = Field(64, ge=1, description="iterative_dpo: training prompts sampled per round.")
    epochs: int = Field(1, ge=1, description="iterative_dpo: DPO passes over each round's pairs.")
