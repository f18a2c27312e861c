"""The package's shape, as the README's layout section promises it.

One import package, `dicomnode`; `node` and `storage` are not importable under
their own names; no import cycle inside the package (imports inside
functions count: they run too); each layer imports only what it may.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support.proc import ROOT

FOLDERS = {"dicomnode": ROOT / "dicomnode", "dicomnode.node": ROOT / "node", "dicomnode.storage": ROOT / "storage"}
# module prefix -> prefixes it must never import
FORBIDDEN = {
    "dicomnode.storage": ("dicomnode.node",),
    "dicomnode.node.processing": ("dicomnode.node.dimse", "dicomnode.node.cli", "dicomnode.node.pipeline",
                                  "dicomnode.node.services", "dicomnode.node.serve"),
    "dicomnode.node.dimse": ("dicomnode.node.cli", "dicomnode.node.pipeline", "dicomnode.node.serve",
                             "dicomnode.node.processing"),
    "dicomnode.node.pipeline": ("dicomnode.node.cli", "dicomnode.node.serve"),
    "dicomnode.errors": ("dicomnode.node", "dicomnode.storage"),
}


def modules() -> dict[str, Path]:
    """Every module of the package by its installed name."""
    out: dict[str, Path] = {}
    for prefix, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            if "versions" in rel.parts or (prefix == "dicomnode" and rel.parts[0] in ("node", "storage")):
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([prefix, *parts])] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports, anywhere in its body (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_package else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, *([base] if base else [])])
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_no_import_cycle() -> None:
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layers_import_only_what_they_may() -> None:
    wrong = [f"{m} imports {n}" for m, deps in graph().items() for layer, banned in FORBIDDEN.items()
             if m == layer or m.startswith(layer + ".") for n in deps if n.startswith(banned)]
    assert not wrong, "\n".join(wrong)


def test_one_import_package() -> None:
    code = ("import importlib\n"
            "for bad in ('node', 'storage'):\n"
            "    try:\n        importlib.import_module(bad)\n    except ImportError:\n        pass\n"
            "    else:\n        raise SystemExit(bad + ' is importable')\n"
            "import dicomnode.node, dicomnode.storage\n")
    for cwd in (ROOT, ROOT.parent):  # from the repository root too, where ./node is a folder
        p = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr + p.stdout


def test_every_package_folder_is_installed() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert packages <= listed, f"not in pyproject.toml's packages: {sorted(packages - listed)}"
