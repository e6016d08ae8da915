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

Other keys are kept untouched in ``extras``. Object arrays are refused (numpy's
``allow_pickle=False``), so no file can run code when read.

Reading untrusted archives (a request body): a small archive can declare gigabytes, so nothing is
inflated before its size is known.

- ``npz_members(file)`` reads each member's ``.npy`` header alone (the zip's directory and the
  first bytes of each member): its declared shape, dtype, Fortran order and inflated size
  (``MemberHeader.nbytes``). A caller checks these against its own limits (channels, lengths,
  batch size) before reading any data, e.g. ``npz_members(body)["signals"].shape``.
- ``load_npz(file, max_bytes=...)`` (and ``read_npz``, the raw arrays without validation) first
  sums the members' declared sizes and raises ``NpzTooLarge`` (a ``DataFormatError``, with
  ``member`` and ``declared_bytes``) over the limit; then each member is checked against the size
  the zip's directory lists for it, and inflated in pieces of ``READ_CHUNK`` bytes into an array of
  its declared shape: more or fewer bytes than declared is an error, and no more than the declared
  size is ever allocated or read. Without ``max_bytes`` the same reader runs, with no limit.

Every error names the member: one that is not a ``.npy`` array, a damaged or truncated one, a
header over numpy's size limit (``MAX_NPY_HEADER``), a compression other than stored or deflated.
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAX_NPY_HEADER = 10_000  # bytes of a .npy header's text: numpy's own limit (np.load)
READ_CHUNK = 1 << 20  # an archive's members are inflated this many bytes at a time
_NPY_MAGIC = b"\x93NUMPY"
_HEADER_LENGTH = {1: "<H", 2: "<I", 3: "<I"}  # .npy format version -> its header-length field
# What zipfile, zlib and the underlying file raise on a damaged or truncated member...
_DAMAGED = (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)
# ... and on an archive that is no zip at all.
_NOT_A_ZIP = (*_DAMAGED, ValueError, struct.error)


class DataFormatError(ValueError):
    """A file that does not follow the NPZ format; the message names the key and the problem."""


class NpzTooLarge(DataFormatError):
    """An archive whose members declare more inflated bytes than the caller allows; raised before
    anything is inflated. ``member`` is the largest member when it alone is over the limit, else
    the one whose size brings the sum over; ``declared_bytes`` is that member's declared size,
    ``total_bytes`` all members' together, ``limit`` the limit."""

    def __init__(
        self, message: str, member: str, declared_bytes: int, total_bytes: int, limit: int
    ):
        super().__init__(message)
        self.member = member
        self.declared_bytes = declared_bytes
        self.total_bytes = total_bytes
        self.limit = limit


@dataclass(frozen=True)
class MemberHeader:
    """What one member of an NPZ archive declares in its ``.npy`` header; nothing inflated."""

    name: str  # the key: the member's name without ".npy"
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    nbytes: int  # the data's inflated size: prod(shape) * itemsize
    header_bytes: int  # the .npy header's size, before the data
    stored_bytes: int  # the member's inflated size as the zip's directory lists it (header + data)
    compressed_bytes: int  # its size in the archive


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
    numpy's own parser for format versions 1.0, 2.0 and 3.0; ValueError and others when
    malformed. The header's length is checked against ``MAX_NPY_HEADER`` before it is read."""
    shape, fortran_order, dtype, _ = _read_npy_header(stream)
    return shape, fortran_order, dtype


def _read_exactly(stream: BinaryIO, n: int, what: str) -> bytes:
    data = b""
    while len(data) < n:
        piece = stream.read(n - len(data))
        if not piece:
            raise ValueError(f"the {what} ends after {len(data)} of {n} bytes")
        data += piece
    return data


def _read_npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """As ``read_npy_header``, and the header's size in bytes."""
    magic = _read_exactly(stream, 8, ".npy header")
    if magic[:6] != _NPY_MAGIC:
        raise ValueError("not a .npy array (no numpy magic string)")
    version = (magic[6], magic[7])
    if version[1] != 0 or version[0] not in _HEADER_LENGTH:
        raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
    length_format = _HEADER_LENGTH[version[0]]
    length_field = _read_exactly(stream, struct.calcsize(length_format), ".npy header")
    (length,) = struct.unpack(length_format, length_field)
    if length > MAX_NPY_HEADER:  # numpy checks only after reading it, which may be gigabytes
        raise ValueError(
            f"a .npy header of {length:,} bytes, over numpy's limit of {MAX_NPY_HEADER:,}"
        )
    text = _read_exactly(stream, length, ".npy header")
    if version[0] == 3:  # UTF-8 text; numpy's public parsers read Latin-1 (versions 1 and 2)
        try:
            text = text.decode("utf8").encode("latin1")
        except UnicodeError as exc:
            raise ValueError(f"a .npy 3.0 header with names outside Latin-1 ({exc})") from exc
    parse = (
        np.lib.format.read_array_header_1_0
        if version[0] == 1
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran_order, dtype = parse(io.BytesIO(length_field + text))
    return shape, fortran_order, dtype, len(magic) + len(length_field) + len(text)


def _source(file: str | Path | BinaryIO | bytes, source: str | None) -> str:
    """What messages call the file: ``source``, else its path, else "data"."""
    return source or (str(file) if isinstance(file, str | Path) else "data")


def _open_archive(file: str | Path | BinaryIO | bytes, source: str) -> zipfile.ZipFile:
    if isinstance(file, str | Path) and not Path(file).is_file():
        raise DataFormatError(f"{source}: no such file")
    if isinstance(file, bytes | bytearray | memoryview):
        file = io.BytesIO(file)
    try:
        return zipfile.ZipFile(file)
    except _NOT_A_ZIP as exc:
        reason = "a single .npy array, not an .npz archive" if _is_npy(file) else exc
        raise DataFormatError(f"{source}: not a readable .npz file ({reason})") from exc


def _is_npy(file: str | Path | BinaryIO) -> bool:
    try:
        if isinstance(file, str | Path):
            with open(file, "rb") as f:
                return f.read(len(_NPY_MAGIC)) == _NPY_MAGIC
        file.seek(0)
        return file.read(len(_NPY_MAGIC)) == _NPY_MAGIC
    except (OSError, ValueError):
        return False


def _member_headers(
    archive: zipfile.ZipFile, source: str
) -> list[tuple[zipfile.ZipInfo, MemberHeader]]:
    """Each member's header, in archive order; DataFormatError naming a member that is not a
    readable, pickle-free ``.npy`` array."""
    members: list[tuple[zipfile.ZipInfo, MemberHeader]] = []
    keys: set[str] = set()
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise DataFormatError(f"{source}: member '{info.filename}' is not a .npy array")
        key = info.filename[: -len(".npy")]
        if key in keys:
            raise DataFormatError(f"{source}: '{key}' appears twice in the archive")
        keys.add(key)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # bzip2 and lzma members inflate a whole read at once: no bound on the memory used
            raise DataFormatError(
                f"{source}: '{key}' uses zip compression method {info.compress_type}; "
                "only stored and deflated members are read"
            )
        if info.flag_bits & 0x1:
            raise DataFormatError(f"{source}: '{key}' is encrypted")
        try:
            with archive.open(info) as stream:
                shape, fortran_order, dtype, header_bytes = _read_npy_header(stream)
        except _DAMAGED as exc:
            raise DataFormatError(f"{source}: '{key}' is damaged or truncated ({exc})") from exc
        except Exception as exc:  # numpy's header parser raises ValueError and others
            raise DataFormatError(
                f"{source}: '{key}' is not a readable .npy array ({exc})"
            ) from exc
        if dtype.hasobject:
            raise DataFormatError(
                f"{source}: '{key}' holds Python objects ({dtype}): an array that needs pickle "
                "to load is refused"
            )
        if any(n < 0 for n in shape):
            raise DataFormatError(f"{source}: '{key}' declares a negative shape {shape}")
        header = MemberHeader(
            name=key,
            shape=tuple(int(n) for n in shape),
            dtype=dtype,
            fortran_order=bool(fortran_order),
            nbytes=math.prod(shape) * dtype.itemsize,  # Python ints: no wrap-around
            header_bytes=header_bytes,
            stored_bytes=info.file_size,
            compressed_bytes=info.compress_size,
        )
        members.append((info, header))
    return members


def npz_members(
    file: str | Path | BinaryIO | bytes, source: str | None = None
) -> dict[str, MemberHeader]:
    """Each member's declared shape, dtype, Fortran order and inflated size, by key, read from
    the zip's directory and each member's ``.npy`` header only: no data is inflated, whatever the
    archive declares. DataFormatError naming the member when one is not a readable ``.npy``
    array or needs pickle; ``source`` names the file in messages."""
    source = _source(file, source)
    with _open_archive(file, source) as archive:
        return {header.name: header for _, header in _member_headers(archive, source)}


def _check_total(headers: list[MemberHeader], max_bytes: int, source: str) -> None:
    total = sum(h.nbytes for h in headers)
    if total <= max_bytes:
        return
    largest = max(headers, key=lambda h: h.nbytes)
    if largest.nbytes > max_bytes:
        culprit, beyond = largest, ""
    else:
        running = 0
        for culprit in headers:
            running += culprit.nbytes
            if running > max_bytes:
                break
        beyond = f", which brings the archive to {running:,}"
    raise NpzTooLarge(
        f"{source}: '{culprit.name}' declares {culprit.nbytes:,} bytes (shape {culprit.shape}, "
        f"{culprit.dtype}){beyond}, over the limit of {max_bytes:,} bytes",
        member=culprit.name,
        declared_bytes=culprit.nbytes,
        total_bytes=total,
        limit=max_bytes,
    )


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, header: MemberHeader, source: str
) -> np.ndarray:
    """One member's array, inflated ``READ_CHUNK`` bytes at a time into an array of its declared
    shape: never more than its declared size is allocated or read."""
    key, nbytes = header.name, header.nbytes
    try:
        flat = np.empty(math.prod(header.shape), header.dtype)
    except (MemoryError, ValueError) as exc:  # a size the directory agrees with, but absurd
        raise DataFormatError(
            f"{source}: '{key}' declares {nbytes:,} bytes, more than can be allocated ({exc})"
        ) from exc
    raw = flat.view(np.uint8) if nbytes else None
    try:
        with archive.open(info) as stream:
            _read_exactly(stream, header.header_bytes, ".npy header")
            filled = 0
            while filled < nbytes:
                piece = stream.read(min(READ_CHUNK, nbytes - filled))
                if not piece:
                    raise DataFormatError(
                        f"{source}: '{key}' ends after {filled:,} of its {nbytes:,} declared bytes"
                    )
                raw[filled : filled + len(piece)] = np.frombuffer(piece, np.uint8)
                filled += len(piece)
            if stream.read(1):
                raise DataFormatError(
                    f"{source}: '{key}' holds more than the {nbytes:,} bytes its header declares"
                )
    except DataFormatError:
        raise  # names the member already
    except (*_DAMAGED, ValueError) as exc:
        raise DataFormatError(f"{source}: '{key}' is damaged or truncated ({exc})") from exc
    return flat.reshape(header.shape, order="F" if header.fortran_order else "C")


HeaderCheck = Callable[[dict[str, MemberHeader]], None]


def read_npz(
    file: str | Path | BinaryIO | bytes,
    source: str | None = None,
    *,
    max_bytes: int | None = None,
    check: HeaderCheck | None = None,
) -> dict[str, np.ndarray]:
    """Every array of an NPZ archive by key, as ``np.load`` gives them (``allow_pickle=False``),
    unvalidated; read within ``max_bytes`` of inflated data as the module docstring says.
    ``check`` is given every member's header first, before anything is inflated (to refuse
    an archive on its declared shapes, say)."""
    source = _source(file, source)
    with _open_archive(file, source) as archive:
        members = _member_headers(archive, source)
        if check is not None:
            check({header.name: header for _, header in members})
        if max_bytes is not None:
            _check_total([header for _, header in members], max_bytes, source)
        for _, header in members:  # a lying header is caught before anything is inflated
            if header.stored_bytes != header.header_bytes + header.nbytes:
                raise DataFormatError(
                    f"{source}: '{header.name}' declares {header.nbytes:,} bytes (shape "
                    f"{header.shape}, {header.dtype}) but the archive stores "
                    f"{header.stored_bytes - header.header_bytes:,}"
                )
        return {
            header.name: _read_member(archive, info, header, source) for info, header in members
        }


def _id_array(raw: np.ndarray, key: str, n: int) -> np.ndarray:
    if raw.shape != (n,):
        raise DataFormatError(f"'{key}' must have shape ({n},) like 'signals', got {raw.shape}")
    if raw.dtype.kind not in "iuUS":
        raise DataFormatError(f"'{key}' must hold strings or integers, got dtype {raw.dtype}")
    return raw.astype(str)


def load_npz(
    file: str | Path | BinaryIO | bytes,
    source: str | None = None,
    *,
    max_bytes: int | None = None,
    check: HeaderCheck | None = None,
) -> SignalData:
    """Read and validate one NPZ file (a path, or a file object or bytes such as a request body);
    raise DataFormatError naming the key and the problem. ``source`` names it in messages;
    ``max_bytes`` bounds the members' inflated size (NpzTooLarge before anything is inflated);
    ``check`` sees the members' headers first (see :func:`read_npz`)."""
    source = _source(file, source)
    arrays = read_npz(file, source, max_bytes=max_bytes, check=check)
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
