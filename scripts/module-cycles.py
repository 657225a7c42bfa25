#!/usr/bin/env python3
"""Import circles between sibling modules of each crate (`python3 scripts/module-cycles.py [ROOT]`).

Reads every non-test source file of `crates/*/src` and `e2e/src`, maps each file to its module
path (`lib.rs`/`main.rs` the root, `a.rs` or `a/mod.rs` the module `a`), and collects the
paths it names through `crate::`, `super::` and `self::` (in `use` trees and in code).
A path from module `a::x` to `a::y::z` is an edge between the siblings `x` and `y` under
`a`; a path to an ancestor or a descendant is no edge (a module and its parent naming each
other is how Rust nests). Prints every circle (a strongly connected set of siblings) with
the files and names that close it; exits 1 if there is one. Test files (`tests.rs`,
`tests/`) and inline `#[cfg(test)] mod tests` are left out.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)


def module_of(src: pathlib.Path, file: pathlib.Path) -> tuple:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts.pop()
    return tuple(parts)


def strip(text: str) -> str:
    """The code without comments, strings and the inline test module."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)
    return text[: m.start()] if m else text


def expand(tree: str, prefix: str = "") -> list:
    """`a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e`."""
    tree = tree.strip()
    i = tree.find("{")
    if i < 0:
        path = prefix + tree.split(" as ")[0].strip()
        return [path.removesuffix("::self")] if tree else []
    head, body = tree[:i], tree[i + 1 : tree.rfind("}")]
    out, depth, start = [], 0, 0
    for k, ch in enumerate(body + ","):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            out += expand(body[start:k], prefix + head)
            start = k + 1
    return out


def paths_of(code: str) -> list:
    found = []
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        found += expand(m.group(1))
    found += re.findall(r"\b(?:crate|super|self)(?:::\w+)+", re.sub(r"\buse\s+[^;]+;", "", code))
    return found


def resolve(module: tuple, path: str, modules: set):
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    elif parts[0] in ("super", "self"):
        base = module
        while parts and parts[0] in ("super", "self"):
            if parts.pop(0) == "super":
                base = base[:-1]
        rest = parts
    else:
        return None
    target = base
    for p in rest:
        if target + (p,) in modules:
            target += (p,)
        else:
            break
    return target


def circles(graph: dict) -> list:
    """Strongly connected sets of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

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

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def check(name: str, src: pathlib.Path) -> int:
    files = [
        f
        for f in sorted(src.rglob("*.rs"))
        if f.name != "tests.rs" and "tests" not in f.relative_to(src).parts[:-1]
    ]
    modules = {module_of(src, f) for f in files}
    edges = {}  # (parent, from, to) -> [(file, path)]
    for f in files:
        module = module_of(src, f)
        for path in paths_of(strip(f.read_text())):
            target = resolve(module, path, modules)
            if target is None:
                continue
            n = 0
            while n < min(len(module), len(target)) and module[n] == target[n]:
                n += 1
            if n == len(module) or n == len(target):
                continue  # an ancestor or a descendant
            edges.setdefault((module[:n], module[n], target[n]), []).append((f.relative_to(ROOT), path))
    graphs = {}
    for parent, a, b in edges:
        graphs.setdefault(parent, {}).setdefault(a, set()).add(b)
    found = 0
    for parent, graph in sorted(graphs.items()):
        for scc in circles(graph):
            found += 1
            where = "::".join((name,) + parent)
            print(f"{where}: a circle between {', '.join(scc)}")
            for (p, a, b), uses in sorted(edges.items()):
                if p == parent and a in scc and b in scc:
                    file, path = uses[0]
                    print(f"  {a} -> {b}: {file} names {path}" + (f" (and {len(uses) - 1} more)" if len(uses) > 1 else ""))
    return found


def main() -> int:
    crates = [(d.name, d / "src") for d in sorted((ROOT / "crates").iterdir()) if (d / "src").is_dir()]
    crates.append(("e2e", ROOT / "e2e" / "src"))
    total = sum(check(name, src) for name, src in crates)
    print(f"{total} circle(s) in {len(crates)} crates" if total else f"no circle in {len(crates)} crates")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
