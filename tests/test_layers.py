"""The house as the README draws it: every import, at module level or inside a function, points down.

``LAYERS`` is the README's picture ("Layers") as data. A module may import modules of its own
package and of lower layers, never of its own layer's other packages or of a higher one; and no
chain of imports comes back to where it started, so no import inside a function hides a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "qsink"

# bottom first; each entry is a module or a package of qsink
LAYERS = [
    ["qsink", "errors"],  # the version; the one exception type
    ["validate", "files", "registry"],  # checks, files and hashing, named registries
    ["data", "models"],  # text and checkpoints
    ["records", "plotting"],  # what the stages write through
    ["measure"],  # the spike/sink profile
    ["quant", "train"],  # surgery (may read a profile), training
    ["evaluate"],  # cells: quantize, score, record
    ["results"],  # leaderboards, studies, reports from records
    ["sweep", "bench"],  # many jobs; ratios
    ["cli"],  # the command line: declarations and rendering
    ["__main__"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = p
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The qsink modules ``path`` imports anywhere in its body (``from pkg import submodule`` counts
    as the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qsink":
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
            found |= set(subs) if len(subs) == len(node.names) else {node.module, *subs}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "qsink"}
    return found


def top(module: str) -> str:
    """``qsink.measure.collect`` -> ``measure``; the root package is ``qsink``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "qsink"


def test_every_package_has_a_layer():
    missing = sorted({top(m) for m in modules()} - set(LAYER))
    assert not missing, f"add {missing} to LAYERS here and to the README's picture"


def test_imports_point_down():
    known = modules()
    wrong = []
    for name, path in known.items():
        for target in imports(path, known):
            a, b = top(name), top(target)
            if a != b and not LAYER[b] < LAYER[a]:
                wrong.append(f"{name} -> {target} ({a} is layer {LAYER[a]}, {b} layer {LAYER[b]})")
    assert not wrong, "imports that do not point down:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    known = modules()
    edges = {name: imports(path, known) - {name} for name, path in known.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in known:
        if name not in state:
            visit(name, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_command_line_starts_without_torch():
    """``qsink --help`` imports no torch, transformers, pandas or matplotlib (each command imports what it needs)."""
    code = ("import sys; from qsink.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('heavy:', *[m for m in ('torch', 'transformers', 'pandas', 'matplotlib') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "heavy:", proc.stdout[-300:]
