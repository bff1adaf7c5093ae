"""The house rules of ffpipe's layout, read off the source: every module imports only its own room
and the rooms below it (no upward import, so no cycle between rooms), no two modules import each
other round a cycle, and files and functions stay short enough to read."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "ffpipe"
# Rooms from the bottom up; a room may import itself and any room of a lower layer, never one of
# its own layer (rooms of one layer stand apart) or above.
LAYERS = [
    {"errors"},
    {"plugins"},                       # what a user brings: 'package.module:function'
    {"config_fields"},                 # a documented field, the check that names a bad key
    {"config_data"},                   # the [data] section
    {"config_sections"},
    {"config"},
    {"kernels"},                       # device kernels and the layout they ask for
    {"models", "ff"},                  # architectures; the algorithm
    {"baselines"},                     # BP and classic FF, on ff's interfaces
    {"learners"},                      # the units wrapped for the chosen algorithm
    {"data", "telemetry"},             # datasets and loaders; what a run measures and shows
    {"pipeline"},                      # stages, messages, the one loop, replicas
    {"transport"},                     # channels and process groups, for the pipeline's protocol
    {"run"},                           # a run's life in a stage process and the run folder
    {"backends"},                      # how the stage processes are started
    {"inference"},                     # a trained run used: load_run, predict, export
    {"bench", "reports", "api"},       # benchmarks; runs read back; ffpipe.train
    {"cli"},
    {"__main__", "__init__"},
]
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 40


def _room(module: str) -> str:
    """ffpipe.pipeline.replicas.fan -> 'pipeline'; ffpipe.config -> 'config'; ffpipe -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(room: str) -> int:
    return next(i for i, rooms in enumerate(LAYERS) if room in rooms)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The ffpipe modules `path` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ffpipe"):
            if node.module != "ffpipe":  # `from ffpipe import config`: the module named, not the package
                found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ffpipe"))
    return {m for m in found if m in modules}


def test_every_room_is_placed_on_a_layer():
    rooms = {_room(m) for m in _modules()}
    placed = set().union(*LAYERS)
    assert rooms <= placed, f"rooms on no layer of this test: {sorted(rooms - placed)}; place them"


def test_no_module_imports_a_room_of_its_own_layer_or_above():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        room = _room(module)
        for target in _imports(path, modules):
            other = _room(target)
            if other != room and _layer(other) >= _layer(room):
                wrong.append(f"{module} imports {target} ({room} may not import {other})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    # a package imports what its __init__ imports; a module importing its own package is not a cycle
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_files_and_functions_stay_short():
    long_files, long_functions = [], []
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "launch").glob("*.py")]:
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(REPO)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length} lines")
    assert not long_files, f"files over {MAX_FILE_LINES} lines (split them by what they hold): {long_files}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"
