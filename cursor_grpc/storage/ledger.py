"""The backend-neutral part of the migration ledger.

Both backends keep numbered migration files `NNNN_name.sql` (SQLite also
`NNNN_name.py`) and a ledger table `schema_migrations(name, checksum,
applied_at)` recording each one applied. The rules comparing the two live
here: a database holding a migration this code does not know, or one whose
file was edited after it was applied, is refused, since running against it
could corrupt data written by a newer or different version. How the ledger
is read and how a file is applied belong to each backend
(cursor_grpc/storage/sqlite/migrations.py, cursor_grpc/storage/postgres/migrations.py).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cursor_grpc.storage.contract import MigrationError

NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.(sql|py)$")

# name -> (checksum, applied_at), as a backend reads its ledger.
Ledger = Mapping[str, tuple[str, str]]
# For `migrate --status`: applied, pending, unknown and modified (name, applied_at).
Status = dict[str, list[tuple[str, str]]]


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def is_python(self) -> bool:
        return self.name.endswith(".py")

    def describe(self) -> str:
        """What it does, for `migrate --dry-run`: the SQL, or a Python
        migration's docstring."""
        if not self.is_python:
            return self.sql.strip()
        doc = ast.get_docstring(ast.parse(self.sql)) or "(a Python migration without a docstring)"
        return f"Python migration, run in its own transactions:\n{doc}"


def package_folder(package: str) -> Path:
    """The folder of an installed data package such as `cursor_grpc.sql`.
    Those have no __init__.py, and importlib.resources.files() gives a
    namespace package's MultiplexedPath, whose str() is not a path."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MigrationError(f"the migration files are missing: no package {package} is installed")
    return Path(next(iter(spec.submodule_search_locations)))


def load_migrations(folder: Path) -> list[Migration]:
    """The migration files of `folder`, in order; refuses a badly named file
    and two files sharing a number."""
    found = []
    for path in sorted([*folder.glob("*.sql"), *folder.glob("*.py")]):
        if path.name == "__init__.py":
            continue
        if not NAME.match(path.name):
            raise MigrationError(f"migration file {path.name} is not named NNNN_lowercase_name.sql (or .py)")
        found.append(Migration(path.name, path.read_text(encoding="utf-8")))
    numbers = [m.name[:4] for m in found]
    if len(set(numbers)) != len(numbers):
        raise MigrationError("two migration files share a number")
    return found


def check_ledger(done: Ledger, known: Sequence[Migration]) -> list[Migration]:
    """The pending migrations of `known`, after checking the ledger `done`
    against the files: refuses unknown and modified migrations."""
    by_name = {m.name: m for m in known}
    unknown = sorted(set(done) - set(by_name))
    if unknown:
        raise MigrationError(
            f"the database has migrations this version does not know: {', '.join(unknown)}; "
            "run a version of cursor-grpc that includes them"
        )
    for name, (checksum, _) in done.items():
        if by_name[name].checksum != checksum:
            raise MigrationError(
                f"migration {name} was applied but its file has been modified since; "
                "restore the original file and add a new migration instead"
            )
    return [m for m in known if m.name not in done]


def status_of_ledger(done: Ledger, known: Sequence[Migration]) -> Status:
    """For `migrate --status`, from a ledger already read: applied (name,
    applied_at), pending (name, ''), unknown (in the database, not in this
    version) and modified (applied, file changed since)."""
    by_name = {m.name: m for m in known}
    ordered = sorted(done.items())
    return {
        "applied": [(name, at) for name, (_, at) in ordered],
        "pending": [(m.name, "") for m in known if m.name not in done],
        "unknown": [(name, at) for name, (_, at) in ordered if name not in by_name],
        "modified": [(name, at) for name, (checksum, at) in ordered
                     if name in by_name and by_name[name].checksum != checksum],
    }


def all_pending(known: Sequence[Migration]) -> Status:
    """The status of a database that has no ledger yet."""
    return {"applied": [], "pending": [(m.name, "") for m in known], "unknown": [], "modified": []}


def migrate_hint(db: str) -> str:
    """What to run, naming the database the command was given (already safe
    to show), so that the advice migrates that one and never creates another."""
    quoted = shlex.quote(db)
    return f"run `cursor-grpc migrate --db {quoted}` first, or serve with `cursor-grpc serve --migrate --db {quoted}`"


def pending_error(label: str, pending: Sequence[Migration], hint: str) -> MigrationError:
    """The refusal to serve a database that is behind the code."""
    return MigrationError(f"{label}: {len(pending)} migration(s) pending ({pending[0].name} first); {hint}")
