"""An NPZ file of the training format (or a sharded directory of them), read here and sent to
the service in pieces.

The service's ``POST /references/npz`` takes a whole file; sending pieces of at most a batch
each keeps every request under the service's limits and shows progress. Only what references
need travels: ``signals``, ``element_ids``, ``session_ids`` and the optional ``ids`` and
``recorded_at`` (the format is in the project README, "Data format").
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REQUIRED = ("signals", "element_ids", "session_ids")
OPTIONAL = ("ids", "recorded_at")


def npz_files(path: str | Path) -> list[Path]:
    """The files to load: ``path`` itself, or, for a sharded directory (``python -m training
    shard``: shards plus ``index.json``), its shards in the index's order."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    index = path / "index.json"
    try:
        shards = json.loads(index.read_text())["shards"]
        return [path / shard["path"] for shard in shards]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a sharded dataset (no readable index.json: {exc})") from exc


@dataclass(frozen=True)
class NpzReferences:
    path: Path
    arrays: dict[str, np.ndarray]  # the keys above, each with one row per reference

    @classmethod
    def read(cls, path: str | Path) -> NpzReferences:
        path = Path(path)
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: a single .npy array, not an .npz archive")
        with loaded as archive:
            missing = [key for key in REQUIRED if key not in archive.files]
            if missing:
                raise ValueError(f"{path}: missing required key '{missing[0]}'")
            arrays = {key: archive[key] for key in REQUIRED + OPTIONAL if key in archive.files}
        arrays["session_ids"] = _sessions_of_one_element(
            arrays["element_ids"], arrays["session_ids"]
        )
        return cls(path, arrays)

    def __len__(self) -> int:
        return len(self.arrays["signals"])

    @property
    def has_ids(self) -> bool:
        """With ids, loading again replaces instead of adding: sending twice is harmless."""
        return "ids" in self.arrays

    def piece(self, start: int, stop: int) -> bytes:
        """References ``start`` to ``stop - 1`` as an NPZ body."""
        buffer = io.BytesIO()
        np.savez(buffer, **{key: value[start:stop] for key, value in self.arrays.items()})
        return buffer.getvalue()


def _sessions_of_one_element(element_ids: np.ndarray, session_ids: np.ndarray) -> np.ndarray:
    """Session ids that repeat across elements, qualified as ``<element>/<session>``, as the
    service does for a whole file (model/data_format.py). It decides per request, so for pieces
    to be stored as the whole file would be, the whole file's answer is given here, once."""
    if element_ids.shape != session_ids.shape or element_ids.ndim != 1:
        return session_ids  # malformed: the service names the problem
    elements, sessions = element_ids.astype(str), session_ids.astype(str)
    pairs = np.unique(np.stack([elements, sessions], axis=1), axis=0)
    if len(np.unique(pairs[:, 1])) == len(pairs):
        return session_ids
    return np.char.add(np.char.add(elements, "/"), sessions)
