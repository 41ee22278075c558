#!/usr/bin/env python3
"""Prints the crate's module imports as cycles between files and between layers.

Usage: scripts/import-graph.py [--check]

A file's module is its path under src/ (`pool/driver.rs` -> `pool::driver`); its layer is the
first segment (`pool`). Every `crate::a::b` path in a file (in `use` lines or inline) is an
import of the deepest module of that path that exists. With --check, exits non-zero when two
layers import each other, or when the child side (`child`, `func`) imports the parent side.
"""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
CHILD_SIDE = {"child", "func", "inside"}
PARENT_SIDE = {"supervise", "launch", "task", "pool", "map", "executor", "scope", "default"}


def module_of(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return "::".join(parts) or "crate"


def main() -> int:
    files = {module_of(p): p for p in SRC.rglob("*.rs")}
    modules = set(files)
    edges = {m: set() for m in modules}
    for module, path in files.items():
        text = path.read_text()
        # drop comments and the unit tests, which may reach anywhere
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", text, flags=re.S)
        text = re.sub(r"//[^\n]*", "", text)
        paths = re.findall(r"crate((?:::\w+)+)", text)
        # grouped imports: use crate::{a::b, c};
        for group in re.findall(r"crate::\{([^;]*)\}", text):
            for item in re.split(r",", group):
                item = item.strip()
                if item:
                    paths.append("::" + re.sub(r"\s", "", item).replace("{", "").replace("}", ""))
        for p in paths:
            segments = [s for s in p.split("::") if s]
            target = None
            for n in range(len(segments), 0, -1):
                candidate = "::".join(segments[:n])
                if candidate in modules:
                    target = candidate
                    break
            if target and target != module:
                edges[module].add(target)

    def layer(m: str) -> str:
        return m.split("::")[0]

    layer_edges = {}
    for a, targets in edges.items():
        for b in targets:
            if layer(a) != layer(b):
                layer_edges.setdefault(layer(a), set()).add(layer(b))

    def cycles(graph):
        index, low, stack, on, out = {}, {}, [], set(), []
        counter = [0]

        def visit(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in graph.get(v, ()):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                scc = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    scc.append(w)
                    if w == v:
                        break
                if len(scc) > 1:
                    out.append(sorted(scc))

        for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
            if v not in index:
                visit(v)
        return out

    file_cycles = cycles(edges)
    layer_cycles = cycles(layer_edges)
    print(f"{len(modules)} modules")
    print(f"import cycles between files: {len(file_cycles)}")
    for c in file_cycles:
        print("  " + " <-> ".join(c))
    print(f"import cycles between layers: {len(layer_cycles)}")
    for c in layer_cycles:
        print("  " + " <-> ".join(c))
    wrong = sorted(
        f"{a} -> {b}"
        for a, targets in edges.items()
        for b in targets
        if layer(a) in CHILD_SIDE and layer(b) in PARENT_SIDE
    )
    print(f"child side importing the parent side: {len(wrong)}")
    for w in wrong:
        print("  " + w)
    if "--check" in sys.argv and (layer_cycles or wrong):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
