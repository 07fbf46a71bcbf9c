"""docs/config.md is the schema's own table: regenerate with `rlhf-ray config-doc` when a field changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_ray.config.loading import config_table

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_config_doc_lists_every_key_with_its_default():
    doc = (ROOT / "docs" / "config.md").read_text()
    missing = [f"| `{k}` | `{d}` | {text} |" for k, d, text in config_table()
               if f"| `{k}` | `{d}` | {text} |" not in doc]
    assert not missing, "docs/config.md is stale (run `rlhf-ray config-doc`): " + "; ".join(missing[:5])


def test_config_doc_shows_each_algorithms_own_defaults():
    """Each value an algorithm's row sets (AlgorithmSpec.defaults) is in its key's line, the locked ones marked."""
    from rlhf_ray.algorithms import ALGORITHMS

    lines = {line.split(" | ")[0]: line for line in (ROOT / "docs" / "config.md").read_text().splitlines()}
    shown = [(key, f"{name} {value!r}" + (" (no other value)" if key in dict(spec.locked) else ""))
             for name, spec in ALGORITHMS.items() for key, value in spec.defaults]
    assert len(shown) >= 7  # grpo, dr_grpo: aggregation; gspo: clip range, aggregation; cispo: clip range
    missing = [f"{key}: {text}" for key, text in shown if text not in lines.get(f"| `{key}`", "")]
    assert not missing, "docs/config.md lacks (run `rlhf-ray config-doc`): " + "; ".join(missing)
