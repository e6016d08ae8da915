"""``python -m app keys {create,list,revoke}``: manage API keys in the service's database (found
from the same HSN_* settings as the service: HSN_DATABASE_URL, else SQLite in HSN_DATA_DIR)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from app.container import open_store
from app.errors import DomainError
from app.keys import SCOPES, KeyTable
from app.settings import Settings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m app keys",
        description="API keys: the secret is printed once, at creation; the database keeps its"
        " argon2id hash. Revoked keys are refused by every process within HSN_SYNC_INTERVAL_MS.",
    )
    p.add_argument("--data-dir", type=Path, help="default HSN_DATA_DIR (SQLite's folder)")
    commands = p.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key and print its secret once")
    create.add_argument("--scope", required=True, choices=SCOPES)
    create.add_argument(
        "--collection",
        action="append",
        default=[],
        dest="collections",
        metavar="NAME",
        help="a collection the key may use (repeat for more); none: every collection",
    )
    create.add_argument("--name", default="", help="what the key is for, shown by list")
    create.add_argument("--json", action="store_true", help="one JSON object: id, secret, ...")
    listing = commands.add_parser("list", help="the keys not revoked (never their secrets)")
    listing.add_argument("--json", action="store_true")
    revoke = commands.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("id")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    store = open_store(settings)
    try:
        table = KeyTable(store.db)
        if args.command == "create":
            try:
                key, secret = table.create(args.scope, args.collections, args.name)
            except DomainError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            if args.json:
                print(json.dumps({**asdict(key), "secret": secret}))
            else:
                print(f"id:     {key.id}\nscope:  {key.scope}\nsecret: {secret}")
                print("(the secret is shown this once: store it now)", file=sys.stderr)
        elif args.command == "list":
            keys = table.list()
            if args.json:
                print(json.dumps([asdict(k) for k in keys]))
                return 0
            for k in keys:
                where = ",".join(k.collections) or "*"
                print(
                    f"{k.id}  {k.scope:<5}  {where:<20}  created {k.created_at}"
                    f"  last used {k.last_used_at or 'never'}  {k.name}"
                )
        elif not table.revoke(args.id):
            print(f"error: no key {args.id!r} (or it was revoked already)", file=sys.stderr)
            return 1
        else:
            print(f"revoked {args.id}")
        return 0
    finally:
        store.close()
