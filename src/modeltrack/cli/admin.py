"""``modeltrack admin …``: the admin API's operations from the shell, on the store itself (the operator of the
machine that holds the store, recorded in the audit log as ``cli:$USER``).

    modeltrack admin create teams name=search allowed_models='["gpt-4o-mini","claude-*"]'
    modeltrack admin create keys name=ci team_id=team_1a2b3c4d5e6f app=web rpm=60
    modeltrack admin list keys
    modeltrack admin update keys key_… expires=2027-01-31T00:00:00Z
    modeltrack admin rotate key_…          # prints the new secret once
    modeltrack admin delete keys key_…     # a key is revoked
    modeltrack admin audit --format jsonl > audit.jsonl
    modeltrack admin export > org.yaml && modeltrack admin apply org.yaml [--prune]
    modeltrack admin migrate               # Firestore: slices (and warehouse rows) for earlier hours, once

``field=value`` values are read as JSON when they parse (numbers, lists, null), else as text.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

from ..accounts import KINDS, AccountError, Actor, Admin, open_accounts
from ..accounts.gitops import apply, dump, export
from ..tabular import text_table
from .common import CommandError, store_url


def add_parser(sub: Any) -> None:
    p = sub.add_parser("admin", help="orgs, teams, keys, members, budgets and limits in the store; the audit log")
    asub = p.add_subparsers(dest="admin_cmd")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = asub.add_parser(name, help=help)
        c.add_argument("--store", help="store URL (default: $MODELTRACK_STORE, as `modeltrack serve` resolves it)")
        c.add_argument("--org", help="the org to act in (default: the default org)")
        c.set_defaults(func=run_admin)
        return c

    c = cmd("list", "list the records of a kind")
    c.add_argument("kind", choices=KINDS)
    c.add_argument("--format", choices=("table", "json"), default="table")
    c = cmd("get", "one record")
    c.add_argument("kind", choices=KINDS)
    c.add_argument("id")
    c = cmd("create", "create a record (a key's or a member's secret is printed once)")
    c.add_argument("kind", choices=KINDS)
    c.add_argument("fields", nargs="*", metavar="field=value")
    c = cmd("update", "change fields of a record")
    c.add_argument("kind", choices=KINDS)
    c.add_argument("id")
    c.add_argument("fields", nargs="+", metavar="field=value")
    c = cmd("delete", "delete a record (a key is revoked)")
    c.add_argument("kind", choices=KINDS)
    c.add_argument("id")
    c = cmd("rotate", "a new secret for a key (printed once); the old one stops working")
    c.add_argument("id")
    c = cmd("audit", "the audit log, newest first")
    c.add_argument("--limit", type=int, default=100)
    c.add_argument("--format", choices=("table", "jsonl"), default="table")
    c = cmd("export", "the org model as YAML (for git); never a secret")
    c.add_argument("--output", help="write here instead of standard output")
    c = cmd("apply", "make the store equal a file written by export")
    c.add_argument("file")
    c.add_argument("--prune", action="store_true", help="also delete what the file does not have (keys: revoke)")
    m = asub.add_parser("migrate", help="build what a store written by an older version lacks, exactly once")
    m.add_argument("--store", help="store URL (default: $MODELTRACK_STORE, as `modeltrack serve` resolves it)")
    m.set_defaults(func=run_migrate)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def parse_fields(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise CommandError(f"{pair!r}: write field=value, e.g. name=search")
        try:
            out[name] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[name] = raw
    return out


def run_migrate(args: argparse.Namespace) -> int:
    """Firestore: the slices of the hours written before them (:meth:`FirestoreSink.migrate_slices`), and the
    warehouse's rows of the events stored before it (:meth:`FirestoreSink.migrate_warehouse`). SQLite
    rebuilds what it derives from the events whenever it is opened, so it has nothing to migrate."""
    url = store_url(args)
    if not url.startswith("firestore://"):
        print(
            f"{url.split(':', 1)[0]}:// stores rebuild their rollups when opened: nothing to migrate", file=sys.stderr
        )
        return 0
    from ..sinks import open_sink
    from ..sinks.firestore import FirestoreSink

    sink = open_sink(url)
    assert isinstance(sink, FirestoreSink)

    async def go() -> tuple[int, int]:
        try:
            return await sink.migrate_slices(), await sink.migrate_warehouse()
        finally:
            await sink.close()

    read, copied = asyncio.run(go())
    if read:
        print(f"slices built from {read:,} hourly rollup documents; every hour is now answered from them")
    else:
        print("nothing to migrate: the slices already cover every hour")
    if sink.warehouse is not None:
        if copied:
            table = sink.warehouse.table
            print(f"{copied:,} earlier events copied to the warehouse ({table}); it now holds every hour")
        else:
            print("the warehouse already holds every hour")
    return 0


def run_admin(args: argparse.Namespace) -> int:
    url = store_url(args)
    store = open_accounts(url)
    if store is None:
        raise CommandError(f"the store {url.split(':', 1)[0]}:// keeps no orgs or keys: use sqlite:// or firestore://")
    actor = Actor.operator(f"cli:{getpass.getuser()}")
    admin = Admin(store)

    async def go() -> int:
        try:
            return await _run(admin, actor, args)
        except AccountError as exc:
            raise CommandError(str(exc)) from None
        finally:
            await store.close()

    return asyncio.run(go())


async def _run(admin: Admin, actor: Actor, args: argparse.Namespace) -> int:
    out = sys.stdout
    c = args.admin_cmd
    if c == "list":
        records = await admin.records(actor, args.kind, args.org)
        if args.format == "json":
            out.write(orjson.dumps(records, option=orjson.OPT_INDENT_2).decode() + "\n")
        elif not records:
            out.write(f"no {args.kind}\n")
        else:
            cols = [k for k in records[0] if k not in ("org_id",)]
            rows = [["-" if r.get(k) is None else _text(r.get(k)) for k in cols] for r in records]
            out.write(text_table(cols, rows))
        return 0
    if c == "get":
        out.write(orjson.dumps(await admin.get(actor, args.kind, args.id), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if c == "create":
        record, secret = await admin.create(actor, args.kind, parse_fields(args.fields), args.org)
        out.write(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode() + "\n")
        if secret is not None:
            print(f"secret (shown once, store it now): {secret}", file=sys.stderr)
        return 0
    if c == "update":
        record = await admin.update(actor, args.kind, args.id, parse_fields(args.fields))
        out.write(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if c == "delete":
        record = await admin.delete(actor, args.kind, args.id)
        print(f"{'revoked' if args.kind == 'keys' else 'deleted'} {args.kind[:-1]} {record['id']}", file=sys.stderr)
        return 0
    if c == "rotate":
        record, secret = await admin.rotate(actor, args.id)
        print(f"rotated key {record['id']}; new secret (shown once, store it now): {secret}", file=sys.stderr)
        return 0
    if c == "audit":
        entries = await admin.audit_log(actor, args.limit)
        if args.format == "jsonl":
            out.write("".join(orjson.dumps(e).decode() + "\n" for e in entries))
        else:
            rows = [[e["ts"], e["actor"], e["action"], e["kind"], e["id"]] for e in entries]
            out.write(text_table(["ts", "actor", "action", "kind", "id"], rows))
        return 0
    if c == "export":
        text = dump(await export(admin, actor))
        if args.output:
            await asyncio.to_thread(Path(args.output).write_text, text)
        else:
            out.write(text)
        return 0
    if c == "apply":
        try:
            doc = yaml.safe_load(await asyncio.to_thread(Path(args.file).read_text))
        except OSError as exc:
            raise CommandError(f"{args.file}: {exc.strerror}") from None
        except yaml.YAMLError:
            raise CommandError(f"{args.file}: not valid YAML") from None
        counts = await apply(admin, actor, doc, args.prune)
        print(", ".join(f"{n} {what}" for what, n in counts.items()))
        return 0
    raise CommandError("name a subcommand: modeltrack admin --help")


def _text(v: Any) -> str:
    return ", ".join(map(str, v)) if isinstance(v, list) else str(v)
