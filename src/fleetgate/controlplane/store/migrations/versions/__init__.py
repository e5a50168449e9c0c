"""The revisions, oldest first: ``0001`` is the SQLite schema version 9."""
