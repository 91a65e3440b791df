"""The SQL both backends run: the domain's statements (accounts, sessions,
interactions, events, messages, consents, audit), the single writer and
the read pool. Written once in the SQL SQLite and PostgreSQL share; a
backend supplies an `Engine` (cursor_grpc/storage/sql/engine.py) that opens
its connections, starts and ends its transactions and maps its errors."""
