#!/usr/bin/env python3
"""Checks the module layering of the strom-broker crate (broker/src).

Reads every source file, collects which top-level modules each module uses (`use crate::x`,
`crate::x::...` paths, and `super::` paths that leave the module), leaving out `#[cfg(test)]`
code and test modules in their own files (`tests.rs`, `*_tests.rs`), and checks two rules:

1. Each module uses only modules of its own layer or the layers below it (LAYERS, bottom
   first). So group, metadata (the controller) and metrics never reach shard, kafka, admin or
   runtime; shard never reaches kafka, admin or runtime.
2. There is no import cycle between top-level modules, within a layer either.

Usage: scripts/check-layers.py [--graph] [broker/src]. Exit status 1 on a violation, with each
offending `file:line` printed. `--graph` prints the module graph. Run by tests/test_layering.py.
"""

import os
import re
import sys

# Bottom first. A module may use modules of its own layer and of the layers below.
LAYERS = [
    ["clock", "ids", "limits", "data_dir", "config"],
    ["metrics", "mesh", "metadata", "quorum"],
    ["group"],
    ["shard"],
    ["kafka", "admin"],
    ["runtime"],
    ["lib"],
]
LAYER_OF = {m: i for i, layer in enumerate(LAYERS) for m in layer}

USE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}")
CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
SUPER_PATH = re.compile(r"\b((?:super::)+)([a-z_][a-z0-9_]*)?")


def module_path(root, path):
    """`broker/src/shard/ops.rs` -> ["shard", "ops"]; lib.rs -> []."""
    parts = os.path.relpath(path, root)[: -len(".rs")].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts


def is_test_module(parts):
    """Test modules kept in their own files (`tests.rs`, `model_tests.rs` and below)."""
    return any(p == "tests" or p.endswith("_tests") for p in parts)


def strip_tests(src):
    """Blanks `#[cfg(test)]` items (a module or a single item), keeping line numbers."""
    out = list(src)
    for m in re.finditer(r"#\[cfg\(test\)\]", src):
        i = m.end()
        # The item ends at its matching closing brace, or at a `;` before any brace.
        depth, j = 0, i
        while j < len(src):
            c = src[j]
            if c == ";" and depth == 0:
                break
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        for k in range(m.start(), min(j + 1, len(src))):
            if out[k] != "\n":
                out[k] = " "
    return "".join(out)


def strip_comments(src):
    return re.sub(r"//[^\n]*", lambda m: " " * len(m.group(0)), src)


def top(parts):
    return parts[0] if parts else "lib"


def edges(root):
    """[(from, to, file, line)] between top-level modules."""
    found = []
    for d, _, files in os.walk(root):
        for name in sorted(files):
            if not name.endswith(".rs"):
                continue
            path = os.path.join(d, name)
            me = module_path(root, path)
            if is_test_module(me):
                continue
            src = strip_comments(strip_tests(open(path, encoding="utf-8").read()))

            def add(target, pos):
                if target and target != top(me) and target in LAYER_OF:
                    line = src.count("\n", 0, pos) + 1
                    found.append((top(me), target, path, line))

            for m in USE_GROUP.finditer(src):
                for item in m.group(1).split(","):
                    head = item.strip().split("::")[0]
                    add(head if head and head[0].islower() else "lib", m.start())
            for m in CRATE_PATH.finditer(src):
                name_ = m.group(1)
                # `crate::foo` where foo is an item of the crate root (not a module).
                add(name_ if name_ in LAYER_OF else "lib", m.start())
            if not me:
                # The crate root names its modules without `crate::`.
                for m in re.finditer(r"\b([a-z_][a-z0-9_]*)::", src):
                    if m.group(1) in LAYER_OF and src[max(0, m.start() - 2):m.start()] != "::":
                        add(m.group(1), m.start())
            for m in SUPER_PATH.finditer(src):
                ups = m.group(1).count("super::")
                base = me[:-ups] if ups <= len(me) else []
                target = base + ([m.group(2)] if m.group(2) else [])
                add(top(target), m.start())
    return found


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv):
    show = "--graph" in argv
    args = [a for a in argv if a != "--graph"]
    root = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "broker", "src")
    found = edges(root)
    graph = {}
    for a, b, _, _ in found:
        graph.setdefault(a, set()).add(b)
    modules = {top(module_path(root, os.path.join(d, f)))
               for d, _, fs in os.walk(root) for f in fs if f.endswith(".rs")}
    problems = []
    for m in sorted(modules - set(LAYER_OF)):
        problems.append(f"module `{m}` is in no layer: add it to LAYERS in {__file__}")
    for a, b, path, line in found:
        if LAYER_OF.get(b, -1) > LAYER_OF.get(a, len(LAYERS)):
            problems.append(f"{path}:{line}: `{a}` (layer {LAYER_OF[a]}) uses `{b}` "
                            f"(layer {LAYER_OF[b]}, above it)")
    for comp in cycles(graph):
        where = [f"{p}:{ln}: {a} -> {b}" for a, b, p, ln in found if a in comp and b in comp]
        problems.append("import cycle between " + ", ".join(comp) + ":\n  " + "\n  ".join(where))
    if show:
        for layer_no, layer in reversed(list(enumerate(LAYERS))):
            for m in layer:
                print(f"{layer_no} {m:9} -> {' '.join(sorted(graph.get(m, ()))) or '-'}")
    for p in problems:
        print(p)
    if not problems:
        print(f"layering ok: {len(modules)} top-level modules, {len(found)} uses, no cycles")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
