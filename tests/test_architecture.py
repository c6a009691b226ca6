"""The shape of the code, checked: the import graph has no cycles and no arrow running back up the layers, and
the verbs that touch no model load neither torch nor transformers."""

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "leantune"

# bottom to top; a module may import its own layer and the ones below (plan and models are siblings: neither
# imports the other)
LAYERS = [
    {"errors", "atomic", "paths", "config", "assets", "gguf_header"},
    {"data"},
    {"plan", "models"},
    {"runs"},
    {"evaluation"},
    {"training"},
    {"generate", "demo", "export", "serve", "drift", "launch", "ui"},
    {"cli", "(root)", "__main__"},
]
SIBLINGS = {("plan", "models"), ("models", "plan")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if candidate in modules else target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {t for t in found if t in modules and t != name}
    return graph


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "(root)"
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_the_import_graph_has_no_cycles():
    graph, state, cycles = import_graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_imports_point_down_the_layers():
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            a, b = module.split(".")[1:2] or ["(root)"], target.split(".")[1:2] or ["(root)"]
            if layer_of(target) > layer_of(module) or (a[0], b[0]) in SIBLINGS:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_every_top_level_module_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    tops = {"(root)" if t == "__init__" else t for t in tops}
    assert tops <= set().union(*LAYERS)


LIGHT_VERBS = [["plan", "--model", "smollm2-135m", "--gpu", "l4", "--tokens", "20M"], ["runs", "ls"], ["runs", "show", "RUN"],
               ["runs", "diff", "RUN", "RUN"], ["budget"], ["registry", "ls"], ["data", "list"]]


@pytest.mark.parametrize("argv", LIGHT_VERBS, ids=lambda a: " ".join(a[:2]))
def test_verbs_that_touch_no_model_import_no_torch(argv, tiny_model_dir, chat_file, tmp_path):
    from conftest import tiny_overrides
    from leantune import train

    runs = tmp_path / "runs"
    if "RUN" in argv:
        run = train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **{"training.max_steps": 1})).run_dir
        argv = [run.name if a == "RUN" else a for a in argv]
    if argv[0] in ("runs", "budget", "registry"):
        argv = argv + ["--runs-dir", str(runs)]
    code = ("import sys, time\nstarted = time.perf_counter()\nfrom leantune.cli import main\nsys.argv = ['leantune', *"
            f"{argv!r}]\ntry:\n    main()\nexcept SystemExit as e:\n    code = e.code\nheavy = [m for m in ('torch', 'transformers') "
            "if m in sys.modules]\nprint('RESULT', code, heavy, round(time.perf_counter() - started, 3))")
    # once untimed: a first use may fill a cache under LEANTUNE_HOME (data list counts the built-in datasets once)
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "COLUMNS": "150"})
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "COLUMNS": "150"})
    wall = time.perf_counter() - started
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT"))
    _, exit_code, heavy, seconds = line.split(" ", 3)
    assert exit_code in ("0", "None"), done.stdout + done.stderr
    assert heavy == "[]", f"{argv} imported {heavy}"
    assert float(seconds.split()[-1]) < 1.0 and wall < 5.0  # the answer within a second of the interpreter's start
