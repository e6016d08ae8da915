"""``python -m hsn_client``: embed a .npy file, load an NPZ of references, search from a shell.

Errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from hsn_client.client import Client
from hsn_client.errors import HsnError

DEFAULT_URL = "http://127.0.0.1:8000"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with Client(args.url, api_key=args.api_key) as client:
            args.command(client, args)
    except (HsnError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _embed(client: Client, args: argparse.Namespace) -> None:
    np.save(args.out, client.embed(_signals(args.signals)))


def _load(client: Client, args: argparse.Namespace) -> None:
    ids = client.load_npz(args.npz, progress=args.progress)
    print(json.dumps({"stored": len(ids)}))


def _search(client: Client, args: argparse.Namespace) -> None:
    results = client.search(
        _signals(args.signals),
        args.k,
        element_id=args.element_id,
        session_id=args.session_id,
        exclude_session_id=args.exclude_session_id,
        expected_element=args.expected_element,
    )
    print(json.dumps([asdict(result) for result in results]))


def _signals(path: Path) -> np.ndarray:
    array = np.load(path, allow_pickle=False)
    if not isinstance(array, np.ndarray):
        array.close()
        raise ValueError(f"{path}: an .npz archive, not one .npy array of signals")
    return array


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hsn_client", description="Use the hierarchical signal service."
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("HSN_URL", DEFAULT_URL),
        help=f"the service (default: $HSN_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("HSN_API_KEY"),
        help="sent as Authorization: Bearer (default: $HSN_API_KEY)",
    )
    commands = parser.add_subparsers(required=True, metavar="command")

    embed = commands.add_parser("embed", help="embed signals (.npy, (B, L) or (B, C, L))")
    embed.add_argument("signals", type=Path)
    embed.add_argument("--out", type=Path, required=True, help="the embeddings, (B, D) .npy")
    embed.set_defaults(command=_embed)

    load = commands.add_parser(
        "load", help="store the references of an NPZ (training format) or a sharded directory"
    )
    load.add_argument("npz", type=Path)
    load.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress line on stderr (default: when stderr is a terminal)",
    )
    load.set_defaults(command=_load)

    search = commands.add_parser("search", help="nearest references of each signal, as JSON")
    search.add_argument("signals", type=Path)
    search.add_argument("-k", type=int, default=5, help="neighbours per signal (default 5)")
    search.add_argument("--element-id", help="only neighbours of this element")
    search.add_argument("--session-id", help="only neighbours of this session")
    search.add_argument("--exclude-session-id", help="no neighbours of this session")
    search.add_argument("--expected-element", help="calibrate anomaly scores on this element")
    search.set_defaults(command=_search)
    return parser
