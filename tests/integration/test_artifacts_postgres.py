"""Run artifacts in the store on a real PostgreSQL server: the store tests of tests/unit/test_artifacts.py
again, with this module's `database_url` (as test_store_postgres.py does for the whole store)."""

from __future__ import annotations

from tests.integration.test_store_postgres import (  # noqa: F401 (PostgreSQL instead of SQLite)
    database_url,
    test_the_store_really_is_on_postgresql,
)
from tests.unit.test_artifacts import (  # noqa: F401 (collected again here)
    clock,
    store,
    test_a_malformed_artifact_never_fails_the_record,
    test_artifacts_survive_the_output_cap,
    test_heartbeats_and_the_finish_keep_the_current_artifacts,
    test_lists_load_them_only_when_asked,
    test_the_caps_hold_in_the_database,
    test_the_finish_replaces_them_and_a_notebook_without_any_clears_them,
    test_the_runner_s_reports_keep_them_with_their_notebook,
)
from tests.unit.test_store import test_the_migrated_schema_matches_the_models  # noqa: F401 (with 0008)
