"""The package's structure as the design states it: no import loops, the client on the contract
and never on serving, and the contract light. Read from the source (every import, those inside
functions too), not from what one run happened to import."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "compositor"


def module_imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports anywhere in its source."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_back_into_a_loop():
    assert cycles(module_imports()) == []


def test_the_client_depends_on_the_contract_and_never_on_serving():
    graph = module_imports()
    client = {name: targets for name, targets in graph.items() if name.startswith("compositor.client")}
    assert client, "no client modules found"
    offending = {name: sorted(t for t in targets if t.startswith("compositor.serving")) for name, targets in client.items()}
    assert {name: targets for name, targets in offending.items() if targets} == {}
    assert any(t.startswith("compositor.contract") for targets in client.values() for t in targets)


def test_the_contract_imports_only_itself():
    graph = module_imports()
    contract = {name: targets for name, targets in graph.items() if name.startswith("compositor.contract")}
    assert {name for name in contract} >= {"compositor.contract.spec", "compositor.contract.stages",
                                           "compositor.contract.parameters", "compositor.contract.provenance"}
    outside = {name: sorted(t for t in targets if not t.startswith("compositor.contract")) for name, targets in contract.items()}
    assert {name: targets for name, targets in outside.items() if targets} == {}
