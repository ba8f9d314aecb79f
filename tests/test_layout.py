"""The package's shape: no import cycles, deferred imports carry their reason, one module per command,
option help written once (in the config's field metadata)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import typer

PACKAGE = Path(__file__).resolve().parents[1] / "capalign"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[ast.stmt, list[str]]]:
    """Every import statement of a module (top-level or inside functions) with the capalign modules it names."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: None if path.name == "__init__.py" else -1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        out.append((node, [t for t in targets if t in modules and t != name]))
    return out


def test_no_import_cycles():
    modules = _modules()
    graph = {name: {t for _, targets in _imports(name, path, modules) for t in targets} for name, path in modules.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_function_level_imports_say_why_they_are_deferred():
    modules = _modules()
    unexplained = []
    for name, path in modules.items():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                if "# deferred:" not in lines[node.lineno - 1]:
                    unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not unexplained, "function-level imports without a '# deferred: reason': " + ", ".join(unexplained)


def test_each_command_has_its_own_module():
    from capalign.cli import COMMANDS, app

    names = {c.name for c in typer.main.get_command(app).commands.values()}
    assert names == {"fetch", "pretrain", "align", "caption", "evaluate", "compare", "demo", "push"}
    for command in COMMANDS:
        assert command.__module__ == f"capalign.cli.{command.__name__}"


def test_option_help_comes_from_the_config_field():
    from capalign.cli import app
    from capalign.config import help_for

    group = typer.main.get_command(app)
    for command, option, key in (("pretrain", "lr", "train.lr"), ("pretrain", "mixed_precision", "train.mixed_precision"),
                                 ("align", "beta", "align.beta"), ("align", "rounds", "align.rounds")):
        params = {p.name: p for p in group.commands[command].params}
        assert params[option].help == help_for(key)


def test_architectures_are_chosen_only_by_the_registry():
    """No `arch == ...`, `arch in (...)` or `info["arch"]` switch outside capalign.models.registry:
    what differs between architectures belongs to their classes (capalign.models.architectures)."""
    import re

    switch = re.compile(r"""(\barch\s*(==|!=|\bnot\s+in\b|\bin\b))|(\[\s*["']arch["']\s*\])""")
    allowed = {PACKAGE / "models" / "registry.py"}
    found = [f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py")) if path not in allowed
             for number, line in enumerate(path.read_text().splitlines(), 1) if switch.search(line)]
    assert not found, "architecture switches outside the registry:\n" + "\n".join(found)


def _library_breaches(name: str, path: Path, modules: dict[str, Path]) -> list[str]:
    """What a module does that only capalign.cli may: import capalign.cli or rich, print, write to
    sys.stdout / sys.stderr."""
    in_cli = name in ("capalign.cli", "capalign.__main__") or name.startswith("capalign.cli.")
    where = f"{path.relative_to(PACKAGE.parent)}"
    found = []
    for node, targets in _imports(name, path, modules):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if not in_cli and any(t == "capalign.cli" or t.startswith("capalign.cli.") for t in targets):
            found.append(f"{where}:{node.lineno}: imports the command line's console ({', '.join(targets)})")
        if not in_cli and any(n == "rich" or n.startswith("rich.") for n in names):
            found.append(f"{where}:{node.lineno}: imports rich")
    for node in ast.walk(ast.parse(path.read_text())):
        if in_cli or not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "print":
            found.append(f"{where}:{node.lineno}: prints (log through capalign.reporting)")
        if (isinstance(func, ast.Attribute) and func.attr == "write" and isinstance(func.value, ast.Attribute)
                and func.value.attr in ("stdout", "stderr") and isinstance(func.value.value, ast.Name) and func.value.value.id == "sys"):
            found.append(f"{where}:{node.lineno}: writes to sys.{func.value.attr} (log through capalign.reporting)")
    return found


def test_the_library_raises_and_logs_only_the_command_line_speaks():
    """Outside capalign.cli no module owns the console (no capalign.cli import, no rich, no print);
    errors are capalign.errors' classes, which the command line alone turns into exit 2."""
    modules = _modules()
    found = [breach for name, path in sorted(modules.items()) for breach in _library_breaches(name, path, modules)]
    assert not found, "library modules speaking like the CLI:\n" + "\n".join(found)
    errors = importlib.import_module("capalign.errors")
    classes = [c for c in vars(errors).values() if isinstance(c, type) and c.__module__ == "capalign.errors"]
    assert all(issubclass(c, errors.CapalignError) for c in classes)
