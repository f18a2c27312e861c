"""The SQL index: models.py (one table per level, columns named by DICOM keyword), db.py (engine,
read sessions, write transactions), rows.py (writing and reading the hierarchy), migrations/ (Alembic)."""
