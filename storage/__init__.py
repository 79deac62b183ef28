"""SQLite storage: schema, migrations and every SQL statement Attune runs."""
