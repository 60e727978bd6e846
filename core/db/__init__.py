"""Storage: SQLAlchemy 2 async models, sessions and the Alembic migration chain."""

from core.db.engine import Database
from core.db.migrate import upgrade

__all__ = ["Database", "upgrade"]
