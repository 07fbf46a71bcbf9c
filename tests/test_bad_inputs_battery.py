"""The bad-input battery (tests/bad_input_cases.py): every case, through the real command line, exits
2 with one line ``error: ...`` naming the key or file and what is wrong, prints no traceback, and
starts no Ray (so no actor). The cases' table is docs/reliability.md's (scripts/bad_inputs_battery.py)."""

from __future__ import annotations

import pytest

from bad_input_cases import CASES, fill, not_a_dashboard, prepare, run_case

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def values(tiny_policy, tiny_reward_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("battery")
    with not_a_dashboard(folder / "served") as address:
        yield {**prepare(folder / "files", tiny_policy, tiny_reward_model), "NOT_A_DASHBOARD": address,
               "DASH_PORT": address.rsplit(":", 1)[1]}


def test_the_battery_has_about_a_hundred_distinct_cases():
    assert len(CASES) >= 100 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.name for c in CASES])
def test_bad_input(values, index):
    import ray

    case = CASES[index]
    was_up = ray.is_initialized()
    before = len(ray.util.list_named_actors(all_namespaces=True)) if was_up else 0
    rc, err = run_case(case, values, index)
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert fill(case.message, {**values, "RUN": ""}) in err, err
    assert ray.is_initialized() == was_up  # nothing started Ray, so no actor started
    assert (len(ray.util.list_named_actors(all_namespaces=True)) if was_up else 0) == before
