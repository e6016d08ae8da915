"""NPZ archives from untrusted hands: sizes are read from the headers and checked before anything
is inflated; hostile members are named, and memory stays where it was.

The hostile archives are written here in pieces (a .npy header declaring a huge shape, then a
few MiB of zeros through deflate), so no test allocates what they declare.
"""

import io
import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from model import data_format
from model.data_format import (
    DataFormatError,
    NpzTooLarge,
    load_npz,
    npz_members,
    read_npz,
    validate_arrays,
)

MiB = 1 << 20
HUGE_SHAPE = (250_000, 4, 1000)  # float32: 4,000,000,000 bytes declared
LIMIT = 256 * MiB
MEMORY_SLACK = 50 * MiB  # what reading a hostile archive may add to the process's peak


def npy_header(shape, dtype="<f4", fortran=False) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer,
        {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": fortran,
            "shape": tuple(shape),
        },
    )
    return buffer.getvalue()


def write_member(archive: zipfile.ZipFile, name: str, head: bytes, zeros: int = 0) -> None:
    """A member of ``head`` then ``zeros`` zero bytes, streamed a MiB at a time."""
    chunk = memoryview(bytes(MiB))
    with archive.open(name, "w", force_zip64=True) as member:
        member.write(head)
        while zeros > 0:
            member.write(chunk[: min(zeros, MiB)])
            zeros -= MiB


def write_array(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(name, "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def hostile(path: Path, signals_header: bytes, zeros: int) -> Path:
    """An archive with ids for two signals and a ``signals`` member as crafted."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        write_member(archive, "signals.npy", signals_header, zeros)
        write_array(archive, "element_ids.npy", np.array(["a", "b"]))
        write_array(archive, "session_ids.npy", np.array(["s", "t"]))
    return path


@pytest.fixture(scope="module")
def declares_4gb(tmp_path_factory) -> Path:
    """'signals' declares 4 GB of float32; its stream holds 4 MiB of zeros."""
    path = tmp_path_factory.mktemp("npz") / "declares_4gb.npz"
    return hostile(path, npy_header(HUGE_SHAPE), zeros=4 * MiB)


@pytest.fixture(scope="module")
def lying_header(tmp_path_factory) -> Path:
    """'signals' declares (2, 1, 10) float32, 80 bytes; its stream holds 64 MiB of zeros."""
    path = tmp_path_factory.mktemp("npz") / "lying_header.npz"
    return hostile(path, npy_header((2, 1, 10)), zeros=64 * MiB)


# A fresh interpreter reads an archive and reports what it raised, the peak of traced
# allocations (numpy's included) and how far its peak resident memory grew.
MEASURE = r"""
import importlib.util, json, resource, sys, time, tracemalloc

spec = importlib.util.spec_from_file_location("data_format", sys.argv[1])
data_format = importlib.util.module_from_spec(spec)
sys.modules["data_format"] = data_format
spec.loader.exec_module(data_format)
body = open(sys.argv[2], "rb").read()
call, limit = sys.argv[3], None if sys.argv[4] == "none" else int(sys.argv[4])

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
start = time.perf_counter()
result = {}
try:
    if call == "members":
        headers = data_format.npz_members(body)
        result["shapes"] = {key: list(h.shape) for key, h in headers.items()}
        result["nbytes"] = {key: h.nbytes for key, h in headers.items()}
    else:
        data_format.load_npz(body, source="body", max_bytes=limit)
except data_format.DataFormatError as exc:
    result["error"] = type(exc).__name__
    result["message"] = str(exc)
    result["member"] = getattr(exc, "member", None)
    result["declared_bytes"] = getattr(exc, "declared_bytes", None)
result["seconds"] = time.perf_counter() - start
result["traced_peak"] = tracemalloc.get_traced_memory()[1]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result["rss_growth"] = (after - before) * 1024  # ru_maxrss is in KiB on Linux
print(json.dumps(result))
"""


def measure(path: Path, call: str = "load", limit: int | None = LIMIT) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, data_format.__file__, str(path), call, str(limit).lower()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["traced_peak"] < MEMORY_SLACK, result
    assert result["rss_growth"] < MEMORY_SLACK, result
    return result


def test_the_crafted_archive_is_small(declares_4gb, lying_header):
    assert declares_4gb.stat().st_size < 100_000
    assert lying_header.stat().st_size < 200_000


def test_members_declare_4gb_without_inflating_anything(declares_4gb):
    result = measure(declares_4gb, "members")
    assert "error" not in result
    assert result["shapes"] == {"signals": list(HUGE_SHAPE), "element_ids": [2], "session_ids": [2]}
    assert result["nbytes"]["signals"] == 4_000_000_000
    assert result["seconds"] < 5


def test_an_archive_declaring_4gb_is_refused_before_anything_is_inflated(declares_4gb):
    result = measure(declares_4gb, limit=LIMIT)
    assert result["error"] == "NpzTooLarge" and result["member"] == "signals"
    assert result["declared_bytes"] == 4_000_000_000
    assert result["message"] == (
        "body: 'signals' declares 4,000,000,000 bytes (shape (250000, 4, 1000), float32), "
        f"over the limit of {LIMIT:,} bytes"
    )
    assert result["seconds"] < 5


def test_a_callers_check_sees_every_header_before_anything_is_inflated(declares_4gb):
    seen = {}

    class Refused(Exception):
        pass

    def check(members):
        seen.update({name: header.shape for name, header in members.items()})
        raise Refused  # e.g. the signals' channels do not fit a model

    with pytest.raises(Refused):
        load_npz(declares_4gb, check=check)  # no size limit: only the check stands in the way
    assert seen == {"signals": HUGE_SHAPE, "element_ids": (2,), "session_ids": (2,)}


def test_without_a_limit_the_4gb_declaring_archive_is_refused_by_its_stored_size(declares_4gb):
    result = measure(declares_4gb, limit=None)
    assert result["error"] == "DataFormatError"
    assert result["message"].startswith("body: 'signals' declares 4,000,000,000 bytes")
    assert result["message"].endswith(f"but the archive stores {4 * MiB:,}")


@pytest.mark.parametrize("limit", [LIMIT, None])
def test_a_header_declaring_less_than_its_stream_holds_is_refused(lying_header, limit):
    result = measure(lying_header, limit=limit)
    assert result["error"] == "DataFormatError"  # under the limit: the header's size is small
    assert result["message"] == (
        "body: 'signals' declares 80 bytes (shape (2, 1, 10), float32) "
        f"but the archive stores {64 * MiB:,}"
    )


def cut_short(data: bytes, name: str, by: int) -> bytes:
    """The archive with the central directory's compressed size of ``name`` ``by`` bytes short:
    the member's data ends before its header and the directory say it does."""
    position = data.find(b"PK\x01\x02")
    while position >= 0:
        (name_length,) = struct.unpack_from("<H", data, position + 28)
        if data[position + 46 : position + 46 + name_length] == name.encode():
            (compressed,) = struct.unpack_from("<I", data, position + 20)
            patched = bytearray(data)
            struct.pack_into("<I", patched, position + 20, compressed - by)
            return bytes(patched)
        position = data.find(b"PK\x01\x02", position + 1)
    raise AssertionError(f"no {name} in the archive")


def small_archive(compression=zipfile.ZIP_STORED, signals=None, **extra: bytes) -> bytes:
    buffer = io.BytesIO()
    if signals is None:
        signals = np.arange(60, dtype=np.float32).reshape(3, 20)
    arrays = {
        "signals": signals,
        "element_ids": np.array(["a", "a", "b"]),
        "session_ids": np.array(["s", "t", "u"]),
    }
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for key, array in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, array)
            archive.writestr(key + ".npy", npy.getvalue())
        for name, content in extra.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_a_truncated_member_is_named():
    # cut within the header's first read (stored) and within the data (deflated, 400 kB)
    stored = cut_short(small_archive(), "signals.npy", by=100)
    noise = np.random.default_rng(0).normal(size=(3, 1, 50_000)).astype(np.float32)
    deflated = cut_short(small_archive(zipfile.ZIP_DEFLATED, noise), "signals.npy", by=50_000)
    for body in (stored, deflated):
        with pytest.raises(DataFormatError, match=r"^body: 'signals' is damaged or truncated"):
            load_npz(body, source="body", max_bytes=LIMIT)
    assert npz_members(deflated)["signals"].shape == (3, 1, 50_000)  # its header is whole


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_a_valid_archive_under_the_limit_loads_as_np_load_does(tmp_path, save):
    rng = np.random.default_rng(0)
    arrays = {
        "signals": np.asfortranarray(rng.normal(size=(50, 3, 2000))),  # 2.4 MB: several pieces
        "element_ids": np.arange(50).astype(">i8") // 10,
        "session_ids": np.array([f"s{i // 5}" for i in range(50)]),
        "keypoints": rng.integers(-1, 2000, size=(50, 2)).astype(np.int32),
        "keypoint_names": np.array(["p", "r"]),
        "fs": np.float32(250),
        "flags": rng.random(50) > 0.5,
        "nothing": np.zeros((0, 4), np.int16),
        "pairs": np.zeros(50, dtype=[("x", "<i4"), ("y", ">f8")]),
    }
    path = tmp_path / "valid.npz"
    save(path, **arrays)
    with np.load(path, allow_pickle=False) as archive:
        expected = {key: archive[key] for key in archive.files}
    read = read_npz(path, max_bytes=LIMIT)
    assert list(read) == list(expected)
    for key, array in expected.items():
        assert read[key].dtype == array.dtype and read[key].shape == array.shape, key
        assert read[key].flags.f_contiguous == array.flags.f_contiguous, key
        np.testing.assert_array_equal(read[key], array)
    data = load_npz(path, max_bytes=LIMIT)
    reference = validate_arrays(expected, source=str(path))
    np.testing.assert_array_equal(data.signals, reference.signals)
    np.testing.assert_array_equal(data.session_ids, reference.session_ids)
    assert data.summary() == reference.summary()

    headers = npz_members(path)
    assert list(headers) == list(expected)
    for key, array in expected.items():
        header = headers[key]
        assert (header.shape, header.dtype, header.nbytes) == (
            array.shape,
            array.dtype,
            array.nbytes,
        )
        assert header.fortran_order == (key == "signals")  # saved from a Fortran array
    with open(path, "rb") as f:  # a file object and bytes read the same
        assert npz_members(f) == headers
    assert npz_members(path.read_bytes()) == headers


def test_the_limit_counts_all_members_together():
    body = small_archive()  # signals 240 bytes, element_ids 12, session_ids 12
    with pytest.raises(NpzTooLarge) as caught:
        load_npz(body, source="body", max_bytes=250)
    assert caught.value.member == "element_ids" and caught.value.declared_bytes == 12
    assert caught.value.total_bytes == 264 and caught.value.limit == 250
    assert "which brings the archive to 252, over the limit of 250 bytes" in str(caught.value)
    assert len(load_npz(body, max_bytes=264)) == 3


def test_object_arrays_are_refused_by_their_header(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(
        path,
        signals=np.zeros((2, 40)),
        element_ids=np.array([{"x": 1}, {}], dtype=object),
        session_ids=np.array(["a", "b"]),
    )
    for read in (npz_members, load_npz):
        with pytest.raises(
            DataFormatError, match=r"'element_ids' holds Python objects.*needs pickle"
        ):
            read(path)


def test_a_member_that_is_not_npy_is_named():
    with pytest.raises(DataFormatError, match=r"^body: member 'notes.txt' is not a .npy array$"):
        npz_members(small_archive(**{"notes.txt": b"hello"}), source="body")
    with pytest.raises(DataFormatError, match=r"^body: 'extra' is not a readable .npy array"):
        load_npz(small_archive(**{"extra.npy": b"not numpy at all"}), source="body")


def test_a_header_over_numpys_limit_is_refused_unread(tmp_path):
    huge_header = b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFF_FF00)  # declares ~4 GB of text
    path = hostile(tmp_path / "huge_header.npz", huge_header, zeros=16 * MiB)
    result = measure(path, "members")
    assert result["message"] == (
        "data: 'signals' is not a readable .npy array "
        "(a .npy header of 4,294,967,040 bytes, over numpy's limit of 10,000)"
    )


def test_only_stored_and_deflated_members_are_read():
    body = small_archive(compression=zipfile.ZIP_BZIP2)
    with pytest.raises(DataFormatError, match="'signals' uses zip compression method 12"):
        npz_members(body)


def test_a_member_twice_is_refused():
    with pytest.warns(UserWarning, match="Duplicate name"):
        body = small_archive(**{"signals.npy": b""})
    with pytest.raises(DataFormatError, match="'signals' appears twice"):
        npz_members(body)


def test_what_is_not_an_archive_is_named():
    with pytest.raises(DataFormatError, match=r"^body: not a readable .npz file"):
        load_npz(b"PK\x03\x04 and then nothing", source="body")
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    with pytest.raises(DataFormatError, match="a single .npy array, not an .npz archive"):
        npz_members(npy.getvalue())


def test_one_file_object_is_read_for_its_headers_then_loaded():
    body = io.BytesIO(small_archive())
    assert npz_members(body)["signals"].shape == (3, 20)
    assert load_npz(body, max_bytes=LIMIT).signals.shape == (3, 1, 20)
