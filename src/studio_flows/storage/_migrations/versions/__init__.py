"""One module per schema version; their names are what Alembic reads, not imports."""
