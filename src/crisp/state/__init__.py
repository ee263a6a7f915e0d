"""Persistent state: the SQLite database, its schema, and the records domain packages keep."""

from crisp.state.database import DATABASE_FILES, DATABASE_NAME, Database, SchemaTooNewError
from crisp.state.journal import Journal, Operation
from crisp.state.records import Records, Settings

__all__ = ["DATABASE_FILES", "DATABASE_NAME", "Database", "Journal", "Operation", "Records",
           "SchemaTooNewError", "Settings"]
