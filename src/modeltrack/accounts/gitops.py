"""``modeltrack admin export`` and ``modeltrack admin apply FILE``: the organisation model as a file kept in git,
and back, losslessly (ids, digests, creation times and revocations included; never a secret, which the store
never had).

Which one wins: at runtime the **store** is in force (changes through the API, the dashboard and the CLI take
effect within seconds); ``apply`` makes the store equal to the file (records in the file are created or
updated to match it; with ``prune``, records absent from the file are deleted, and keys revoked), each change
audited as ``apply``. So the file wins when it is applied, and a change made at runtime lasts until the next
``apply`` that does not contain it. Held by tests/test_accounts.py::test_export_and_apply_round_trip.
"""

from __future__ import annotations

from typing import Any

import yaml

from .admin import Actor, Admin
from .model import KINDS, SERVER_FIELDS, AccountError, now_stamp, public, validate

ORDER = KINDS  # orgs before teams before what refers to teams


async def export(admin: Admin, actor: Actor) -> dict[str, Any]:
    if actor.role != "org_admin":
        raise AccountError("exporting is for org admins", 403, "forbidden")
    doc: dict[str, Any] = {"version": 1}
    for kind in ORDER:
        records = await admin.store.records(kind, actor.org_id)
        doc[kind] = [dict(sorted(r.items())) for r in records]
    return doc


def dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _checked(kind: str, raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not isinstance(raw.get("org_id"), str):
        raise AccountError(f"{where}: each record needs its id and org_id (as `admin export` writes them)")
    own = {k: v for k, v in raw.items() if k not in SERVER_FIELDS}
    try:
        fields = validate(kind, own)
    except AccountError as exc:
        raise AccountError(f"{where} ({raw['id']}): {exc}") from None
    server = {k: raw[k] for k in SERVER_FIELDS if k in raw}
    if kind == "keys" and not isinstance(server.get("digest"), str):
        raise AccountError(f"{where} ({raw['id']}): a key needs its digest")
    return {**server, **fields}


async def apply(admin: Admin, actor: Actor, doc: Any, prune: bool = False) -> dict[str, int]:
    """Make the store equal the file; counts of what was created, updated, deleted, left unchanged."""
    if actor.role != "org_admin":
        raise AccountError("applying a file is for org admins", 403, "forbidden")
    if not isinstance(doc, dict) or doc.get("version", 1) != 1:
        raise AccountError("expected `version: 1` and lists of records per kind, as `modeltrack admin export` writes")
    unknown = sorted(k for k in doc if k not in (*KINDS, "version"))
    if unknown:
        raise AccountError(f"unknown section {unknown[0]!r}; the file has: version, {', '.join(KINDS)}")
    counts = {"created": 0, "updated": 0, "deleted": 0, "unchanged": 0}
    wanted: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in ORDER:
        records = doc.get(kind) or []
        if not isinstance(records, list):
            raise AccountError(f"{kind}: expected a list of records")
        wanted[kind] = {}
        for i, raw in enumerate(records):
            rec = _checked(kind, raw, f"{kind}[{i}]")
            if actor.org_id is not None and rec["org_id"] != actor.org_id:
                raise AccountError(f"{kind}[{i}] ({rec['id']}): belongs to another org", 403, "forbidden")
            wanted[kind][rec["id"]] = rec
    for kind in ORDER:
        for rid, rec in wanted[kind].items():
            have = await admin.store.get(kind, rid)
            if have == rec:
                counts["unchanged"] += 1
                continue
            await _write(admin, actor, kind, rec, have)
            counts["created" if have is None else "updated"] += 1
    if prune:
        for kind in reversed(ORDER):
            for have in await admin.store.records(kind, actor.org_id):
                if have["id"] in wanted[kind]:
                    continue
                if kind == "keys":
                    if not have.get("revoked"):
                        await _write(admin, actor, kind, {**have, "revoked": now_stamp()}, have)
                        counts["deleted"] += 1
                    continue
                await _write(admin, actor, kind, None, have)
                counts["deleted"] += 1
    return counts


async def _write(
    admin: Admin, actor: Actor, kind: str, doc: dict[str, Any] | None, before: dict[str, Any] | None
) -> None:
    ref = doc or before or {}
    audit = {
        "ts": now_stamp(),
        "actor": actor.subject,
        "action": "apply",
        "before": None if before is None else public(before),
        "after": None if doc is None else public(doc),
    }
    await admin.store.write(kind, str(ref["id"]), str(ref["org_id"]), doc, audit)
