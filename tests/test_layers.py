"""The layers of cursor_grpc, read from the imports of its modules (issue 10,
docs/storage.md "Layers"): protos → wire → services → live/auth → storage
contract → backends, each importing only downwards. cluster/ (the doorbell
between instances) stands apart: it imports only config, errors and clock.

The storage contract is every module directly in cursor_grpc/storage/; each
subpackage of it (storage/sqlite/, …) is a backend. Every import counts,
also one inside a function or under `if TYPE_CHECKING`, except where a rule
says "at module level". Each rule reports all its violations at once, with
file and line.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cursor_grpc"
STORAGE = PACKAGE / "storage"
BACKENDS = sorted(f"cursor_grpc.storage.{p.name}" for p in STORAGE.iterdir() if (p / "__init__.py").exists())
CONTRACT = sorted(
    "cursor_grpc.storage" if p.name == "__init__.py" else f"cursor_grpc.storage.{p.stem}" for p in STORAGE.glob("*.py")
)
DRIVERS = ("apsw", "sqlite3", "psycopg", "psycopg_pool", "asyncpg")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. cursor_grpc.live.broadcaster
    file: Path
    line: int
    target: str  # the imported module, resolved
    module_level: bool  # runs when the importing module is imported

    def __str__(self) -> str:
        where = "" if self.module_level else " (inside a function)"
        return f"{self.file.relative_to(ROOT)}:{self.line}: imports {self.target}{where}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether `name` is a module or package of this repository."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


class _Imports(ast.NodeVisitor):
    """Every import of one module, resolved to absolute module names."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.source = module_name(path)
        self.package = self.source if path.name == "__init__.py" else self.source.rpartition(".")[0]
        self.depth = 0  # functions we are inside
        self.found: list[Import] = []

    def _add(self, node: ast.stmt | ast.expr, target: str) -> None:
        self.found.append(Import(self.source, self.path, node.lineno, target, self.depth == 0))

    def _in_function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _in_function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        # `from cursor_grpc.storage import sqlite` imports the subpackage;
        # `from cursor_grpc.storage import Store, Event` the package, once.
        children = [f"{module}.{alias.name}" for alias in node.names]
        for target in dict.fromkeys(child if is_module(child) else module for child in children):
            self._add(node, target)

    def visit_Call(self, node: ast.Call) -> None:
        """`importlib.import_module("…")` and `__import__("…")` with a literal name."""
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in {"import_module", "__import__"} and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self._add(node, node.args[0].value)
        self.generic_visit(node)


def imports_of(path: Path, text: str | None = None) -> list[Import]:
    visitor = _Imports(path)
    visitor.visit(ast.parse(path.read_text(encoding="utf-8") if text is None else text, filename=str(path)))
    return visitor.found


@functools.cache
def package_imports() -> list[Import]:
    """Every import of every module under cursor_grpc/, read once per run."""
    return [found for path in sorted(PACKAGE.rglob("*.py")) for found in imports_of(path)]


@dataclass(frozen=True)
class Rule:
    says: str
    applies_to: Callable[[str], bool]  # by importing module
    forbidden: Callable[[Import], bool]


CLUSTER_MAY_IMPORT = ("cursor_grpc.cluster", "cursor_grpc.config", "cursor_grpc.errors", "cursor_grpc.clock")
UPPER = ("cursor_grpc.services", "cursor_grpc.live", "cursor_grpc.auth",
         "cursor_grpc.metrics", "cursor_grpc.app", "cursor_grpc.cli")
RULES = {
    "apsw_only_in_the_sqlite_backend": Rule(
        "no module outside cursor_grpc/storage/sqlite/ imports apsw",
        lambda source: not within(source, "cursor_grpc.storage.sqlite"),
        lambda i: within(i.target, "apsw"),
    ),
    "the_upper_layers_import_only_the_storage_contract": Rule(
        "services/, live/, auth/, metrics.py, app.py and cli.py import storage only from the contract "
        f"({', '.join(CONTRACT)}), never from a backend",
        lambda source: within(source, *UPPER),
        lambda i: within(i.target, "cursor_grpc.storage") and i.target not in CONTRACT,
    ),
    "storage_imports_nothing_above_it": Rule(
        "nothing in cursor_grpc/storage/ imports services/, live/ or ops/",
        lambda source: within(source, "cursor_grpc.storage"),
        lambda i: within(i.target, "cursor_grpc.services", "cursor_grpc.live", "cursor_grpc.ops"),
    ),
    "the_contract_imports_no_backend_at_module_level": Rule(
        f"the contract modules ({', '.join(CONTRACT)}) import no backend ({', '.join(BACKENDS)}) "
        f"and no database driver ({', '.join(DRIVERS)}) at module level",
        lambda source: source in CONTRACT,
        lambda i: i.module_level and within(i.target, *BACKENDS, *DRIVERS),
    ),
    "live_knows_neither_grpc_nor_services": Rule(
        "live/ imports nothing from grpc (grpc, grpc_status, grpc_health, …) or services/",
        lambda source: within(source, "cursor_grpc.live"),
        lambda i: within(i.target, "grpc", "cursor_grpc.services") or i.target.startswith("grpc_"),
    ),
    "the_cluster_imports_only_config_errors_and_clock": Rule(
        "cluster/ (the doorbell between instances, which storage backends use) imports nothing of "
        "cursor_grpc but config, errors and clock",
        lambda source: within(source, "cursor_grpc.cluster"),
        lambda i: within(i.target, "cursor_grpc") and not within(i.target, *CLUSTER_MAY_IMPORT),
    ),
    "the_event_codec_sits_below_services_and_live": Rule(
        "wire.py (the event codec both services/ and live/ use) imports neither of them, nor a storage backend",
        lambda source: source == "cursor_grpc.wire",
        lambda i: within(i.target, "cursor_grpc.services", "cursor_grpc.live", *BACKENDS),
    ),
}


def violations(rule: Rule, imports: list[Import]) -> list[Import]:
    return [i for i in imports if rule.applies_to(i.source) and rule.forbidden(i)]


def test_the_layers_named_by_the_rules_exist() -> None:
    """A renamed or moved layer must not make the rules below pass by finding nothing."""
    for name in (*UPPER, "cursor_grpc.wire", "cursor_grpc.storage", "cursor_grpc.storage.sqlite", "cursor_grpc.ops",
                 "cursor_grpc.cluster"):
        assert is_module(name), f"{name} is gone: update tests/test_layers.py and docs/storage.md"
    assert {"cursor_grpc.storage", "cursor_grpc.storage.contract", "cursor_grpc.storage.records"} <= set(CONTRACT)
    assert len({i.source for i in package_imports()}) > 40, "the walk found the package's modules"


def test_the_rules_see_every_way_of_importing() -> None:
    """Relative imports, a subpackage imported by name, imports inside
    functions and by importlib all count, so the rules below cannot pass by
    missing them."""
    fake = PACKAGE / "live" / "layer_check.py"
    found = imports_of(fake, (
        "import importlib\n"
        "from ..storage import sqlite, Store\n"
        "from . import broadcaster\n"
        "import grpc.aio\n"
        "def later():\n"
        "    import apsw\n"
        "    importlib.import_module('cursor_grpc.services.reader')\n"
    ))
    assert [(i.line, i.target, i.module_level) for i in found] == [
        (1, "importlib", True), (2, "cursor_grpc.storage.sqlite", True), (2, "cursor_grpc.storage", True),
        (3, "cursor_grpc.live.broadcaster", True), (4, "grpc.aio", True), (6, "apsw", False),
        (7, "cursor_grpc.services.reader", False),
    ]
    assert [i.target for i in violations(RULES["apsw_only_in_the_sqlite_backend"], found)] == ["apsw"]
    assert [i.target for i in violations(RULES["the_upper_layers_import_only_the_storage_contract"], found)] == \
        ["cursor_grpc.storage.sqlite"]
    assert [i.target for i in violations(RULES["live_knows_neither_grpc_nor_services"], found)] == \
        ["grpc.aio", "cursor_grpc.services.reader"]
    assert str(found[-1]) == \
        "cursor_grpc/live/layer_check.py:7: imports cursor_grpc.services.reader (inside a function)"


@pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))
def test_layer_rule(rule: Rule) -> None:
    found = violations(rule, package_imports())
    assert not found, f"{rule.says}; {len(found)} violation(s):\n" + "\n".join(map(str, found))
