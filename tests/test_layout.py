"""The package's shape: dependencies point one way, with no import loop, even a type-only one."""
import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "relay")


def import_graph() -> dict:
    """{module: modules of the package it imports}, read from every relative import (inside
    `if TYPE_CHECKING:` too: a loop there is a loop of the design)."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            name = os.path.relpath(path[:-3], os.path.dirname(PACKAGE)).replace(os.sep, ".").replace(".__init__", "")
            package = name if f == "__init__.py" else name.rsplit(".", 1)[0]
            deps = set()
            with open(path, encoding="utf-8") as src:
                tree = ast.parse(src.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                    deps.add(base)
                    deps.update(f"{base}.{alias.name}" for alias in node.names)
            modules[name] = deps
    return {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}


def test_the_package_has_no_import_loop():
    graph = import_graph()
    assert "relay.pump" in graph and "relay.service" in graph
    loops, state = [], {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                loops.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"
    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not loops, loops


def test_the_pump_knows_its_owner_only_through_a_protocol():
    graph = import_graph()
    assert not {"relay.route_server", "relay.service"} & graph["relay.pump"]   # Splice -> Owner (a Protocol)
    assert "relay.pump" not in graph["relay.native_pump"]       # the native pump calls back on_closed
    assert not any(m.startswith("relay.wsl") for m in graph["relay.tws"] | graph["relay.config"])
