"""Shared fixtures: tiny random models (TRL-style test kit) and one local Ray for the session."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(autouse=True)
def _unit_tests_start_no_ray(request):
    """The unit tier (-m unit) is the edit-test loop: a test marked unit that starts Ray fails."""
    def ray_up() -> bool:
        return "ray" in sys.modules and sys.modules["ray"].is_initialized()

    before = ray_up()
    yield
    if request.node.get_closest_marker("unit") is not None and not before:
        assert not ray_up(), f"{request.node.nodeid} is marked unit but started Ray: move it out of the unit tier"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_policy(tiny_dir):
    from rlhf_ray.models.tiny import build_tiny_model

    return build_tiny_model(tiny_dir, kind="causal_lm")


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_dir):
    from rlhf_ray.models.tiny import build_tiny_model

    return build_tiny_model(tiny_dir, kind="reward", seed=1)


@pytest.fixture(scope="session")
def tiny_gemma_policy(tiny_dir):
    """A tiny random Gemma 3 (sliding-window and global layers) with its own tokenizer: another
    vocabulary, other ids and special tokens, and another template than tiny_policy's."""
    from rlhf_ray.models.tiny import build_tiny_model

    return build_tiny_model(tiny_dir, kind="causal_lm", family="gemma3")


@pytest.fixture(scope="session")
def tiny_gemma_reward_model(tiny_dir):
    from rlhf_ray.models.tiny import build_tiny_model

    return build_tiny_model(tiny_dir, kind="reward", seed=1, family="gemma3")


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray, loopback only; enough logical CPUs for every role at once, and logical GPUs
    (no real ones) so placement tests can see where GPU actors land."""
    ray = pytest.importorskip("ray")
    start_test_ray()
    yield ray
    ray.shutdown()


def start_test_ray() -> None:
    """The session's local Ray (also started again by tests/multinode.py after a multi-node test)."""
    from rlhf_ray.trainers.session import start_local_ray

    start_local_ray(num_cpus=8, num_gpus=4, namespace="rlhf_ray_tests", log_to_driver=False,
                    runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})


def tiny_overrides(policy: str, run_dir, *extra: str) -> list[str]:
    """A PPO config small enough for seconds per step on 2 CPU cores (RAFT: its length is raft.rounds,
    and trainer.total_steps, which it does not read, is an error there)."""
    steps = [] if "algorithm=raft" in extra else ["trainer.total_steps=2"]
    return [*steps, f"model.path={policy}", "model.max_prompt_tokens=64", "rollout.max_new_tokens=8",
            "task.n_train=64", "task.n_eval=8", "ppo.prompts_per_step_global=4", "ppo.samples_per_prompt=2",
            "ppo.minibatch_samples_global=8", "learner.micro_batch_samples_per_actor=4",
            "critic.micro_batch_samples_per_actor=4", "learner.lr=1e-3", "critic.lr=1e-3",
            "trainer.eval_every=0", f"trainer.run_dir={run_dir}",
            "logging.wandb_mode=disabled", "logging.progress_bar=false", "rollout.cpu_kv_cache_gib=1",
            "ray.local_num_cpus=8", *extra]  # as many CPUs as the session's test Ray (local_ray) pretends


def assert_fails_before_actors(cfg, exc, message: str):
    """Building the run's controller fails with ``exc`` naming ``message``, and no Ray actor was started."""
    import ray

    from rlhf_ray.trainers import controller_for

    before = len(ray.util.list_named_actors(all_namespaces=True)) if ray.is_initialized() else 0
    with pytest.raises(exc) as e:
        controller_for(cfg)
    assert message in str(e.value), str(e.value)
    after = len(ray.util.list_named_actors(all_namespaces=True)) if ray.is_initialized() else 0
    assert after == before
    return str(e.value)


def cli_fails(argv: list[str], capsys, message: str) -> str:
    """``rlhf-ray argv`` exits 2 with one line ``error: ...`` holding ``message``, no traceback, and Ray
    started nothing (not started at all, or no new actor in the session's test Ray)."""
    import ray

    from rlhf_ray.cli import main

    was_up = ray.is_initialized()
    before = len(ray.util.list_named_actors(all_namespaces=True)) if was_up else 0
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    assert ray.is_initialized() == was_up
    assert (len(ray.util.list_named_actors(all_namespaces=True)) if was_up else 0) == before
    return err.strip()
