"""The account store on Firestore: ``{COLLECTION}_accounts`` (one document per record, ``{kind}:{id}``),
``{COLLECTION}_accounts_audit`` (one per change, ``seq`` ordered) and ``{COLLECTION}_accounts_meta/version``.

A change is one transaction: read the version, write the record, the audit entry numbered version + 1, and the
new version. Admin writes are rare, so a transaction's contention costs nothing that matters; the proxies only
read the version document (:mod:`.keyring`).
"""

from __future__ import annotations

from typing import Any


class FirestoreAccounts:
    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def _records(self) -> Any:
        return self.sink.collection_ref("accounts")

    def _audit(self) -> Any:
        return self.sink.collection_ref("accounts_audit")

    def _version(self) -> Any:
        return self.sink.collection_ref("accounts_meta").document("version")

    async def get(self, kind: str, id: str) -> dict[str, Any] | None:
        snap = await self._records().document(f"{kind}:{id}").get()
        return dict(snap.get("doc")) if snap.exists else None

    async def records(self, kind: str, org_id: str | None = None) -> list[dict[str, Any]]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        q = self._records().where(filter=FieldFilter("kind", "==", kind))
        if org_id is not None:
            q = q.where(filter=FieldFilter("org_id", "==", org_id))
        docs = [dict(s.get("doc")) async for s in q.stream()]
        return sorted(docs, key=lambda d: str(d.get("id")))

    async def write(
        self, kind: str, record_id: str, org_id: str, doc: dict[str, Any] | None, audit: dict[str, Any]
    ) -> None:
        from google.cloud import firestore

        client = self.sink.client
        records, audits, version = self._records(), self._audit(), self._version()

        @firestore.async_transactional  # type: ignore[misc]
        async def apply(tx: Any) -> None:
            snap = await version.get(transaction=tx)
            n = int(snap.get("n")) + 1 if snap.exists else 1
            ref = records.document(f"{kind}:{record_id}")
            if doc is None:
                tx.delete(ref)
            else:
                tx.set(ref, {"kind": kind, "org_id": org_id, "doc": doc})
            tx.set(
                audits.document(f"{n:015d}"),
                {**audit, "seq": n, "kind": kind, "id": record_id, "org_id": org_id},
            )
            tx.set(version, {"n": n})

        await apply(client.transaction())

    async def version(self) -> int:
        snap = await self._version().get()
        return int(snap.get("n")) if snap.exists else 0

    async def audit(self, org_id: str | None, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        from google.cloud import firestore
        from google.cloud.firestore_v1.base_query import FieldFilter

        q = self._audit()
        if org_id is not None:
            q = q.where(filter=FieldFilter("org_id", "==", org_id))
        if before is not None:
            q = q.where(filter=FieldFilter("seq", "<", before))
        q = q.order_by("seq", direction=firestore.Query.DESCENDING).limit(limit)
        return [dict(s.to_dict() or {}) async for s in q.stream()]

    async def touch(self, last_used: dict[str, str]) -> None:
        batch = self.sink.client.batch()
        for key_id, at in last_used.items():
            batch.update(self._records().document(f"keys:{key_id}"), {"doc.last_used": at})
        await batch.commit()

    async def close(self) -> None:
        return None
