"""Cursor: the gRPC service between readers and the consultants who watch them."""

__version__ = "0.1.0"
