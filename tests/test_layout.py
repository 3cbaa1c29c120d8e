"""The package's floors: each module imports only floors below its own.

kpool/backend -> kpool/ops -> kpool/layers -> kpool/registry is the library
(`import kpool`); kpool/harness sits above it, its modules one way down in
the order below. Read from the source with `ast`, so every import counts,
including the deferred ones inside functions.
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "kpool")

# Lowest first. A module may import its own floor's package and any floor
# listed before it.
FLOORS = [
    "kpool.backend",
    "kpool.ops",
    "kpool.layers",
    "kpool.registry",
    "kpool.harness.config",
    "kpool.harness.environment",
    "kpool.harness.augment",
    "kpool.harness.data",
    "kpool.harness.models",
    "kpool.harness.metrics",
    "kpool.harness.statistics",
    "kpool.harness.training",
    "kpool.harness.report_file",
    "kpool.harness.results",
    "kpool.harness.experiment",
    "kpool.harness.cli",
]


def floor_of(module):
    for index, floor in reversed(list(enumerate(FLOORS))):
        if module == floor or module.startswith(floor + "."):
            return index
    return None


def modules():
    for directory, _, files in os.walk(ROOT):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(directory, file)
                relative = os.path.relpath(path, os.path.dirname(ROOT))
                name = relative[:-3].replace(os.sep, ".")
                yield name.removesuffix(".__init__"), path


def kpool_imports(path):
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in ("kpool", "kpool.harness"):
                yield from (f"{node.module}.{a.name}" for a in node.names)
            else:
                yield node.module


@pytest.mark.parametrize("name, path", sorted(modules()))
def test_imports_only_lower_floors(name, path):
    own = floor_of(name)
    if own is None:
        # kpool/__init__.py and kpool/harness/__init__.py: the packages.
        assert name in ("kpool", "kpool.harness"), f"{name} has no floor"
        return
    for imported in kpool_imports(path):
        if not imported.startswith("kpool"):
            continue
        floor = floor_of(imported)
        assert floor is not None, f"{name} imports {imported}, on no floor"
        assert floor <= own, (
            f"{name} ({FLOORS[own]}) imports {imported} ({FLOORS[floor]}), "
            "a higher floor"
        )


def test_import_kpool_loads_no_harness_module():
    code = (
        "import kpool, sys; "
        "print(sorted(m for m in sys.modules if m.startswith('kpool')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "kpool.ops" in loaded and "kpool.layers" in loaded
    assert "harness" not in loaded
