"""The package map of docs/architecture.md holds: every import runs to the same floor or below, the
root holds only what a reader enters by, and no two packages import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1] / "rlhf_ray"
FLOORS = {"algos": 0, "algorithms": 0, "config": 1, "envs": 2, "tasks": 2, "rewards": 2, "runs": 2, "data": 3,
          "models": 4, "cluster": 4, "sync": 5, "planning": 5, "roles": 6, "trainers": 7, "cli": 8, "__main__": 8}
ROOT_MODULES = {"__init__.py", "__main__.py", "cli.py", "algorithms.py"}


def imports_by_package() -> dict[str, set[tuple[str, str]]]:
    """{package: {(importing module, imported package)}}, function-local and TYPE_CHECKING imports included."""
    out: dict[str, set[tuple[str, str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        own = parts[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: within its own package
                    continue
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                bits = name.split(".")
                if bits[0] == "rlhf_ray" and len(bits) > 1 and bits[1] != own:
                    out.setdefault(own, set()).add(("/".join(parts), bits[1]))
    return out


def test_every_package_has_a_floor():
    found = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found |= {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert found <= set(FLOORS), f"packages without a floor in docs/architecture.md: {sorted(found - set(FLOORS))}"


def test_root_holds_only_the_entrances():
    assert {p.name for p in PACKAGE.glob("*.py")} <= ROOT_MODULES


def test_no_import_runs_up_a_floor():
    upward = sorted(f"{module} (floor {FLOORS[pkg]}) imports {target} (floor {FLOORS[target]})"
                    for pkg, edges in imports_by_package().items() for module, target in edges
                    if target in FLOORS and FLOORS[target] > FLOORS[pkg])
    assert not upward, "\n".join(upward)


def test_no_two_packages_import_each_other():
    edges = {(pkg, target) for pkg, found in imports_by_package().items() for _, target in found}
    both = sorted({tuple(sorted(e)) for e in edges if (e[1], e[0]) in edges})
    assert not both, both


def test_every_module_is_committed_and_shipped_with_a_job():
    """A pattern meant for the default run directory (runs/) once hid the rlhf_ray/runs package from git
    and from a job's uploaded working dir: every module must be tracked and pass the job's excludes."""
    import subprocess

    from ray._private.runtime_env.packaging import _get_excludes

    from rlhf_ray.cluster.jobs import EXCLUDES

    root = PACKAGE.parent
    modules = sorted(str(p.relative_to(root)) for p in PACKAGE.rglob("*.py"))
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "rlhf_ray"],
                             cwd=root, capture_output=True, text=True)
    if tracked.returncode == 0:  # a git checkout
        assert not set(modules) - set(tracked.stdout.split()), "modules git ignores"
    excluded = _get_excludes(root, EXCLUDES)
    assert not [m for m in modules if excluded(root / m)], "modules a submitted job would not get"
