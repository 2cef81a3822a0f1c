import ast
import subprocess
import sys
from pathlib import Path

import fastsam_core

FORBIDDEN = {"boto3", "botocore", "ray", "prefect", "workers", "flows"}


def test_fastsam_core_source_imports_nothing_forbidden():
    root = Path(fastsam_core.__file__).parent
    bad = []
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            bad += [f"{f.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert bad == []


def test_importing_fastsam_core_loads_no_forbidden_module():
    code = f"import sys, fastsam_core; print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
