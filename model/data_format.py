"""The project's NPZ format: the data contract shared by training and serving (numpy only).

One file holds N signals of one length:

| key | dtype, shape | meaning |
|---|---|---|
| ``signals`` | float (N, L) or (N, C, L) | raw values, any unit |
| ``element_ids`` | str or int (N,) | the element (machine, person) each signal came from |
| ``session_ids`` | str or int (N,) | the session (recording); unique across elements or not |
| ``keypoints`` | int (N, K), optional | sample index of each keypoint, -1 where absent |
| ``keypoint_names`` | str (K,), optional | names in column order |
| ``fs`` | float scalar, optional | samples per second, for errors in ms |

Other keys are kept untouched in ``extras``. Files load with ``allow_pickle=False``: object arrays
are refused, so no file can run code when read.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np


class DataFormatError(ValueError):
    """A file that does not follow the NPZ format; the message names the key and the problem."""


@dataclass
class SignalData:
    """Arrays of one NPZ file, validated. ``session_ids`` are made unique per element."""

    signals: np.ndarray  # (N, C, L) float32
    element_ids: np.ndarray  # (N,) str
    session_ids: np.ndarray  # (N,) str, "<element>/<session>" when the file's were not unique
    keypoints: np.ndarray | None = None  # (N, K) int64, -1 absent
    keypoint_names: list[str] = field(default_factory=list)
    fs: float | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.signals)

    @property
    def channels(self) -> int:
        return self.signals.shape[1]

    @property
    def length(self) -> int:
        return self.signals.shape[2]

    def subset(self, index: np.ndarray) -> SignalData:
        return SignalData(
            signals=self.signals[index],
            element_ids=self.element_ids[index],
            session_ids=self.session_ids[index],
            keypoints=None if self.keypoints is None else self.keypoints[index],
            keypoint_names=list(self.keypoint_names),
            fs=self.fs,
            extras={k: v[index] for k, v in self.extras.items() if v.ndim and len(v) == len(self)},
        )

    @staticmethod
    def concat(parts: list[SignalData]) -> SignalData:
        """One dataset from several of the same shape and keypoints; extras all share are kept."""
        first = parts[0]
        for other in parts[1:]:
            if other.signals.shape[1:] != first.signals.shape[1:]:
                raise DataFormatError(
                    f"cannot join signals of shape {other.signals.shape[1:]} to "
                    f"{first.signals.shape[1:]}"
                )
            if other.keypoint_names != first.keypoint_names:
                raise DataFormatError(
                    f"cannot join keypoints {other.keypoint_names} to {first.keypoint_names}"
                )
        shared = set.intersection(*(set(p.extras) for p in parts))
        return SignalData(
            signals=np.concatenate([p.signals for p in parts]),
            element_ids=np.concatenate([p.element_ids for p in parts]),
            session_ids=np.concatenate([p.session_ids for p in parts]),
            keypoints=None
            if first.keypoints is None
            else np.concatenate([p.keypoints for p in parts]),
            keypoint_names=list(first.keypoint_names),
            fs=first.fs,
            extras={k: np.concatenate([p.extras[k] for p in parts]) for k in sorted(shared)},
        )

    def sessions_from(self, key: str) -> SignalData:
        """The same signals with sessions redefined as (element, ``extras[key]``): e.g. a
        recording's beats grouped by their annotated beat type."""
        if key not in self.extras:
            raise DataFormatError(f"no key '{key}' to take sessions from")
        values = self.extras[key]
        if values.shape != (len(self),):
            raise DataFormatError(f"'{key}' must have shape ({len(self)},) to define sessions")
        regrouped = self.subset(np.arange(len(self)))
        regrouped.session_ids = np.char.add(
            np.char.add(self.element_ids.astype(str), f"/{key}="), values.astype(str)
        )
        return regrouped

    def only_elements(self, elements) -> SignalData:
        return self.subset(np.flatnonzero(np.isin(self.element_ids, list(elements))))

    def summary(self) -> dict:
        return {
            "signals": len(self),
            "channels": self.channels,
            "length": self.length,
            "elements": int(len(np.unique(self.element_ids))),
            "sessions": int(len(np.unique(self.session_ids))),
            "keypoint_names": list(self.keypoint_names),
            "keypoints_present": (
                None
                if self.keypoints is None
                else {
                    name: int((self.keypoints[:, k] >= 0).sum())
                    for k, name in enumerate(self.keypoint_names)
                }
            ),
            "fs": self.fs,
        }

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "signals": self.signals,
            "element_ids": self.element_ids,
            "session_ids": self.session_ids,
        }
        if self.keypoints is not None:
            arrays["keypoints"] = self.keypoints.astype(np.int32)
            arrays["keypoint_names"] = np.asarray(self.keypoint_names, dtype=str)
        if self.fs is not None:
            arrays["fs"] = np.float32(self.fs)
        np.savez_compressed(path, **arrays, **self.extras)


def read_npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """A ``.npy`` header read from ``stream`` (left at the data): shape, Fortran order, dtype.
    numpy's own reader for format versions 1.0 and 2.0; ValueError and others when malformed."""
    version = np.lib.format.read_magic(stream)
    read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    return read(stream)


def _id_array(raw: np.ndarray, key: str, n: int) -> np.ndarray:
    if raw.shape != (n,):
        raise DataFormatError(f"'{key}' must have shape ({n},) like 'signals', got {raw.shape}")
    if raw.dtype.kind not in "iuUS":
        raise DataFormatError(f"'{key}' must hold strings or integers, got dtype {raw.dtype}")
    return raw.astype(str)


def load_npz(file: str | Path | BinaryIO, source: str | None = None) -> SignalData:
    """Read and validate one NPZ file (a path, or a file object such as a request body);
    raise DataFormatError naming the key and the problem. ``source`` names it in messages."""
    if isinstance(file, str | Path):
        source = source or str(file)
        if not Path(file).is_file():
            raise DataFormatError(f"{source}: no such file")
    source = source or "data"
    try:
        archive = np.load(file, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFormatError(f"{source}: not a readable .npz file ({exc})") from exc
    with archive:
        try:
            arrays = {key: archive[key] for key in archive.files}
        except ValueError as exc:  # object arrays need pickle, which is refused
            raise DataFormatError(f"{source}: an array needs pickle to load ({exc})") from exc
        except (OSError, EOFError, zipfile.BadZipFile) as exc:  # a damaged member
            raise DataFormatError(f"{source}: not a readable .npz file ({exc})") from exc
    return validate_arrays(arrays, source=source)


def validate_arrays(arrays: dict[str, np.ndarray], source: str = "data") -> SignalData:
    """Check the NPZ format's keys, shapes and values; see the module docstring."""
    for key in ("signals", "element_ids", "session_ids"):
        if key not in arrays:
            raise DataFormatError(f"{source}: missing required key '{key}'")
    signals = arrays["signals"]
    if signals.dtype.kind not in "fiu":
        raise DataFormatError(f"{source}: 'signals' must be numeric, got dtype {signals.dtype}")
    if signals.ndim == 2:
        signals = signals[:, None, :]
    if signals.ndim != 3:
        raise DataFormatError(
            f"{source}: 'signals' must have shape (N, L) or (N, C, L), got {signals.shape}"
        )
    n = signals.shape[0]
    if n == 0:
        raise DataFormatError(f"{source}: 'signals' is empty")
    signals = signals.astype(np.float32)
    bad = ~np.isfinite(signals)
    if bad.any():
        first = int(np.argwhere(bad.reshape(n, -1).any(axis=1))[0, 0])
        raise DataFormatError(
            f"{source}: 'signals' holds {int(bad.sum())} non-finite values "
            f"(first in signal {first})"
        )
    element_ids = _id_array(arrays["element_ids"], "element_ids", n)
    session_ids = _id_array(arrays["session_ids"], "session_ids", n)
    # A session belongs to one element: qualify session ids that repeat across elements.
    pairs = np.unique(np.stack([element_ids, session_ids], axis=1), axis=0)
    if len(np.unique(pairs[:, 1])) != len(pairs):
        session_ids = np.char.add(np.char.add(element_ids, "/"), session_ids)

    keypoints = None
    names: list[str] = []
    if "keypoints" in arrays:
        keypoints = arrays["keypoints"]
        if keypoints.dtype.kind not in "iu":
            raise DataFormatError(
                f"{source}: 'keypoints' must be integers (-1 for absent), got dtype "
                f"{keypoints.dtype}"
            )
        if keypoints.ndim != 2 or keypoints.shape[0] != n:
            raise DataFormatError(
                f"{source}: 'keypoints' must have shape ({n}, K), got {keypoints.shape}"
            )
        keypoints = keypoints.astype(np.int64)
        length = signals.shape[2]
        if ((keypoints < -1) | (keypoints >= length)).any():
            raise DataFormatError(
                f"{source}: 'keypoints' must be -1 (absent) or a sample index in [0, {length})"
            )
        if "keypoint_names" in arrays:
            names = [str(s) for s in arrays["keypoint_names"].tolist()]
            if len(names) != keypoints.shape[1]:
                raise DataFormatError(
                    f"{source}: 'keypoint_names' has {len(names)} names for "
                    f"{keypoints.shape[1]} keypoint columns"
                )
        else:
            names = [f"keypoint_{k}" for k in range(keypoints.shape[1])]
    elif "keypoint_names" in arrays:
        raise DataFormatError(f"{source}: 'keypoint_names' given without 'keypoints'")

    fs = None
    if "fs" in arrays:
        fs_raw = np.asarray(arrays["fs"])
        if fs_raw.size != 1 or fs_raw.dtype.kind not in "fiu" or not float(fs_raw) > 0:
            raise DataFormatError(f"{source}: 'fs' must be one positive number, got {fs_raw!r}")
        fs = float(fs_raw)

    known = {"signals", "element_ids", "session_ids", "keypoints", "keypoint_names", "fs"}
    extras = {k: v for k, v in arrays.items() if k not in known}
    return SignalData(signals, element_ids, session_ids, keypoints, names, fs, extras)
