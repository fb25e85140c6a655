"""The import contracts of pyproject.toml's [tool.layers]: layers, independent siblings, forbidden
edges, no cycles. Imports are read from the source (every `import`, inside functions too)."""

import ast
import os
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {"tests", "benchmarks", "scripts", "configs", "docs", ".ci", ".git"}


def project_files(root=ROOT):
    """{module name: path} of the project's modules (root *.py and package files)."""
    found = {}
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.endswith(".py"):
            found[name[:-3]] = path
        elif os.path.isfile(os.path.join(path, "__init__.py")) and name not in SKIP:
            for file in sorted(os.listdir(path)):
                if file.endswith(".py"):
                    module = name if file == "__init__.py" else f"{name}.{file[:-3]}"
                    found[module] = os.path.join(path, file)
    return found


def imports_of(path, module, modules):
    """Project modules that `path` imports (absolute and relative imports, at any depth)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([p for p in parts if p] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(root=ROOT):
    modules = project_files(root)
    return {m: imports_of(p, m, modules) for m, p in modules.items()}


def _top(module):
    return module.split(".")[0]


def contract_violations(graph, order, forbidden):
    """Human-readable violations of the layer order, the sibling groups and the forbidden edges."""
    layer_of, group_of = {}, {}
    for index, layer in enumerate(order):
        for g, group in enumerate(layer.split("|")):
            for name in group.split():
                layer_of[name], group_of[name] = index, (index, g)
    problems = [f"{m} is in no layer of [tool.layers]" for m in graph if _top(m) not in layer_of]
    for module, targets in graph.items():
        for target in targets:
            a, b = _top(module), _top(target)
            if a not in layer_of or b not in layer_of or a == b:
                continue
            if layer_of[b] < layer_of[a]:
                problems.append(f"{module} imports {target} from a higher layer")
            elif layer_of[a] == layer_of[b] and group_of[a] != group_of[b]:
                problems.append(f"{module} imports {target}, an independent sibling")
    for rule in forbidden:
        source, target = (s.strip() for s in rule.split("->"))
        for module, targets in graph.items():
            if _top(module) == source or module == source:
                for t in targets:
                    if t == target or _top(t) == target:
                        problems.append(f"{module} imports {t} (forbidden: {rule})")
    return problems


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def contracts():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["layers"]


def test_import_contracts_hold(contracts):
    graph = import_graph()
    assert contract_violations(graph, contracts["order"], contracts["forbidden"]) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_checks_can_fail(contracts):
    """A back-edge, a sibling import, a forbidden edge and a cycle are all reported."""
    graph = import_graph()
    graph["training"] = graph["training"] | {"options", "interop"}
    graph["modeling_groupbert"] = graph["modeling_groupbert"] | {"modeling"}
    problems = contract_violations(graph, contracts["order"], contracts["forbidden"])
    assert "training imports options from a higher layer" in problems
    assert "training imports interop, an independent sibling" in problems
    assert any("modeling_groupbert imports modeling (forbidden" in p for p in problems)
    assert ["modeling", "modeling_groupbert"] in cycles(graph)
    assert contract_violations({"newmodule": set()}, contracts["order"], []) == [
        "newmodule is in no layer of [tool.layers]"
    ]


def test_no_module_is_too_long():
    """STYLE: no 1,000-line modules (the issue's bound: about 900)."""
    lengths = {}
    for module, path in project_files().items():
        with open(path, encoding="utf-8") as f:
            lengths[module] = sum(1 for _ in f)
    assert {m: n for m, n in lengths.items() if n > 950} == {}
