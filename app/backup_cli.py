"""``python -m app backup --out FILE`` and ``python -m app restore --from FILE [--replace]``:
a consistent copy of the service's database while it serves (app/backup.py), and its restore
into an empty database of either engine. Both find the database from the same HSN_* settings as
the service (HSN_DATABASE_URL, else SQLite in HSN_DATA_DIR)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from app.backup import Archive, BackupError, restore, write_backup
from app.container import open_store
from app.settings import Settings


def _settings(data_dir: Path | None) -> Settings:
    return Settings(**({"data_dir": data_dir} if data_dir else {}))


def _progress(line: str) -> None:
    print(line, file=sys.stderr)


def backup(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m app backup",
        description="Write a consistent copy of the database (collections, references with"
        " their signals, embeddings of every model version, hashed API keys) to one file, while"
        " the service serves and writes.",
    )
    p.add_argument("--out", required=True, type=Path, help="the archive to write ('-': stdout)")
    p.add_argument("--data-dir", type=Path, help="default HSN_DATA_DIR (SQLite's folder)")
    args = p.parse_args(argv)
    store = open_store(_settings(args.data_dir))
    started = time.perf_counter()
    try:
        if str(args.out) == "-":
            summary = write_backup(store.db, sys.stdout.buffer, _progress)
        else:
            partial = args.out.with_name(f".{args.out.name}.{os.getpid()}.partial")
            try:
                with open(partial, "wb") as out:
                    summary = write_backup(store.db, out, _progress)
                partial.replace(args.out)  # a backup cut short never has the file's name
            finally:
                partial.unlink(missing_ok=True)
    finally:
        store.close()
    print(
        f"backed up {summary.references} references, {summary.embeddings} embeddings,"
        f" {summary.collections} collections, {summary.api_keys} keys at change"
        f" {summary.position} in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return 0


def restore_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m app restore",
        description="Restore an archive of 'python -m app backup' into an empty database (of"
        " either engine); the archive is checked whole before anything is written. Stop the"
        " service first: it rebuilds its indexes from the restored rows when it starts.",
    )
    p.add_argument("--from", dest="source", required=True, type=Path, help="the archive")
    p.add_argument("--replace", action="store_true", help="replace what the database holds")
    p.add_argument("--data-dir", type=Path, help="default HSN_DATA_DIR (SQLite's folder)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    try:
        archive = Archive(args.source)  # before the database is touched at all
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        store = open_store(_settings(args.data_dir))
        try:
            summary = restore(store.db, archive, args.replace, _progress)
        finally:
            store.close()
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        archive.close()
    print(
        f"restored {summary.references} references, {summary.embeddings} embeddings,"
        f" {summary.collections} collections, {summary.api_keys} keys (the copy at change"
        f" {summary.position}) in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return 0
