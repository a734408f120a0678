"""Flask extensions, created once and bound to an app in ``create_app``."""

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)

# The host app (MkSaaS) owns the database; our Alembic bookkeeping gets a
# prefixed table so it can never meet a table of theirs.
migrate = Migrate(version_table="credits_service_alembic_version")
