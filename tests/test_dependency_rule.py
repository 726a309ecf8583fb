"""The dependency rule of DESIGN.md, checked on the import statements of every module.

run_experiment.py -> analysis -> mechanisms -> incentives, and run_experiment.py -> fl;
fl imports none of the other three; incentives and mechanisms run without torch.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("incentives", "mechanisms", "fl", "analysis")
FORBIDDEN = {
    "incentives": {"mechanisms", "fl", "analysis", "torch"},
    "mechanisms": {"fl", "analysis", "torch"},
    "analysis": {"fl", "torch"},
    "fl": {"incentives", "mechanisms", "analysis"},
}


def imported_top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_package_respects_the_dependency_rule(package):
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_top_level_names(path) & FORBIDDEN[package]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"{package} imports what DESIGN.md forbids: {offenders}"
