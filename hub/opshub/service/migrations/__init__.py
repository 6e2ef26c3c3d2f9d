"""Alembic migrations of the run history store. `opshub.service.store.alembic_config()` points alembic here."""
