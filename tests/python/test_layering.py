"""The Python package's imports point one way (docs/architecture.md): every import of an
attnscope module, at module level or inside a function, is checked against the table below,
and the whole graph has no cycle. No package code is imported: the sources are parsed."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "python")
PKG = os.path.join(ROOT, "attnscope")

# module -> the attnscope modules it may import ("models.*": any module of attnscope.models).
# Keep in step with docs/architecture.md.
LOW = {"_lib", "_core", "labels", "marks", "files", "identity", "budget"}
ALLOWED = {
    "_lib": {"_core"},
    "_core": set(),
    "labels": set(),
    "marks": set(),
    "files": set(),  # atomic writes: every module that writes a file uses it
    "identity": set(),  # which model made a trace; the check wherever two are combined
    "budget": set(),  # the memory budget (the C++ rule's twin)
    "models": {"models.*", "_lib", "_core", "files", "streaming"},  # models produce archives: never api, trace or figures
    "chat": set(),
    "streaming": set(),
    "branches": {"marks", "streaming"},
    "trace": {"_core", "labels", "branches"},
    "windows": set(),  # token ranges: shared by plotting, view and atlas
    "atlas": {"windows", "identity"},
    "differential": set(),  # a differential head's maps from the trace's captures (duck-typed)
    # interventions through Model.logits, duck-typed on a trace that keeps its model
    "knockout": {"budget", "streaming"},
    "ablation": {"knockout", "budget", "streaming"},
    "value_weighted": set(),  # a head's value-weighted map from the trace's captures (duck-typed)
    "profile": {"marks", "windows"},  # a token's profile from the trace's attention rows (duck-typed)
    "interventions": {"_core"},  # Model.logits' intervention arguments -> the core's Knockout
    "api": {"_core", "interventions", "labels", "trace", "atlas", "chat", "streaming", "models", "models.*", "budget"},
    "dataset": {"_core", "api", "trace", "labels", "identity", "streaming"},
    "figure": {"marks", "files"},
    "plotting": {"figure", "marks", "dataset", "atlas", "profile", "differential", "windows", "identity",
                 "knockout", "ablation", "plotting.*"},
    "view": {"marks", "labels", "windows", "files", "budget", "identity", "live", "streaming"},
    "live": {"budget"},  # the view as a Jupyter widget (anywidget, optional): rows asked of the kernel
    "cli": LOW | {"__init__", "api", "trace", "atlas", "profile", "knockout", "ablation", "windows", "dataset", "plotting", "plotting.*", "view", "models", "models.*", "cli.*"},
    "__main__": {"cli"},
    "__init__": None,  # the package's face re-exports everything
}


def _modules():
    """{dotted name relative to the package: path}, e.g. "models.export"."""
    out = {}
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), PKG)[:-3].replace(os.sep, ".")
                out[rel] = os.path.join(dirpath, f)
    return out


MODULES = _modules()
KNOWN = set(MODULES) | {"_core"}


def _package_of(name):
    """The package a module's relative imports start from."""
    if name.endswith("__init__"):
        return name[: -len("__init__")].rstrip(".")
    return name.rpartition(".")[0]


def _resolve(base):
    """The attnscope module `base` names ("" = the package itself, i.e. __init__)."""
    if base in KNOWN:
        return base
    if f"{base}.__init__" in KNOWN:
        return f"{base}.__init__"
    return "__init__" if base == "" else base


def imports_of(name):
    """attnscope modules imported by module `name` (package-relative dotted names)."""
    tree = ast.parse(open(MODULES[name], encoding="utf-8").read(), MODULES[name])
    pkg = _package_of(name)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "attnscope" or a.name.startswith("attnscope."):
                    found.add(_resolve(a.name[len("attnscope."):] if "." in a.name else ""))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split(".") if pkg else []
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(p for p in parts + ([node.module] if node.module else []) if p)
            elif node.module and (node.module == "attnscope" or node.module.startswith("attnscope.")):
                base = node.module[len("attnscope."):] if "." in node.module else ""
            else:
                continue
            for a in node.names:  # `from . import x`: the submodule x, or a name from __init__
                sub = f"{base}.{a.name}" if base else a.name
                found.add(_resolve(sub) if (sub in KNOWN or f"{sub}.__init__" in KNOWN) else _resolve(base))
    found.discard(name)
    return found


def _group(name):
    """The table's key for a module: "models.llama" -> "models", "plotting.maps" -> "plotting"."""
    head = name.split(".")[0]
    return "__init__" if name == "__init__" else head


def _matches(target, allowed):
    head = target.split(".")[0]
    if target.endswith("__init__") and target != "__init__":
        target = target[: -len(".__init__")]
    return target in allowed or (f"{head}.*" in allowed and "." in target) or head in allowed and "." not in target


def test_every_module_is_in_the_table():
    missing = sorted({_group(m) for m in MODULES} - set(ALLOWED))
    assert not missing, f"add these modules to ALLOWED and to docs/architecture.md: {missing}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    allowed = ALLOWED[_group(name)]
    if allowed is None:
        return
    bad = sorted(t for t in imports_of(name) if _group(t) != _group(name) and not _matches(t, allowed))
    assert not bad, f"attnscope.{name} imports {bad}; allowed: {sorted(allowed)} (docs/architecture.md)"


def test_no_cycles():
    graph = {m: imports_of(m) & set(MODULES) for m in MODULES if m != "__init__"}
    for deps in graph.values():
        deps.discard("__init__")
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d in graph and not state.get(d):
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m)


def test_nothing_but_the_face_imports_the_package():
    """Modules below the CLI (the package's own user) never reach back up into attnscope/__init__."""
    offenders = sorted(m for m in MODULES if _group(m) not in ("__init__", "cli", "__main__")
                       and "__init__" in imports_of(m))
    assert not offenders, f"these modules import attnscope's __init__: {offenders}"


def test_the_checker_sees_a_violation(tmp_path):
    """The parser finds function-level and relative imports (a check that cannot fail is none)."""
    assert "api" in imports_of("dataset")
    assert "labels" in imports_of("trace")
    assert "models.hf_export" in imports_of("models.checkpoints")
    assert not _matches("api", ALLOWED["models"])
    assert _matches("models.export", ALLOWED["api"])


# The wrappers of the C++ objects: only they read the `_core` / `_model` they hold; every other
# module uses their public names (Trace.model, Trace.capture_spec, Model.prefill, core_of, ...).
WRAPPERS = {"api", "trace"}


def reach_ins(source, filename="<source>"):
    """(line, attribute) of every `x._core` / `x._model` in `source`."""
    return sorted((n.lineno, n.attr) for n in ast.walk(ast.parse(source, filename))
                  if isinstance(n, ast.Attribute) and n.attr in ("_core", "_model"))


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m not in WRAPPERS))
def test_no_reach_ins_outside_the_wrappers(name):
    found = reach_ins(open(MODULES[name], encoding="utf-8").read(), MODULES[name])
    assert not found, (f"attnscope.{name} reads {found} (line, attribute): use the public names of "
                       "api.Model / trace.Trace instead (docs/architecture.md)")


def test_the_reach_in_checker_sees_one():
    assert reach_ins("def f(t):\n    return t._model._core.prefill(1)\n") == [(2, "_core"), (2, "_model")]
    assert reach_ins("import attnscope._core\nx = attnscope._core.CaptureSpec()\n") == [(2, "_core")]


# ---------------------------------------------------------------- the C++ core's includes
CSRC = os.path.join(os.path.dirname(ROOT), "csrc", "attnscope")
ARCH = os.path.join(os.path.dirname(ROOT), "docs", "architecture.md")


def cpp_table(text):
    """{unit: (its files, the units it may include)} from docs/architecture.md's C++ table."""
    import re
    body = text.split("## C++ core", 1)[1].split("\n## ", 1)[0]
    table = {}
    for row in body.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([a-z_]+)(?:\.(?:h|cpp))?`", cells[0])
        unit = names[0]
        files = {f"{unit}.h", f"{unit}.cpp"} | {f"{n}.cpp" for n in names[1:]}
        deps = set() if cells[2] in ("—", "") else {d.strip() for d in cells[2].split(",")}
        table[unit] = (files, deps)
    return table


def cpp_includes(path):
    import re
    return set(re.findall(r"#include <attnscope/([a-z_]+)\.h>", open(path, encoding="utf-8").read()))


def test_cpp_includes_point_down_as_the_table_says():
    table = cpp_table(open(ARCH, encoding="utf-8").read())
    owner = {f: u for u, (files, _) in table.items() for f in files}
    on_disk = sorted(f for f in os.listdir(CSRC) if f.endswith((".h", ".cpp")))
    assert not [f for f in on_disk if f not in owner], "add these files to docs/architecture.md's C++ table"
    for f in on_disk:
        unit = owner[f]
        bad = sorted(cpp_includes(os.path.join(CSRC, f)) - {unit} - table[unit][1])
        assert not bad, f"csrc/attnscope/{f} includes {bad}; its unit `{unit}` may include {sorted(table[unit][1])}"
    state = {}

    def visit(u, path):
        assert state.get(u) != 1, "include cycle: " + " -> ".join(path + [u])
        if state.get(u) == 2:
            return
        state[u] = 1
        for d in sorted(table[u][1]):
            visit(d, path + [u])
        state[u] = 2
    for u in table:
        visit(u, [])


def test_the_include_checker_sees_a_violation():
    table = cpp_table("## C++ core\n| unit | what | includes |\n|---|---|---|\n| `json` | x | — |\n"
                      "| `spec` (+ `more.cpp`) | y | json |\n")
    assert table == {"json": ({"json.h", "json.cpp"}, set()), "spec": ({"spec.h", "spec.cpp", "more.cpp"}, {"json"})}
