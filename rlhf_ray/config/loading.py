"""A run's config from its sources: the defaults (rlhf_ray.config), then a YAML file, then ``a.b=c``
overrides; every error names the key and what to do ("did you mean", moved keys). Also writing a
config back, and the schema as a table (``rlhf-ray config-doc`` → docs/config.md).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from rlhf_ray.algorithms import ALGORITHMS
from rlhf_ray.config.base import ConfigError
from rlhf_ray.config.schema import Config

# Keys that moved: an old config gets the new name, not "unknown key".
MOVED = {"trainer.weight_sync_bucket_mb": "sync.bucket_mb"}


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form a.b=value")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def _set_path(tree: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        node = tree.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override key {'.'.join(keys)!r}: {k!r} is not a section")
        tree = node
    tree[keys[-1]] = value


def _section_type(annotation) -> type[BaseModel] | None:
    """The section class of a field: ``Section`` or an optional one (``Section | None``, e.g. learner.lora)."""
    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        section = _section_type(field.annotation) if field is not None else None
        if section is None:
            return []
        model = section
    return list(model.model_fields)


def _explain(err: ValidationError, source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden" and key in MOVED:
            lines.append(f"{key}: moved to {MOVED[key]}")
        elif e["type"] == "extra_forbidden":
            near = difflib.get_close_matches(str(e["loc"][-1]), _known_keys(Config, e["loc"]), n=1)
            hint = f" (did you mean '{'.'.join(map(str, e['loc'][:-1] + (near[0],)))}'?)" if near else ""
            lines.append(f"{key}: unknown key{hint}")
        elif e["type"] == "value_error":  # a rule of the schema: its message names its keys
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(msg if not e["loc"] else f"{key}: {msg}")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return ConfigError("; ".join(lines) + f" (the config from {source})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' merges; its keys may repeat
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (list, dict)):  # unhashable: the safe loader's own error names it
                continue
            if key in seen:
                raise ConfigError(f"{self.name}: key {key!r} appears twice in one mapping (lines {seen[key]} and "
                                  f"{line}): keep one (YAML readers keep the last silently)")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str = "config file"):
    """A YAML file's document, duplicate keys refused with both line numbers; errors (ConfigError) name
    ``what`` the file is, the file and the line."""
    try:
        return yaml.load(path.read_text(), Loader=lambda stream: _named_loader(stream, f"{what} {path}"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what} {path} is not valid YAML ({line}{problem})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} cannot be read ({e})") from None


def _named_loader(stream, name: str) -> _UniqueKeyLoader:
    loader = _UniqueKeyLoader(stream)
    loader.name = name
    return loader


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults ← YAML file ← ``a.b=c`` overrides; raises ConfigError naming the bad key."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        tree = read_yaml(p) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, not {type(tree).__name__}")
        source = str(p)
    for item in overrides:
        _set_path(tree, *_parse_override(item))
    if overrides:
        source += " + the command line's overrides"  # the error names the key; every override would bury it
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise _explain(e, source) from None


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def config_table(node: BaseModel | None = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every leaf field: the source of docs/config.md.

    Walks a default instance, not the classes, so a section whose default differs per role
    (learner vs critic learning rate) shows the value that really applies."""
    node = Config() if node is None else node
    rows = []
    for name, field in type(node).model_fields.items():
        value = getattr(node, name)
        section = _section_type(field.annotation)
        if isinstance(value, BaseModel):
            rows += config_table(value, f"{prefix}{name}.")
        elif value is None and section is not None:  # an optional section, off by default: its keys once it is set
            rows.append((f"{prefix}{name}", repr(value), field.description or ""))
            rows += [(k, d, f"(with {prefix}{name} set) {doc}") for k, d, doc in config_table(section(), f"{prefix}{name}.")]
        else:
            rows.append((f"{prefix}{name}", repr(value), (field.description or "") + _per_algorithm(f"{prefix}{name}")))
    return rows


def _per_algorithm(key: str) -> str:
    """The values the algorithms' rows give ``key`` (AlgorithmSpec.defaults), for its line of the table."""
    values = [f"{name} {dict(spec.defaults)[key]!r}" + (" (no other value)" if key in dict(spec.locked) else "")
              for name, spec in ALGORITHMS.items() if key in dict(spec.defaults)]
    return f" Unless set, per algorithm (rlhf_ray/algorithms.py): {', '.join(values)}." if values else ""
