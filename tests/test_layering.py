"""Dependencies point one way: flows -> workers -> fastsam_core, all of them -> schemas."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "fastsam_core": {"boto3", "botocore", "ray", "prefect", "workers", "flows"},
    "schemas": {"boto3", "botocore", "ray", "prefect", "workers", "flows", "fastsam_core", "torch"},
    "workers": {"prefect", "flows"},
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_source_imports_nothing_forbidden(package):
    bad = [
        f"{f.relative_to(ROOT)}: {n}"
        for f in (ROOT / package).rglob("*.py")
        for n in _imports(f)
        if n.split(".")[0] in FORBIDDEN[package]
    ]
    assert bad == []


def test_the_labeler_imports_no_ray():
    assert not [n for n in _imports(ROOT / "workers" / "labeler.py") if n.split(".")[0] == "ray"]


@pytest.mark.parametrize("package", ["fastsam_core", "schemas"])
def test_importing_loads_no_forbidden_module(package):
    forbidden = FORBIDDEN[package] - {"torch"}
    code = f"import sys, {package}; print(sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
