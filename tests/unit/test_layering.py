"""Imports flow one way, in the layer order docs/architecture.md writes down.

Every module of src/crisp is parsed (not imported) and each of its crisp imports, at the top,
under TYPE_CHECKING or inside a function, is checked against the documented order.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "crisp"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
TOP = "__init__"  # the top-level crisp package itself (its __version__)


def documented_layers() -> dict[str, int]:
    """Unit name -> its line in the ``layers`` block, 0 being the top."""
    found = re.search(r"```layers\n(.*?)```", ARCHITECTURE.read_text(), re.S)
    assert found, f"{ARCHITECTURE} has no ```layers block"
    rows = [line.split() for line in found.group(1).splitlines() if line.strip()]
    return {name: depth for depth, row in enumerate(rows) for name in row}


def source_units() -> set[str]:
    """crisp's packages (directories, with or without __init__.py) and top-level modules."""
    units = {p.name for p in SOURCE.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    return units | {p.stem for p in SOURCE.glob("*.py")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str, units: set[str]) -> str:
    """``crisp.oci.spec`` -> ``oci``; ``crisp`` and its attributes (``crisp.__version__``)
    are the top-level package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in units else TOP


def crisp_imports(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported crisp module) of every import in ``source``, relative ones resolved.

    ``from crisp import x`` counts as importing ``crisp.x``, which may be a module.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, target] if target else base)
            if target == "crisp":
                found.extend((node.lineno, f"crisp.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, target))
    return [(line, name) for line, name in found
            if name == "crisp" or name.startswith("crisp.")]


def violations() -> list[str]:
    layers = documented_layers()
    units = source_units()
    problems: list[str] = []
    for path in sorted(SOURCE.rglob("*.py")):
        module = module_name(path)
        own = unit_of(module, units)
        where = path.relative_to(ROOT)
        for line, imported in crisp_imports(path.read_text(), module,
                                            path.name == "__init__.py"):
            target = unit_of(imported, units)
            if target == own or own not in layers or target not in layers:
                continue  # unplaced units are test_every_unit_is_placed's failure
            if layers[target] <= layers[own]:
                relation = "on its own line" if layers[target] == layers[own] else "above it"
                problems.append(f"{where}:{line}: {own} imports {imported}, which is {relation}")
    return problems


def test_imports_follow_the_documented_layers() -> None:
    assert violations() == []


def test_every_unit_is_placed() -> None:
    layers = set(documented_layers())
    units = source_units()
    assert units - layers == set(), "place these in the layers block of docs/architecture.md"
    assert layers - units == set(), "the layers block names what src/crisp does not have"


def test_every_import_form_is_seen() -> None:
    """The forms crisp uses all resolve, so an upward import cannot hide behind one."""
    source = ("from crisp import errors, __version__\n"
              "import crisp.pods.model\n"
              "from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from crisp.images import Image\n"
              "def f() -> None:\n    from crisp.server.app import run\n"
              "from . import sibling\n"
              "from ..pods import model\n")
    imported = sorted(name for _, name in crisp_imports(source, "crisp.oci.spec", False))
    assert imported == ["crisp.__version__", "crisp.errors", "crisp.images", "crisp.oci",
                        "crisp.pods", "crisp.pods.model", "crisp.server.app"]
    units = {"errors", "pods", "oci", "images", "server"}
    assert unit_of("crisp.__version__", units) == TOP
    assert unit_of("crisp.pods.model", units) == "pods"
