"""Changes to the organisation model, as the admin API, the dashboard and ``modeltrack admin`` make them: checked
against the schema (:mod:`.model`), against the actor's role, and recorded in the audit log with who, what,
before and after (never a secret), in the same atomic write as the change (:mod:`.store`).

Roles (README, "Organisations, teams and keys"):

* the **operator** (a dashboard token from ``MODELTRACK_UI_TOKENS``, or the shell): every org;
* **org_admin**: everything in its org;
* **team_admin**: its own team's keys, budgets, limits and members (never an org admin);
* **viewer**: reads; a viewer with a team reads only that team.

Held by tests/test_accounts.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import (
    KINDS,
    MEMBER_TOKEN_PREFIX,
    AccountError,
    digest,
    display_prefix,
    new_id,
    new_secret,
    now_stamp,
    public,
    validate,
)
from .store import AccountStore

DEFAULT_ORG = "org_default"
TEAM_SCOPED = ("keys", "members", "budgets", "limits")


@dataclass(frozen=True)
class Actor:
    subject: str  # who, as the audit log shows it: "operator", "cli:alice", a member's subject
    role: str  # org_admin | team_admin | viewer
    org_id: str | None = None  # None: the operator, every org
    team_id: str | None = None  # a team admin's team, or a team-scoped viewer's

    @classmethod
    def operator(cls, subject: str = "operator") -> Actor:
        return cls(subject, "org_admin")


class Admin:
    def __init__(self, store: AccountStore) -> None:
        self.store = store

    # -- reading --------------------------------------------------------------------------------------------
    async def records(self, actor: Actor, kind: str, org_id: str | None = None) -> list[dict[str, Any]]:
        _kind(kind)
        org = actor.org_id if org_id is None else self._org_of(actor, org_id)
        records = await self.store.records(kind, org)
        return [public(r) for r in records if self._sees(actor, kind, r)]

    async def get(self, actor: Actor, kind: str, record_id: str) -> dict[str, Any]:
        record = await self._find(actor, kind, record_id)
        return public(record)

    async def audit_log(self, actor: Actor, limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
        if actor.role != "org_admin":
            raise AccountError("the audit log is for org admins", 403, "forbidden")
        return await self.store.audit(actor.org_id, max(1, min(limit, 1000)), before)

    # -- writing --------------------------------------------------------------------------------------------
    async def create(
        self, actor: Actor, kind: str, body: Any, org_id: str | None = None
    ) -> tuple[dict[str, Any], str | None]:
        """The new record and, for a key or a member, its secret: shown this once, stored only as a digest."""
        fields = validate(kind, body)
        if kind == "orgs":
            if actor.org_id is not None:
                raise AccountError("only the operator creates organisations (or sign-up)", 403, "forbidden")
            record: dict[str, Any] = {"id": new_id("orgs"), **fields, "created": now_stamp()}
            record["org_id"] = record["id"]
            await self._write(actor, "create", kind, record, None, record)
            return public(record), None
        org = self._org_of(actor, org_id)
        await self._ensure_org(actor, org)
        await self._check_refs(actor, kind, org, fields)
        self._may_write(actor, kind, fields)
        record = {"id": new_id(kind), "org_id": org, **fields, "created": now_stamp()}
        secret: str | None = None
        if kind == "keys":
            secret = new_secret()
            record.update(digest=digest(secret), prefix=display_prefix(secret), revoked=None, last_used=None)
        elif kind == "members":
            secret = new_secret(MEMBER_TOKEN_PREFIX)
            record["token_digest"] = digest(secret)
        await self._write(actor, "create", kind, record, None, record)
        return public(record), secret

    async def signup(self, org_name: Any, subject: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
        """A new org and its first admin (hosted sign-up): (org, member, the member's sign-in token, shown once).
        Both are checked before either is written; the audit log names the signer-up."""
        validate("orgs", {"name": org_name})
        validate("members", {"subject": subject, "role": "org_admin"})
        signer = Actor(f"signup:{str(subject).strip()}", "org_admin")
        org, _ = await self.create(signer, "orgs", {"name": org_name})
        member, token = await self.create(signer, "members", {"subject": subject, "role": "org_admin"}, org["id"])
        assert token is not None
        return org, member, token

    async def update(self, actor: Actor, kind: str, record_id: str, patch: Any) -> dict[str, Any]:
        before = await self._find(actor, kind, record_id)
        fields = validate(kind, patch, partial=True)
        after = {**before, **fields}
        if kind != "orgs":
            await self._check_refs(actor, kind, str(before["org_id"]), after)
            self._may_write(actor, kind, before)
            self._may_write(actor, kind, after)
        elif actor.role != "org_admin" or (actor.org_id not in (None, record_id)):
            raise AccountError("only an org admin renames its org", 403, "forbidden")
        if after == before:
            return public(after)
        await self._write(actor, "update", kind, after, before, after)
        return public(after)

    async def delete(self, actor: Actor, kind: str, record_id: str) -> dict[str, Any]:
        """A key is revoked (kept, with its spend and history); anything else is removed once nothing refers
        to it."""
        before = await self._find(actor, kind, record_id)
        if kind == "orgs":
            raise AccountError("organisations are not deleted through the API", 405, "method_not_allowed")
        self._may_write(actor, kind, before)
        if kind == "keys":
            if before.get("revoked"):
                return public(before)
            after = {**before, "revoked": now_stamp()}
            await self._write(actor, "revoke", kind, after, before, after)
            return public(after)
        if kind == "teams":
            users = [
                f"{k} {r['id']}"
                for k in TEAM_SCOPED
                for r in await self.store.records(k, str(before["org_id"]))
                if r.get("team_id") == record_id
            ]
            if users:
                raise AccountError(
                    f"team {record_id} is still used by {', '.join(users[:5])}: delete or move them first",
                    409,
                    "conflict",
                )
        await self._write(actor, "delete", kind, None, before, None, record_id=record_id, org_id=str(before["org_id"]))
        return public(before)

    async def rotate(self, actor: Actor, key_id: str) -> tuple[dict[str, Any], str]:
        """A new secret for the same key (same id, attribution and limits); the old secret stops working."""
        before = await self._find(actor, "keys", key_id)
        self._may_write(actor, "keys", before)
        if before.get("revoked"):
            raise AccountError(f"key {key_id} is revoked: create a new one", 409, "conflict")
        secret = new_secret()
        after = {**before, "digest": digest(secret), "prefix": display_prefix(secret)}
        await self._write(actor, "rotate", "keys", after, before, after)
        return public(after), secret

    # -- helpers --------------------------------------------------------------------------------------------
    async def _write(
        self,
        actor: Actor,
        action: str,
        kind: str,
        doc: dict[str, Any] | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        record_id: str | None = None,
        org_id: str | None = None,
    ) -> None:
        rid = record_id or str((doc or {})["id"])
        org = org_id or str((doc or {})["org_id"])
        audit = {
            "ts": now_stamp(),
            "actor": actor.subject,
            "action": action,
            "before": None if before is None else public(before),
            "after": None if after is None else public(after),
        }
        await self.store.write(kind, rid, org, doc, audit)

    async def _find(self, actor: Actor, kind: str, record_id: str) -> dict[str, Any]:
        _kind(kind)
        record = await self.store.get(kind, record_id)
        # Another org's record, or another team's for a team-scoped actor, is "not found": its existence is
        # not shown either.
        if record is None or not self._sees(actor, kind, record):
            raise AccountError(f"no {kind[:-1]} {record_id}", 404, "not_found")
        return record

    def _sees(self, actor: Actor, kind: str, record: dict[str, Any]) -> bool:
        if actor.org_id is not None and record.get("org_id") != actor.org_id:
            return False
        if actor.team_id is None or actor.role == "org_admin":
            return True
        if kind == "teams":
            return record.get("id") == actor.team_id
        if kind in TEAM_SCOPED:
            return record.get("team_id") == actor.team_id
        return kind == "orgs"

    def _org_of(self, actor: Actor, org_id: str | None) -> str:
        """The org a request acts in: the actor's own (another is "not found"); the operator names one, or
        acts in the default org."""
        if actor.org_id is not None:
            if org_id not in (None, actor.org_id):
                raise AccountError(f"no org {org_id}", 404, "not_found")
            return actor.org_id
        return org_id or DEFAULT_ORG

    def _may_write(self, actor: Actor, kind: str, record: dict[str, Any]) -> None:
        if actor.role == "viewer":
            raise AccountError("viewers read; they do not change anything", 403, "forbidden")
        if actor.role == "team_admin":
            if kind == "teams" or kind not in TEAM_SCOPED:
                raise AccountError(f"a team admin does not change {kind}; ask an org admin", 403, "forbidden")
            if record.get("team_id") != actor.team_id:
                raise AccountError(f"a team admin changes only its own team's {kind}", 403, "forbidden")
            if kind == "members" and record.get("role") == "org_admin":
                raise AccountError("a team admin cannot make an org admin", 403, "forbidden")

    async def _ensure_org(self, actor: Actor, org: str) -> None:
        if await self.store.get("orgs", org) is not None:
            return
        if org != DEFAULT_ORG:
            raise AccountError(f"no org {org}", 404, "not_found")
        # Single-tenant deployments never name an org: the default one is made on first use.
        record = {"id": DEFAULT_ORG, "org_id": DEFAULT_ORG, "name": "default", "created": now_stamp()}
        await self._write(actor, "create", "orgs", record, None, record)

    async def _check_refs(self, actor: Actor, kind: str, org: str, fields: dict[str, Any]) -> None:
        team_id = fields.get("team_id")
        if team_id is not None:
            team = await self.store.get("teams", str(team_id))
            if team is None or team.get("org_id") != org:
                raise AccountError(f"team_id: no team {team_id} in this org", 400)
        if kind == "members" and fields.get("role") == "team_admin" and team_id is None:
            raise AccountError("team_id: required for a team_admin (the team it administers)")
        if kind == "teams":
            same = [t for t in await self.store.records("teams", org) if t["name"] == fields["name"]]
            if any(t["id"] != fields.get("id") for t in same):
                raise AccountError(f"name: a team named {fields['name']!r} exists in this org", 409, "conflict")


def _kind(kind: str) -> None:
    if kind not in KINDS:
        raise AccountError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}", 404, "not_found")
