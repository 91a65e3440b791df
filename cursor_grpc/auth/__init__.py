"""Authentication (who calls) and authorization (may they)."""
