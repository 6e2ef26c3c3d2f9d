"""People's system accounts: names that useradd takes, that never collide, that are never root's."""

from __future__ import annotations

import os
import pwd
import stat

import pytest
from opshub.accounts import account_name, ensure_account, unreadable_by_others


def test_a_person_gets_a_jupyter_account_and_system_accounts_keep_their_name():
    assert account_name("bob") == "jupyter-bob"
    assert account_name("opshub-dashboards", system_accounts=["opshub-dashboards"]) == "opshub-dashboards"
    # a person who calls themselves like a system account still gets a person's account
    assert account_name("opshub-dashboards") == "jupyter-opshub-dashboards"


def test_a_deployments_account_prefix_comes_before_every_account():
    assert account_name("bob", prefix="ops2-") == "ops2-jupyter-bob"
    assert account_name("opshub-runner", ["opshub-runner"], "ops2-") == "ops2-opshub-runner"
    long = account_name("a-very-long-login-name-indeed", prefix="ops2-")
    assert (
        long.startswith("ops2-jupyter-") and len(long) <= 32 and long != account_name("a-very-long-login-name-indeed")
    )


@pytest.mark.parametrize("name", ["Bob.Smith@example.com", "root", "../alice", "x" * 60, "bob smith", "-bob"])
def test_any_login_name_becomes_a_valid_distinct_account(name):
    account = account_name(name)
    assert account.startswith("jupyter-") and len(account) <= 32
    assert all(c.isalnum() or c in "-_" for c in account)
    assert account != "root"


def test_names_that_differ_only_by_unsafe_characters_get_different_accounts():
    assert account_name("bob.smith") != account_name("bob-smith")
    assert account_name("Bob") != account_name("bob")


@pytest.mark.skipif(os.geteuid() != 0, reason="creating accounts needs root")
def test_an_account_gets_a_private_home(open_tmp_path):
    home = open_tmp_path / "homes" / "jupyter-opshub-unit-test"
    account = ensure_account("jupyter-opshub-unit-test", home)
    assert account.pw_uid != 0
    assert home.stat().st_uid == account.pw_uid
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert ensure_account("jupyter-opshub-unit-test", home).pw_uid == account.pw_uid  # the second time: same
    assert pwd.getpwnam("jupyter-opshub-unit-test").pw_shell == "/bin/bash"


def test_unreadable_by_others_names_the_closed_folder(open_tmp_path):
    closed = open_tmp_path / "closed"
    inside = closed / "file"
    closed.mkdir()
    inside.write_text("x")
    closed.chmod(0o700)
    assert unreadable_by_others(inside) == closed
    closed.chmod(0o755)
    inside.chmod(0o640)
    assert unreadable_by_others(inside) == inside
    inside.chmod(0o644)
    assert unreadable_by_others(inside) is None
