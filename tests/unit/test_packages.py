"""Every program crisp and the demo pod execute is installed by install-deps' one list.

The programs are found in the source (parsed, not imported): literal argv lists given to the
process-starting calls, ``shutil.which("name")``, module-level constants used as argv[0],
the config's default runtime and monitor, and the CNI plugins of crisp's default network.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

from crisp.config import Config
from crisp.network.default import render

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ROOT / "scripts" / "packages"
SOURCES = [*sorted((ROOT / "src" / "crisp").rglob("*.py")), ROOT / "scripts" / "demo_pod.py"]
STARTERS = {"run_program", "run", "create_subprocess_exec", "Popen", "check_output", "call"}
OURS = {"crisp", "crispctl"}
# Run by the CNI plugins crisp configures (portmap, bridge's ipMasq), not by crisp itself.
RUN_BY_PLUGINS = {"iptables"}


def declared() -> dict[str, tuple[str, str]]:
    """Program -> (kind, Debian package), from scripts/packages."""
    programs: dict[str, tuple[str, str]] = {}
    for line in PACKAGES.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            kind, package, *provided = line.split()
            assert kind in {"runtime", "test"}, line
            programs.update({program: (kind, package) for program in provided})
    return programs


def _constants(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets if isinstance(target, ast.Name)
    }


def _name(node: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def executed_in_source(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    constants = _constants(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(
            node.func, "id", "")
        if callee == "which" and node.args:
            name = _name(node.args[0], constants)
            found |= {name} if name else set()
        elif callee in STARTERS and node.args and isinstance(node.args[0], ast.List):
            argv = [_name(element, constants) for element in node.args[0].elts]
            if argv and argv[0]:
                found.add(argv[0])
            # ``nsenter ... -- cat`` and ``unshare ... -- hostname``: the program after "--".
            found |= {argv[i + 1] for i, arg in enumerate(argv[:-1])
                      if arg == "--" and argv[i + 1]}
    return {Path(name).name for name in found}


def executed() -> set[str]:
    programs = set().union(*(executed_in_source(path) for path in SOURCES))
    for handler in Config().runtimes.values():
        programs |= {Path(handler.runtime_path).name, Path(handler.monitor_path).name}

    def plugin_types(document: object) -> set[str]:
        if isinstance(document, dict):
            own = {document["type"]} if isinstance(document.get("type"), str) else set()
            return own.union(*(plugin_types(value) for value in document.values()))
        if isinstance(document, list):
            return set().union(*(plugin_types(value) for value in document))
        return set()

    programs |= plugin_types(render(["10.88.0.0/16"], "/tmp/ipam"))
    return (programs | RUN_BY_PLUGINS) - OURS


def test_the_scan_finds_the_programs_it_must() -> None:
    assert {"runc", "conmon", "nsenter", "unshare", "mount", "busybox", "bridge",
            "portmap", "cat", "hostname"} <= executed()


def test_every_program_executed_is_installed_by_the_runtime_list() -> None:
    programs = declared()
    missing = sorted(p for p in executed() if programs.get(p, ("", ""))[0] != "runtime")
    assert not missing, f"add these to scripts/packages as runtime programs: {missing}"


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system")
def test_each_declared_program_comes_from_its_package() -> None:
    for program, (_kind, package) in declared().items():
        listed = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True)
        if listed.returncode != 0:
            continue  # not installed here; install-deps installs it where it runs
        names = {Path(line).name for line in listed.stdout.splitlines()}
        # iptables and ip6tables are Debian alternatives over iptables-nft and -legacy.
        assert program in names or any(n.startswith(f"{program}-") for n in names), (
            f"{package} provides no {program}")
