"""Fixtures shared by every test folder live in each folder's conftest; helpers in tests/helpers.py."""
