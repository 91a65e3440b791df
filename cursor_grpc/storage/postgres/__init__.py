"""The PostgreSQL backend of the storage contract (psycopg 3)."""
