"""The package's rooms keep their one-way order: every module of msmtpd
imports only from its own subpackage or one below it (base < system < net <
policy < smtp < delivery < server < commands), function-level imports
included, so that a room can be read, tested and loaded without the rooms
above it.  Also: the LATE_MODULES-style lists (modules imported before
privileges are dropped, by name) name modules that exist, so that a rename
cannot turn them into a silent no-op."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

PACKAGE = Path(__file__).resolve().parents[2] / "msmtpd"
ORDER = ("base", "system", "net", "policy", "smtp", "delivery", "server", "commands")
TOP = len(ORDER)  # msmtpd/__main__.py and the like: above every room
# Upward imports known and owned by a change in flight; each entry is
# (importing module, imported module).  Remove an entry when its fix lands.
TOLERATED: set = set()  # (module, import) pairs allowed to go upward: none


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Iterator[Tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield module_name(path), path


def rank(module: str) -> Optional[int]:
    """The room's place in ORDER; TOP for a module beside the rooms
    (msmtpd/__main__.py); None for what is not msmtpd, or msmtpd itself
    (its __init__ holds only the version)."""
    parts = module.split(".")
    if parts[0] != "msmtpd" or len(parts) == 1:
        return None
    if parts[1] in ORDER:
        return ORDER.index(parts[1])
    return TOP if (PACKAGE / f"{parts[1]}.py").exists() else None


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:`` (its else branch counts)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                yield child
                yield from runtime_nodes(child)
            continue
        yield node
        yield from runtime_nodes(node)


def imported(module: str, path: Path) -> Iterator[str]:
    """The msmtpd modules (or subpackages) ``module`` imports at run time."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "msmtpd":  # from msmtpd import base: the names are subpackages
                yield from (f"msmtpd.{alias.name}" for alias in node.names)
            else:
                yield base


def upward_imports() -> List[str]:
    found = []
    for module, path in modules():
        own = rank(module)
        for target in imported(module, path):
            theirs = rank(target)
            if own is None or theirs is None or theirs <= own or (module, target) in TOLERATED:
                continue
            found.append(f"{module} imports {target}")
    return found


def test_every_module_lives_in_a_room() -> None:
    rooms = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert rooms == set(ORDER)


def test_imports_go_only_to_the_same_or_a_lower_room() -> None:
    assert upward_imports() == []


def test_the_check_sees_relative_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import msmtpd.server.worker\n"
        "from . import replies\n"
        "from ..delivery import pipe_command\n"
        "from msmtpd import commands\n"
        "def late() -> None:\n"
        "    from msmtpd.net.connection import Connection\n"
        "if TYPE_CHECKING:\n"
        "    from msmtpd.commands.cli import Options\n"
        "else:\n"
        "    import msmtpd.policy.senders\n")
    assert list(imported("msmtpd.smtp.probe", source)) == [
        "typing", "msmtpd.server.worker", "msmtpd.smtp", "msmtpd.delivery", "msmtpd.commands",
        "msmtpd.net.connection", "msmtpd.policy.senders"]


def late_module_lists() -> Dict[str, Tuple[str, ...]]:
    """Each module-level ``*LATE_MODULES = (...)`` of msmtpd, by its place."""
    lists = {}
    for module, path in modules():
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Assign) and any(
                    isinstance(target, ast.Name) and target.id.endswith("LATE_MODULES")
                    for target in node.targets):
                names = ast.literal_eval(node.value)
                lists[f"{module}.{node.targets[0].id}"] = tuple(names)  # type: ignore[attr-defined]
    return lists


def test_the_late_module_lists_name_modules_that_exist() -> None:
    lists = late_module_lists()
    assert "msmtpd.server.service.LATE_MODULES" in lists
    missing = [f"{where}: {name}" for where, names in lists.items() for name in names
               if importlib.util.find_spec(name) is None]
    assert missing == []
