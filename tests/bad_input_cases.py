"""The bad-input battery: about a hundred wrong inputs a new user might give, each run through the
real command line (``rlhf_ray.cli.main``, in-process), each with the text its one-line error must hold.

tests/test_bad_inputs_battery.py asserts every case exits 2 with one line ``error: ...`` holding that
text, no traceback, and no Ray started; scripts/bad_inputs_battery.py prints the table of
docs/reliability.md from the same cases. Placeholders: {P} a tiny causal LM, {R} a tiny reward model,
{D} the folder ``prepare`` fills with broken files, {RUN} a fresh run directory for the case,
{NOT_A_DASHBOARD} a loopback HTTP server that is no Ray dashboard, {DASH_PORT} its (taken) port.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_ray.cli import main

BASE = ["model.path={P}", "model.max_prompt_tokens=64", "rollout.max_new_tokens=8", "task.n_train=64", "task.n_eval=8",
        "ppo.prompts_per_step_global=4", "ppo.samples_per_prompt=2", "ppo.minibatch_samples_global=8",
        "learner.micro_batch_samples_per_actor=4", "critic.micro_batch_samples_per_actor=4", "trainer.run_dir={RUN}",
        "logging.wandb_mode=disabled", "ray.local_num_cpus=8"]
ENVS = "tests.multiturn_envs"


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    message: str  # what the error line must hold (placeholders filled)
    env: dict[str, str] = field(default_factory=dict)  # environment variables set for the case


def cmd(command: str, *extra: str, message: str, name: str, env: dict | None = None, base: bool = True) -> Case:
    return Case(name, [command, *(BASE if base else []), *extra], message, env or {})


def train(name: str, *extra: str, message: str, env: dict | None = None) -> Case:
    return cmd("train", *extra, message=message, name=name, env=env)


def grpo_env(name: str, env_class: str, message: str) -> Case:
    return train(name, "algorithm=grpo", "reward.kind=env", f"env.environment={ENVS}:{env_class}", "env.retries=0",
                 "env.call_timeout_s=0.3", message=message)


def cluster(name: str, file: str, message: str) -> Case:
    """`rlhf-ray plan --cluster {D}/file`: the error starts with the file (and its line)."""
    return cmd("plan", "--cluster", f"{{D}}/{file}", message=f"cluster file {{D}}/{file}{message}", name=name)


LAUNCHER = ("cluster_name: x\nprovider: {type: aws}\nmax_workers: 2\nhead_node_type: head\navailable_node_types:\n"
            "  head:\n    resources: {CPU: 4}\n  gpu:\n    resources: {CPU: 8, GPU: 4}\n    max_workers: 2\n")

FILES = {  # name in {D} → content (bytes or text)
    "broken.yaml": "trainer:\n  seed: 1\nlearner: {lr: [\n",
    "dup.yaml": "learner:\n  lr: 1.0e-5\nppo:\n  epochs: 2\nlearner:\n  lr: 3.0e-4\n",
    "dup_nested.yaml": "learner:\n  lr: 1.0e-5\n  lr: 2.0e-5\n",
    "list.yaml": "- 1\n- 2\n",
    "latin1.yaml": "task:\n  system_prompt: caf\xe9\n".encode("latin-1"),
    "inf.yaml": "learner:\n  lr: .inf\n",
    "unknown.yaml": "learner:\n  learning_rate: 1.0e-5\n",
    "empty.jsonl": "",
    "broken.jsonl": '{"prompt": "1+1?", "answer": "2"}\n{not json\n',
    "nofield.jsonl": '{"question": "1+1?"}\n',
    "latin1.jsonl": b'{"prompt": "1+1?"}\n{"prompt": "caf\xe9"}\n',
    "noanswer.jsonl": '{"prompt": "Say hi."}\n{"prompt": "Say bye."}\n',
    "nochosen.jsonl": '{"prompt": "Say hi.", "rejected": "no"}\n',
    "requirements_missing": None,  # never written: a --requirements file that does not exist
    "c_number.yaml": LAUNCHER.replace("GPU: 4", "GPU: four"),
    "c_workers.yaml": LAUNCHER.replace("    max_workers: 2\n", "    max_workers: many\n"),
    "c_head.yaml": LAUNCHER.replace("head_node_type: head", "head_node_type: hed"),
    "c_dup.yaml": LAUNCHER.replace("  gpu:", "  head:"),
    "c_broken.yaml": LAUNCHER[:40],
    "c_types.yaml": "cluster_name: x\nprovider: {}\nmax_workers: 1\nhead_node_type: head\navailable_node_types: [1, 2]\n",
    "c_containers.yaml": "kind: RayCluster\nspec:\n  headGroupSpec:\n    template:\n      spec:\n        containers: []\n",
    "c_list.yaml": "- a\n- b\n",
    "c_nohead.yaml": "kind: RayCluster\nspec:\n  workerGroupSpecs: []\n",
    "c_resources.yaml": LAUNCHER.replace("    resources: {CPU: 4}\n", "    resources: 4\n"),
    "c_missing_provider.yaml": LAUNCHER.replace("provider: {type: aws}\n", ""),
}


def prepare(folder: Path, policy: str, reward: str) -> dict[str, str]:
    """Writes the broken files and folders the cases name into ``folder``; returns the placeholders."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in FILES.items():
        if content is not None:
            (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (folder / "a_folder").mkdir(exist_ok=True)
    (folder / "no_config").mkdir(exist_ok=True)
    (folder / "no_config" / "model.safetensors").write_bytes(b"")
    for name in ("no_tokenizer", "cut", "bad_header", "bad_config", "alien"):
        shutil.copytree(policy, folder / name, dirs_exist_ok=True)
    for f in (folder / "no_tokenizer").glob("tokenizer*"):
        f.unlink()
    weights = (folder / "cut" / "model.safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    (folder / "bad_header" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    (folder / "bad_config" / "config.json").write_text("{not json")
    alien = json.loads((folder / "alien" / "config.json").read_text())
    (folder / "alien" / "config.json").write_text(json.dumps({**alien, "model_type": "no_such_architecture"}))
    previous = folder / "previous_run"
    previous.mkdir(exist_ok=True)
    (previous / "eval_step00000.jsonl").write_text("{}\n")
    (folder / "run").mkdir(exist_ok=True)
    (folder / "run" / "best.jsonl").mkdir(exist_ok=True)
    (folder / "cache_is_a_file").write_text("")
    return {"P": policy, "R": reward, "D": str(folder)}


def bad_reward_raises(prompts, responses, answers):
    raise KeyError("answer_text")


def bad_reward_count(prompts, responses, answers):
    return [1.0, 0.0]


def bad_reward_nan(prompts, responses, answers):
    return [float("nan")] * len(responses)


def bad_reward_text(prompts, responses, answers):
    return "1.0"


def reward_two_arguments(prompts, responses):
    return [0.0] * len(responses)


HERE = "tests.bad_input_cases"
NOT_A_DASHBOARD = "{NOT_A_DASHBOARD}"  # filled by the runner with a loopback HTTP server's address

CASES: list[Case] = [
    # ---- the config: keys, types, ranges, numbers, cross-section rules
    train("unknown top-level key", "bogus=1", message="bogus: unknown key"),
    train("misspelt key", "learner.zero_stag=3", message="learner.zero_stag: unknown key (did you mean 'learner.zero_stage'?)"),
    train("misspelt section", "rolout.num_actors=2", message="rolout: unknown key (did you mean 'rollout'?)"),
    train("override without '='", "ppo", message="override 'ppo' is not of the form a.b=value"),
    train("override into a value", "learner.lr.x=1", message="learner.lr: Input should be a valid number (got {'x': 1})"),
    train("wrong type", "rollout.num_actors=two", message="rollout.num_actors: Input should be a valid integer"),
    train("negative learning rate", "learner.lr=-1", message="learner.lr: Input should be greater than 0"),
    train("infinite learning rate", "learner.lr=.inf", message="learner.lr: Input should be a finite number (got inf)"),
    train("NaN learning rate", "learner.lr=.nan", message="learner.lr: Input should be a finite number (got nan)"),
    train("infinite critic lr", "algorithm=ppo", "critic.lr=.inf", message="critic.lr: Input should be a finite number"),
    train("infinite temperature", "rollout.temperature=.inf", message="rollout.temperature: Input should be a finite number"),
    train("NaN KL coefficient", "ppo.kl.coef=.nan", message="ppo.kl.coef: Input should be a finite number (got nan)"),
    train("infinite Adam beta", "learner.adam_betas=[0.9, .inf]", message="learner.adam_betas.1: Input should be a finite number"),
    train("NaN failure reward", "env.failure_reward=.nan", message="env.failure_reward: Input should be a finite number"),
    train("infinite reward timeout", "reward.timeout_s=.inf", message="reward.timeout_s: Input should be a finite number"),
    train("top_p above 1", "rollout.top_p=1.5", message="rollout.top_p: Input should be less than or equal to 1"),
    train("ZeRO stage 4", "learner.zero_stage=4", message="learner.zero_stage: Input should be less than or equal to 3"),
    train("unknown algorithm", "algorithm=ppo2", message="unknown algorithm 'ppo2' (did you mean 'ppo'?)"),
    train("http reward without url", "reward.kind=http", message="reward.kind=http needs reward.url"),
    train("reward url of another scheme", "reward.kind=http", "reward.url=ftp://127.0.0.1/score",
          message="reward.url='ftp://127.0.0.1/score' must be an http:// or https:// address with a host"),
    train("file task without a file", "task.name=gsm8k", message="set task.train_file"),
    train("offline algorithm without data", "algorithm=dpo", message="algorithm=dpo trains on a dataset: set offline.train_file"),
    train("overwrite and resume", "trainer.overwrite=true", "trainer.resume=auto",
          message="trainer.overwrite=true starts afresh: it cannot go with trainer.resume=auto"),
    train("group method with one sample", "algorithm=grpo", "ppo.samples_per_prompt=1", "ppo.minibatch_samples_global=4",
          message="ppo.samples_per_prompt must be ≥ 2"),
    train("minibatch not dividing the step", "ppo.minibatch_samples_global=3",
          message="ppo.minibatch_samples_global=3 must divide the samples per step"),
    train("iterative DPO with one sample", "algorithm=iterative_dpo", "synthesize.samples_per_prompt=1",
          message="synthesize.samples_per_prompt=1 must be ≥ 2"),
    train("iterative DPO rounds too small for a step", "algorithm=iterative_dpo", "iterative.prompts_per_round=4",
          message="iterative.prompts_per_round=4 makes at most one pair per prompt"),
    train("environment and tools both", "env.tools=[a:b]", "env.environment=x:y",
          message="set env.environment or env.tools, not both"),
    train("env.kwargs without an environment", "env.kwargs={high: 3}", message="env.kwargs are the arguments of env.environment"),
    train("environment with an offline algorithm", "algorithm=sft", "offline.train_file=x.jsonl",
          f"env.environment={ENVS}:TwoTurnEnv", message="env.* (multi-turn rollouts) runs with the online algorithms"),
    train("learner_base reference without LoRA", "reference.source=learner_base",
          message="reference.source=learner_base reads the reference from the learner with its adapters disabled"),
    train("LLM judge without a model", "trainer.eval.baseline=reference", "trainer.eval.judge=llm",
          message="trainer.eval.judge=llm needs trainer.eval.judge_model_path"),
    train("judge template without its fields", "trainer.eval.judge_template=Which?",
          message="trainer.eval.judge_template lacks {question}, {answer_a}, {answer_b}"),
    train("LoRA rank 0", "learner.lora.rank=0", message="learner.lora.rank: Input should be greater than or equal to 1"),
    train("tensor parallel without its GPUs", "rollout.tensor_parallel_size=2",
          message="rollout.tensor_parallel_size=2 shards each engine over 2 GPUs"),
    # ---- config files
    cmd("train", "{D}/nope.yaml", message="config file {D}/nope.yaml does not exist", name="config file missing", base=False),
    cmd("train", "{D}/broken.yaml", message="config file {D}/broken.yaml is not valid YAML (line 4: ",
        name="config file not YAML", base=False),
    cmd("train", "{D}/dup.yaml", message="config file {D}/dup.yaml: key 'learner' appears twice in one mapping (lines 1 and 5)",
        name="duplicate top-level key", base=False),
    cmd("train", "{D}/dup_nested.yaml", message="key 'lr' appears twice in one mapping (lines 2 and 3)",
        name="duplicate nested key", base=False),
    cmd("train", "{D}/list.yaml", message="config file {D}/list.yaml must hold a mapping of sections, not list",
        name="config file of a list", base=False),
    cmd("train", "{D}/latin1.yaml", message="config file {D}/latin1.yaml cannot be read ('utf-8' codec can't decode",
        name="config file not UTF-8", base=False),
    cmd("train", "{D}/inf.yaml", message="learner.lr: Input should be a finite number (got inf) (the config from {D}/inf.yaml)",
        name="infinite number in a file", base=False),
    cmd("train", "{D}/unknown.yaml", message="learner.learning_rate: unknown key", name="unknown key in a file", base=False),
    # ---- model folders
    train("model folder missing", "model.path={D}/no_model", message="Model folder not found: '{D}/no_model'"),
    train("model folder without config.json", "model.path={D}/no_config", message="No config.json in model folder"),
    train("model folder without tokenizer", "model.path={D}/no_tokenizer", message="No tokenizer files"),
    train("weights cut short", "model.path={D}/cut", message="{D}/cut/model.safetensors: header length"),
    train("weights header not JSON", "model.path={D}/bad_header", message="header is not valid JSON"),
    train("config.json not JSON", "model.path={D}/bad_config", message="{D}/bad_config/config.json: not valid JSON"),
    train("policy that is a reward model", "model.path={R}",
          message="model.path={R}: the policy must be a causal LM, but its config.json says architectures=['LlamaForSequenceClassification']"),
    train("reward model that is a causal LM", "reward.kind=model", "reward.model_path={P}",
          message="reward.model_path={P}: the reward model must be a sequence classifier"),
    train("reference that is a reward model", "reference.model_path={R}", message="reference.model_path={R}: the reference must be a causal LM"),
    train("reward model without a path", "reward.kind=model", message="reward.kind=model needs reward.model_path"),
    train("LoRA target the model lacks", "learner.lora.targets=[q_proj, qkv_proj]",
          message="learner.lora.targets: ['qkv_proj'] are not linear modules of the model in {P}"),
    train("LoRA on an architecture transformers cannot build", "model.path={D}/alien", "learner.lora=true",
          message="{D}/alien: transformers cannot build its model from config.json to check the LoRA targets"),
    train("critic LoRA target the critic lacks", "algorithm=ppo", "critic.lora.targets=[lm_head]",
          message="critic.lora.targets: ['lm_head'] are not linear modules"),
    train("LLM judge that is a reward model", "trainer.eval.baseline=reference", "trainer.eval.judge=llm",
          "trainer.eval.judge_model_path={R}", message="the judge (trainer.eval.judge=llm) must be a causal LM"),
    train("reward judge that is a causal LM", "trainer.eval.baseline=reference", "trainer.eval.judge_model_path={P}",
          message="the judge (trainer.eval.judge=reward) must be a sequence classifier"),
    train("baseline that is a reward model", "trainer.eval.baseline={R}", "reward.model_path={R}",
          message="trainer.eval.baseline={R}: the baseline must be a causal LM"),
    train("reward judge without a model", "trainer.eval.baseline=reference",
          message="trainer.eval.judge=reward needs a reward model"),
    train("sequence longer than the model's positions", "rollout.max_new_tokens=600",
          message="model.max_prompt_tokens + rollout.max_new_tokens = 664 tokens, more than the 512 positions"),
    train("shipped model whose export fails", "model.path=gemma3", env={"RLHF_RAY_CACHE": "{D}/cache_is_a_file"},
          message="model 'gemma3': exporting the shipped model to {D}/cache_is_a_file/models/gemma-3-270m failed"),
    # ---- rewards
    train("reward module missing", "reward.function=no_such_module:f", message="cannot import module 'no_such_module'"),
    train("reward function missing", "reward.function=rlhf_ray.tasks.rewards:nope", message="has no function 'nope'"),
    train("reward path without ':'", "reward.function=rlhf_ray.tasks.rewards", message="must look like 'package.module:function'"),
    train("reward with two arguments", f"reward.function={HERE}:reward_two_arguments",
          message="a call with one row f(prompts=[...], responses=[''], answers=[...]) raised TypeError"),
    train("reward that raises", f"reward.function={HERE}:bad_reward_raises", message="raised KeyError: 'answer_text'"),
    train("reward returning NaN", f"reward.function={HERE}:bad_reward_nan", message="returned non-finite scores at samples [0]"),
    train("reward returning too many scores", f"reward.function={HERE}:bad_reward_count", message="returned 2 scores for 1 samples"),
    train("reward returning text", f"reward.function={HERE}:bad_reward_text", message="returned str, not a list of numbers"),
    train("answer-matching reward on prompts without answers", "task.name=jsonl", "task.train_file={D}/noanswer.jsonl",
          "task.eval_file={D}/noanswer.jsonl", message="scores each response against its row's reference answer, but no "
          "training row of task.name=jsonl has an 'answer'"),
    train("reward token variable unset", "reward.kind=http", "reward.url=http://127.0.0.1:9/score",
          "reward.token_env=RLHF_RAY_BATTERY_UNSET", message="environment variable RLHF_RAY_BATTERY_UNSET is not set"),
    # ---- data
    train("prompt file empty", "task.name=jsonl", "task.train_file={D}/empty.jsonl", message="empty.jsonl"),
    train("prompt file with a broken line", "task.name=jsonl", "task.train_file={D}/broken.jsonl", message="broken.jsonl line 2"),
    train("prompt file without prompts", "task.name=jsonl", "task.train_file={D}/nofield.jsonl",
          "task.eval_file={D}/nofield.jsonl", message="nofield.jsonl line 1"),
    train("prompt file not UTF-8", "task.name=jsonl", "task.train_file={D}/latin1.jsonl",
          message="latin1.jsonl line 2: not UTF-8 (byte 0xe9"),
    train("prompt file missing", "task.name=jsonl", "task.train_file={D}/nope.jsonl", message="nope.jsonl"),
    train("prompt longer than the limit", "model.max_prompt_tokens=5", message="row 0: prompt is"),
    train("offline data file missing", "algorithm=dpo", "offline.train_file={D}/nope.jsonl", message="nope.jsonl"),
    train("offline rows without 'chosen'", "algorithm=dpo", "offline.train_file={D}/nochosen.jsonl", message="nochosen.jsonl"),
    cmd("eval", "--prompts", "{D}/nope.jsonl", message="nope.jsonl", name="eval prompt file missing"),
    # ---- environments and tools: a dry episode before any actor
    grpo_env("env step returning an int", "GarbageEnv", "GarbageEnv.step returned int (42); expected an Observation or a string"),
    grpo_env("env step with a NaN reward", "NaNRewardEnv", "Observation.reward must be a finite number, got nan"),
    grpo_env("env step that raises", "RaisingEnv", "raised ValueError: the tool broke"),
    grpo_env("env step that hangs", "SlowEnv", "gave no answer within env.call_timeout_s=0.3s"),
    grpo_env("env step without the turn", "StepWithoutTurn", "StepWithoutTurn.step() must take one argument"),
    grpo_env("env reset returning text", "GreetingResetEnv", "GreetingResetEnv.reset returned 'hello'"),
    grpo_env("env module missing", "Nope", "module 'tests.multiturn_envs' has no 'Nope'"),
    train("environment that is no Environment", "algorithm=grpo", "reward.kind=env", "env.environment=rlhf_ray.envs.base:Observation",
          message="is not a subclass of rlhf_ray.envs.base.Environment"),
    train("environment kwargs it does not take", "algorithm=grpo", "reward.kind=env", f"env.environment={ENVS}:TwoTurnEnv",
          "env.kwargs={high: 3}", message="with env.kwargs={'high': 3}"),
    train("tool that is not a function", "algorithm=grpo", f"env.tools=[{ENVS}:NOT_A_TOOL]", "env.system_prompt=Use it.",
          message="env.tools: 'tests.multiturn_envs:NOT_A_TOOL' is a int, not a function"),
    train("tool without a docstring", "algorithm=grpo", f"env.tools=[{ENVS}:undocumented_tool]", "env.system_prompt=Use it.",
          message="tool 'undocumented_tool': cannot build its JSON schema"),
    # ---- outputs and the run directory
    cmd("synthesize", "--out", "{D}/a_folder", message="synthesize.out_file={D}/a_folder: is a folder", name="synthesize output a folder"),
    cmd("synthesize", "--out", "/proc/rlhf_ray_battery.jsonl", message="cannot write in /proc", name="synthesize output read-only"),
    cmd("synthesize", "synthesize.models=[{P}, {R}]", message="synthesize.models[1]={R}: the synthesize candidate must be a causal LM",
        name="synthesize candidate that is a reward model"),
    cmd("synthesize", "synthesize.samples_per_prompt=1", message="synthesize.mode=pairs needs at least 2 candidates per prompt",
        name="synthesize pairs from one candidate"),
    cmd("best-of-n", "trainer.run_dir={D}/run", "raft.best_of_n_file=best.jsonl", message="raft.best_of_n_file={D}/run/best.jsonl: is a folder",
        name="best-of-n output a folder"),
    cmd("make-traces", "--out", "{D}/a_folder", message="--out={D}/a_folder: is a folder", name="make-traces output a folder", base=False),
    cmd("make-traces", "task.name=gsm8k", "task.train_file=x.jsonl", "--out", "{D}/t.jsonl",
        message="calculator traces are written for task.name=arithmetic", name="make-traces of another task", base=False),
    train("run directory not writable", "trainer.run_dir=/sys/rlhf_ray_battery", message="trainer.run_dir=/sys/rlhf_ray_battery: cannot write in /sys"),
    train("run directory holding another run", "trainer.run_dir={D}/previous_run", message="holds another run's outputs (eval_step00000.jsonl)"),
    train("resume from no checkpoint", "trainer.resume={D}/a_folder", message="not a complete checkpoint"),
    train("more CPUs than the machine", "ray.local_num_cpus=null", "learner.num_cpus_per_actor=4096",
          message="the actor layout does not fit this machine"),
    # ---- cluster files (rlhf-ray plan --cluster)
    cluster("cluster file: resource not a number", "c_number.yaml", ":9: available_node_types.gpu.resources.GPU='four' is not a number"),
    cluster("cluster file: max_workers not a number", "c_workers.yaml", ":10: available_node_types.gpu.max_workers='many' is not a number"),
    cluster("cluster file: unknown head type", "c_head.yaml", ":4: head_node_type 'hed' is not one of available_node_types ['gpu', 'head']"),
    cluster("cluster file: duplicate node type", "c_dup.yaml", ": key 'head' appears twice in one mapping (lines 6 and 8)"),
    cluster("cluster file: broken YAML", "c_broken.yaml", " is not valid YAML (line 3: "),
    cluster("cluster file: node types a list", "c_types.yaml", ":5: available_node_types must be a mapping, not list"),
    cluster("KubeRay file without containers", "c_containers.yaml", ":6: containers must list at least one container"),
    cluster("cluster file of a list", "c_list.yaml", ":1: not a YAML mapping"),
    cluster("KubeRay file without a head", "c_nohead.yaml", ":2: spec: missing required field 'headGroupSpec'"),
    cluster("cluster file: resources not a mapping", "c_resources.yaml", ":7: available_node_types.head.resources must be a mapping"),
    cluster("cluster file without provider", "c_missing_provider.yaml", ":1: missing required field 'provider'"),
    cmd("plan", "--cluster", "{D}/nope.yaml", message="cluster file {D}/nope.yaml cannot be read", name="cluster file missing"),
    # ---- the Jobs API (submit, jobs): loopback addresses only
    cmd("submit", "--address", "ftp://127.0.0.1:1", message="address 'ftp://127.0.0.1:1' is not the Ray dashboard's http://HOST:PORT",
        name="submit to another scheme", base=False),
    cmd("submit", "--address", "http://127.0.0.1:1", "--requirements", "{D}/requirements_missing",
        message="--requirements {D}/requirements_missing does not exist", name="submit with a missing requirements file", base=False),
    cmd("submit", "reward.function=no_such_module:f", "--address", "http://127.0.0.1:1",
        message="cannot import module 'no_such_module'", name="submit with a bad reward (before any request)", base=False),
    cmd("jobs", "list", "--address", "http://127.0.0.1:1", message="no Ray dashboard answers at http://127.0.0.1:1 ([Errno 111]",
        name="jobs at a closed port", base=False),
    cmd("jobs", "status", "job-1", "--address", "http://", message="address 'http:' is not the Ray dashboard's", name="jobs at an address without host",
        base=False),
    cmd("jobs", "logs", "job-1", "--address", "127.0.0.1", message="address '127.0.0.1' is not the Ray dashboard's",
        name="jobs at a host without port", base=False),
    cmd("jobs", "stop", "job-1", "--address", "http://127.0.0.1:8265/jobs", message="is not the Ray dashboard's http://HOST:PORT",
        name="jobs at a page, not the dashboard", base=False),
    cmd("jobs", "list", "--address", NOT_A_DASHBOARD, message="is not a Ray dashboard (no /api/version)",
        name="jobs at a server that is no dashboard", base=False),
    cmd("serve-reward", "--function", "no_such_module:f", message="cannot import module 'no_such_module'",
        name="serve a reward that cannot be imported", base=False),
    cmd("serve-reward", "--function", "rlhf_ray.tasks.rewards:arithmetic_exact_match", "--port", "99999",
        message="--port 99999: a port is 0-65535", name="serve a reward on a port out of range", base=False),
    cmd("serve-reward", "--function", "rlhf_ray.tasks.rewards:arithmetic_exact_match", "--port", "{DASH_PORT}",
        message="--host 127.0.0.1 --port {DASH_PORT}: cannot listen there (Address already in use)",
        name="serve a reward on a port that is taken", base=False),
    cmd("report", "{D}/a_folder", message="{D}/a_folder/metrics.jsonl does not exist: is {D}/a_folder a run directory?",
        name="report of a folder that is no run", base=False),
    cmd("submit", "--address", "http://127.0.0.1:1", env={"RAY_AUTH_TOKEN_PATH": "{D}/no_token"},
        message="RAY_AUTH_TOKEN_PATH={D}/no_token is not a file holding a token", name="token file missing", base=False),
]


@contextlib.contextmanager
def not_a_dashboard(folder: Path):
    """A real HTTP server on loopback that is no Ray dashboard (it serves an empty ``folder``: every path 404)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    folder.mkdir(parents=True, exist_ok=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def run_case(case: Case, values: dict[str, str], index: int) -> tuple[int, str]:
    """(exit status, stderr) of ``rlhf-ray`` on the case, in this process, with its environment variables set."""
    values = {**values, "RUN": os.path.join(values["D"], f"run-{index}")}
    saved = {k: os.environ.get(k) for k in case.env}
    os.environ.update({k: fill(v, values) for k, v in case.env.items()})
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main([fill(a, values) for a in case.argv])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rc, err.getvalue()


def as_row(case: Case, err: str) -> str:
    return f"| {case.name} | `{' '.join(case.argv[:1] + [a for a in case.argv[1:] if a not in BASE])}` | {err.strip()} |"


if __name__ == "__main__":  # pragma: no cover - scripts/bad_inputs_battery.py runs the battery
    print(json.dumps([c.name for c in CASES], indent=1))
