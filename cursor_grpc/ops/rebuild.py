"""Where migration 0005 finds the chunked table rebuild.

The code lives in `cursor_grpc.storage.sqlite.rebuild`; a migration's text
is checksummed once applied, so 0005's import line cannot change, and this
name stays for it. New migrations import the backend module directly."""

from cursor_grpc.storage.sqlite.rebuild import TableRebuild, rebuild_table

__all__ = ["TableRebuild", "rebuild_table"]
