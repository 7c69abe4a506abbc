"""The code's shape, read from the sources with ast: imports go one way down the stack (no cycles, imports inside
functions and under TYPE_CHECKING included), the model file stays pure computation, and no function or file
outgrows a screen (60 lines) or a chapter (500 lines)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# lowest first: a module may import only from lower layers (README, "The code")
LAYERS = [
    ["llm.config", "llm.bpe"],
    ["llm.cli", "llm.tokenizer"],
    ["llm.ngram"],
    ["llm.model"],
    ["llm.decode"],
    ["llm.sample"],
    ["llm.checkpoint"],
    ["llm.corpus"],
    ["llm.data", "llm.optim", "llm.runtime", "llm.dist"],
    ["llm.auto"],
    ["llm.run"],
    ["llm.train"],
    ["llm.viz", "llm.attention", "llm.card", "llm.worker"],
    ["llm.hub", "llm.studio", "llm.tokenview", "llm.public"],
    ["llm"],  # the package's face: llm.load_checkpoint delegates Hub ids to llm.hub
    ["llm.generate", "playground", "train_cli"],
    ["training", "compare"],
    ["train_tab"],
    ["app"],
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
# what llm/model.py may import: pure computation, no I/O, no sampler
MODEL_IMPORTS = {"__future__", "math", "dataclasses", "typing", "functools", "collections.abc", "torch",
                 "torch.nn", "torch.nn.functional", "llm.ngram"}
MAX_FUNCTION_LINES, MAX_FILE_LINES = 60, 500


def sources() -> dict[str, Path]:
    """Module name -> file, for the package, the entry points and the app's modules."""
    mods = {name: ROOT / f"{name}.py" for name in ("app", "playground", "training", "compare", "train_tab", "train_cli")}
    mods["llm"] = ROOT / "llm" / "__init__.py"
    mods.update({f"llm.{p.stem}": p for p in (ROOT / "llm").glob("*.py") if p.stem != "__init__"})
    return mods


def imports(path: Path, known: set[str]) -> set[str]:
    """Every module `path` imports, wherever the import statement is (ast.walk sees function bodies and
    `if TYPE_CHECKING:` blocks alike). `from llm import x` is the submodule llm.x when there is one."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
    return found


def project_graph() -> dict[str, set[str]]:
    mods = sources()
    return {name: imports(path, set(mods)) & set(mods) - {name} for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_cycle_finder_finds_one():
    """The check below can fail: a made-up graph with a cycle through a lazy import is caught."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    assert find_cycle(project_graph()) is None


def test_every_module_has_a_layer_and_imports_only_below_it():
    graph = project_graph()
    assert set(graph) <= set(RANK), f"place these modules in LAYERS: {sorted(set(graph) - set(RANK))}"
    upward = [f"{a} -> {b}" for a, deps in graph.items() for b in deps if RANK[b] >= RANK[a]]
    assert not upward, f"imports that do not go down the stack: {upward}"


def test_the_model_file_is_pure_computation():
    path = ROOT / "llm" / "model.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert imports(path, set()) <= MODEL_IMPORTS, imports(path, set()) - MODEL_IMPORTS
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    attrs = {f"{n.value.id}.{n.attr}" for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    assert not calls & {"open", "print", "input"} and not attrs & {"torch.save", "torch.load", "os.environ"}


@pytest.mark.parametrize("name", sorted(sources()))
def test_functions_fit_a_screen_and_files_a_chapter(name):
    path = sources()[name]
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path.name}: {len(text.splitlines())} lines"
    functions = [n for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in functions
            if n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: {long}"
