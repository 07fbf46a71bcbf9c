"""The bad-input battery as a table: every case of tests/bad_input_cases.py run through `rlhf-ray`
(in this process), with the one-line error it got; exit 1 if any case did not exit 2 with its line.

    python scripts/bad_inputs_battery.py > /tmp/battery.md    # the table of docs/reliability.md

The same cases are the unit test tests/test_bad_inputs_battery.py (about 10 s on 2 CPU cores).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    from bad_input_cases import CASES, as_row, fill, not_a_dashboard, prepare, run_case
    from rlhf_ray.models.tiny import build_tiny_model

    start, bad = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="battery-") as tmp:
        folder = Path(tmp)
        policy = build_tiny_model(str(folder / "models"), kind="causal_lm")
        reward = build_tiny_model(str(folder / "models"), kind="reward", seed=1)
        with not_a_dashboard(folder / "served") as address:
            values = {**prepare(folder / "files", policy, reward), "NOT_A_DASHBOARD": address,
                      "DASH_PORT": address.rsplit(":", 1)[1]}
            print("| case | command (beside a tiny run's overrides) | error |\n| --- | --- | --- |")
            for i, case in enumerate(CASES):
                rc, err = run_case(case, values, i)
                ok = rc == 2 and err.count("\n") == 1 and fill(case.message, {**values, "RUN": ""}) in err
                if not ok:
                    bad.append(case.name)
                shown = err.replace(tmp, "$TMP").replace(address, "http://127.0.0.1:PORT").replace("|", "\\|")
                print(as_row(case, shown if ok else f"**NOT AS EXPECTED (exit {rc})**: {shown}").replace("\n", " "))
    print(f"\n{len(CASES) - len(bad)} of {len(CASES)} cases as expected in {time.perf_counter() - start:.0f} s"
          + (f"; not: {bad}" if bad else ""), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
