"""The package has no import cycle: one module never needs another that needs it back."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _graph(root: Path) -> dict[str, set[str]]:
    """Module -> modules of the package it imports (at any depth of the file, function bodies included)."""
    mods = {}
    for p in root.rglob("*.py"):
        rel = p.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = p
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                names = {base} | {f"{base}.{a.name}" for a in node.names}
            else:
                continue
            graph[m] |= {n for n in names if n in mods and n != m and not m.startswith(n + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if not state.get(v):
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for m in sorted(graph):
        if not state.get(m):
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle_in_src():
    graph = _graph(SRC)
    assert "simclr.train.trainer" in graph and "simclr.config" in graph["simclr.train.trainer"]
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_walker_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")  # a function-level, relative import
    assert _cycle(_graph(tmp_path)) == ["pkg.a", "pkg.sub.b", "pkg.a"]
