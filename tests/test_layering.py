"""Dependencies point one way, room by room; each room's allowed imports are written down here.

flows  ->  workers.ray  ->  workers.labelling  ->  workers.runs  ->  workers.storage  ->  schemas
           workers.outputs ---------------------->  workers.runs
           workers.tables (Delta Lake) ---------->  workers.runs
fastsam_core (pure compute) is used by labelling, outputs and the weights cache; it imports schemas only.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

FIRST_PARTY = ("schemas", "fastsam_core", "workers", "flows")

#: Room -> the first-party rooms its modules may import (its own included), and third-party packages it must not.
ROOMS = {
    "schemas": ({"schemas"}, {"boto3", "botocore", "ray", "prefect", "torch"}),
    "fastsam_core": ({"fastsam_core", "schemas"}, {"boto3", "botocore", "ray", "prefect"}),
    "workers.storage": ({"workers.storage", "schemas", "fastsam_core"}, {"ray", "prefect", "torch"}),
    "workers.runs": ({"workers.runs", "workers.storage", "schemas"}, {"ray", "prefect", "torch"}),
    "workers.labelling": (
        {"workers.labelling", "workers.runs", "workers.storage", "schemas", "fastsam_core"},
        {"ray", "prefect"},  # the Labeler runs without Ray (tests, Ray Data's callable wraps it)
    ),
    "workers.ray": (
        {"workers.ray", "workers.labelling", "workers.runs", "workers.storage", "schemas"},
        {"prefect"},
    ),
    "workers.tables": ({"workers.tables", "workers.runs", "workers.storage", "schemas"}, {"ray", "prefect", "torch"}),
    "workers.outputs": (
        {"workers.outputs", "workers.runs", "workers.labelling", "workers.storage", "schemas", "fastsam_core"},
        {"ray", "prefect"},
    ),
    "flows": (
        {
            "flows",
            "workers.storage",
            "workers.runs",
            "workers.labelling",
            "workers.ray",
            "workers.outputs",
            "workers.tables",
            "schemas",
            "fastsam_core",
        },
        set(),
    ),
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            folder = ROOT / node.module.replace(".", "/")
            for a in node.names:  # `from workers import runs` imports the module workers.runs
                sub = folder / a.name
                names.append(
                    f"{node.module}.{a.name}" if sub.is_dir() or sub.with_suffix(".py").exists() else node.module
                )
    return names


def _room_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "workers" and len(parts) > 1 else parts[0]


def _files(room: str) -> list[Path]:
    return sorted((ROOT / room.replace(".", "/")).rglob("*.py"))


def test_every_module_is_in_a_room():
    rooms = {f for room in ROOMS for f in _files(room)}
    every = {f for top in FIRST_PARTY for f in (ROOT / top).rglob("*.py")}
    assert sorted(str(f.relative_to(ROOT)) for f in every - rooms) == ["workers/__init__.py"]


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_a_room_imports_only_what_it_may(room):
    allowed, forbidden = ROOMS[room]
    bad = []
    for f in _files(room):
        for name in _imports(f):
            top = name.split(".")[0]
            if top in FIRST_PARTY:
                target = _room_of(name)
                if not any(target == a or target.startswith(a + ".") for a in allowed):
                    bad.append(f"{f.relative_to(ROOT)}: {name}")
            elif top in forbidden:
                bad.append(f"{f.relative_to(ROOT)}: {name}")
    assert bad == []


def _graph() -> dict[str, set[str]]:
    """Module -> first-party modules it imports (at any level: inside functions too)."""
    graph = {}
    for top in FIRST_PARTY:
        for f in (ROOT / top).rglob("*.py"):
            module = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            graph[module] = {n for n in _imports(f) if n.split(".")[0] in FIRST_PARTY}
    return graph


def test_no_import_circle_between_rooms():
    edges = {(_room_of(m), _room_of(n)) for m, targets in _graph().items() for n in targets}
    edges = {(a, b) for a, b in edges if a != b}
    circles = sorted((a, b) for a, b in edges if (b, a) in edges)
    assert circles == []


@pytest.mark.parametrize("package", ["fastsam_core", "schemas", "workers.storage", "workers.runs"])
def test_importing_loads_no_forbidden_module(package):
    forbidden = ROOMS[package][1] - {"torch"}
    code = f"import sys, {package}; print(sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_two_modules_import_each_other():
    graph = _graph()
    pairs = sorted({tuple(sorted((m, n))) for m, targets in graph.items() for n in targets if m in graph.get(n, ())})
    assert pairs == []
