"""The one builder of list queries: filters, then the keyset condition that
starts a page right after the previous page's last row, newest first
(or oldest first, for the attention queue).

Every list (readers, active readers, messages, interactions in the main
database and in archive files, consents, audit logs) pages by keyset rather
than OFFSET, so a page costs the same however deep it is and rows written
meanwhile neither repeat nor go missing. Values are always bound, never
formatted into the SQL.
"""

from __future__ import annotations

from typing import Any


class Where:
    """WHERE clauses and their bound values, in order."""

    __slots__ = ("clauses", "params")

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.params: list[Any] = []

    def add(self, clause: str, *params: Any) -> Where:
        self.clauses.append(clause)
        self.params.extend(params)
        return self

    def equals(self, column: str, value: Any) -> Where:
        """`column = value` when the filter is given (None: any value)."""
        return self if value is None else self.add(f"{column} = ?", value)

    def same(self, column: str, value: Any) -> Where:
        """`column = value`, or `column IS NULL` for None (both served by an index)."""
        return self.add(f"{column} IS NULL") if value is None else self.add(f"{column} = ?", value)


def newest_first(
    select: str, where: Where, key: tuple[str, ...], after: tuple[Any, ...] | None, limit: int
) -> tuple[str, list[Any]]:
    """SQL and parameters for `select` (its columns and FROM) filtered by
    `where`, ordered by the `key` columns descending, starting below `after`
    (the key of the previous page's last row; None: the first page), at most
    `limit` rows. A key of several columns compares as a row value, which
    SQLite serves from an index on those columns."""
    return _page(select, where, key, after, limit, descending=True)


def oldest_first(
    select: str, where: Where, key: tuple[str, ...], after: tuple[Any, ...] | None, limit: int
) -> tuple[str, list[Any]]:
    """As `newest_first`, ascending: starting above `after`."""
    return _page(select, where, key, after, limit, descending=False)


def _page(
    select: str, where: Where, key: tuple[str, ...], after: tuple[Any, ...] | None, limit: int, descending: bool
) -> tuple[str, list[Any]]:
    clauses, params = list(where.clauses), list(where.params)
    beyond = "<" if descending else ">"
    if after is not None:
        if len(after) != len(key):
            raise ValueError(f"a page key of {key} needs {len(key)} values, not {after!r}")
        if len(key) == 1:
            clauses.append(f"{key[0]} {beyond} ?")
        else:
            clauses.append(f"({', '.join(key)}) {beyond} ({', '.join('?' * len(key))})")
        params.extend(after)
    where_sql = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    order = ", ".join(f"{column} {'DESC' if descending else 'ASC'}" for column in key)
    return f"{select}{where_sql} ORDER BY {order} LIMIT ?", [*params, limit]
