"""Run directories: one run each, overwrite only when asked, resume keeps the run id (no Ray needed)."""

from __future__ import annotations

import json

import pytest

from rlhf_ray.config.loading import load_config, save_config
from rlhf_ray.runs.checkpoint import CheckpointError, CheckpointManager
from rlhf_ray.runs.rundir import RunDirError, check_resume, check_run_dir, claim_run_dir, fingerprint

pytestmark = pytest.mark.unit


def _cfg(run_dir, *extra):
    return load_config(overrides=[f"trainer.run_dir={run_dir}", "logging.wandb_mode=disabled", *extra])


def _checkpoint(cfg, run_id, step=2, models=None):
    m = CheckpointManager(cfg.trainer.run_dir, keep_last=2, run_id=run_id)
    tmp = m.begin(step)
    for role in cfg.spec.trained_roles:
        (tmp / role).mkdir()
    save_config(cfg, tmp / "config.yaml")
    return m.commit(tmp, {"step": step, "models": models or {}})


def test_fresh_run_claims_an_empty_directory(tmp_path):
    cfg = _cfg(tmp_path / "run")
    run_id = claim_run_dir(cfg, None)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["id"] == run_id and record["starts"][0]["fingerprint"] == fingerprint(cfg)
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_fresh_run_into_another_runs_directory_is_refused(tmp_path):
    old = _cfg(tmp_path / "run")
    claim_run_dir(old, None)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 0}\n')
    ckpt = _checkpoint(old, "old")
    with pytest.raises(RunDirError) as e:
        check_run_dir(_cfg(tmp_path / "run"), None)
    msg = str(e.value)
    assert "holds another run's outputs (run.json, config.yaml, metrics.jsonl, checkpoints)" in msg
    assert "trainer.resume=auto" in msg and "trainer.overwrite=true" in msg and "new trainer.run_dir" in msg
    assert check_run_dir(_cfg(tmp_path / "run", "trainer.resume=auto"), ckpt) == []  # a resume is welcome
    # resume=auto that finds nothing, in a directory with outputs, says so
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "metrics.jsonl").write_text("")
    with pytest.raises(RunDirError, match="trainer.resume=auto found no complete checkpoint there"):
        check_run_dir(_cfg(tmp_path / "run2", "trainer.resume=auto"), None)


def test_overwrite_deletes_the_previous_runs_outputs_only(tmp_path):
    old = _cfg(tmp_path / "run")
    first = claim_run_dir(old, None)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 0}\n')
    (tmp_path / "run" / "eval_step00000.jsonl").write_text("")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    _checkpoint(old, first)
    second = claim_run_dir(_cfg(tmp_path / "run", "trainer.overwrite=true"), None)
    assert second != first
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "notes.txt", "run.json", "run.lock"]


def test_resume_from_own_checkpoint_keeps_the_run_id(tmp_path):
    cfg = _cfg(tmp_path / "run")
    run_id = claim_run_dir(cfg, None)
    ckpt = _checkpoint(cfg, run_id)
    assert claim_run_dir(_cfg(tmp_path / "run", "trainer.resume=auto"), ckpt) == run_id
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [s["resumed_from"] for s in record["starts"]] == [None, str(ckpt)]
    # a checkpoint of another directory seeds a new run in a new directory
    assert claim_run_dir(_cfg(tmp_path / "other", f"trainer.resume={ckpt}"), ckpt) != run_id


def test_overwrite_and_resume_together_is_a_config_error():
    with pytest.raises(ValueError, match="trainer.overwrite=true starts afresh: it cannot go with trainer.resume=auto"):
        _cfg("x", "trainer.overwrite=true", "trainer.resume=auto")


def test_unwritable_run_directory(tmp_path):
    with pytest.raises(RunDirError, match="trainer.run_dir=/sys/rlhf_ray_run: cannot write in /sys"):
        check_run_dir(_cfg("/sys/rlhf_ray_run"), None)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        check_run_dir(_cfg(tmp_path / "file" / "run"), None)


def test_resume_names_every_incompatible_setting_and_lists_the_allowed_changes(tmp_path):
    cfg = _cfg(tmp_path / "run")
    ckpt = _checkpoint(cfg, "r", models={"learner": "aaa", "critic": "aaa"})
    changed = check_resume(ckpt, _cfg(tmp_path / "run", "learner.lr=2e-6", "trainer.resume=auto"),
                           {"learner": "aaa", "critic": "aaa"})
    assert changed == ["learner.lr: 1e-06 → 2e-06"]
    bad = _cfg(tmp_path / "run", "learner.num_actors=2", "critic.zero_stage=2", "trainer.resume=auto")
    with pytest.raises(CheckpointError) as e:
        check_resume(ckpt, bad, {"learner": "bbb", "critic": "aaa"})
    msg = str(e.value)
    assert "learner.num_actors: checkpoint 1, now 2" in msg and "critic.zero_stage: checkpoint 0, now 2" in msg
    assert "learner's model: its config or tokenizer files differ" in msg and "critic's model" not in msg
    with pytest.raises(CheckpointError, match="algorithm: checkpoint ppo, now grpo"):
        check_resume(ckpt, _cfg(tmp_path / "run", "algorithm=grpo"), {"learner": "aaa"})


def test_a_directory_a_running_process_holds_is_refused_and_a_stale_lock_is_not(tmp_path):
    import subprocess
    import sys

    from rlhf_ray.runs.rundir import release_run_dir

    cfg = _cfg(tmp_path / "run")
    claim_run_dir(cfg, None)
    lock = tmp_path / "run" / "run.lock"
    ours = json.loads(lock.read_text())
    check_run_dir(_cfg(tmp_path / "run", "trainer.overwrite=true"), None)  # this process's own lock: no conflict
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({**ours, "pid": other.pid}))
        with pytest.raises(RunDirError, match=f"is in use by a run still going on this machine \\(process {other.pid}"):
            check_run_dir(_cfg(tmp_path / "run", "trainer.overwrite=true"), None)
    finally:
        other.kill()
        other.wait()
    check_run_dir(_cfg(tmp_path / "run", "trainer.overwrite=true"), None)  # stale: its process is gone
    release_run_dir(tmp_path / "run")
    assert lock.is_file()  # not ours: left alone
    lock.write_text(json.dumps(ours))
    release_run_dir(tmp_path / "run")
    assert not lock.exists()
