"""What Cursor instances sharing one PostgreSQL database tell each other.

The database is the record; the doorbell (`doorbell.py`) only hurries the
others to read it. This package sits beside the storage layer and imports
nothing of Cursor but `config`, `errors` and `clock` (tests/test_layers.py).
"""

from cursor_grpc.cluster.doorbell import (
    MAX_HINT_BYTES,
    Doorbell,
    Hint,
    NatsDoorbell,
    PostgresDoorbell,
    RedisDoorbell,
    decode_hint,
    describe_url,
    encode_hint,
    open_doorbell,
)

__all__ = [
    "MAX_HINT_BYTES",
    "Doorbell",
    "Hint",
    "NatsDoorbell",
    "PostgresDoorbell",
    "RedisDoorbell",
    "decode_hint",
    "describe_url",
    "encode_hint",
    "open_doorbell",
]
