"""docs/config.md is the schema's own table: regenerate with `rlhf-ray config-doc` when a field changes."""

from __future__ import annotations

from pathlib import Path

from rlhf_ray.config.loading import config_table

ROOT = Path(__file__).resolve().parents[1]


def test_config_doc_lists_every_key_with_its_default():
    doc = (ROOT / "docs" / "config.md").read_text()
    missing = [f"| `{k}` | `{d}` | {text} |" for k, d, text in config_table()
               if f"| `{k}` | `{d}` | {text} |" not in doc]
    assert not missing, "docs/config.md is stale (run `rlhf-ray config-doc`): " + "; ".join(missing[:5])
