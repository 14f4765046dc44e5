"""Organisations, teams, ModelTrack keys, members, budgets and limits, managed at runtime (the schemas are
:mod:`.model`, changes and roles :mod:`.admin`, storage :mod:`.store`, the request path's view :mod:`.keyring`)."""

from .admin import DEFAULT_ORG, Actor, Admin
from .keyring import Grant, KeyRing
from .model import KINDS, ROLES, AccountError
from .store import AccountStore, open_accounts

__all__ = [
    "DEFAULT_ORG",
    "KINDS",
    "ROLES",
    "AccountError",
    "AccountStore",
    "Actor",
    "Admin",
    "Grant",
    "KeyRing",
    "open_accounts",
]
