"""The NPZ format: round trips, and errors that name the key and the problem."""

import numpy as np
import pytest

from model.data_format import DataFormatError, load_npz


def write(path, **arrays):
    base = {
        "signals": np.random.default_rng(0).normal(size=(6, 2, 40)).astype(np.float32),
        "element_ids": np.array(["a", "a", "a", "b", "b", "b"]),
        "session_ids": np.array(["s1", "s1", "s2", "s1", "s2", "s2"]),
    }
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def test_synthetic_data_round_trips(tmp_path, tiny_data):
    tiny_data.save(tmp_path / "d.npz")
    loaded = load_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(loaded.signals, tiny_data.signals)
    np.testing.assert_array_equal(loaded.keypoints, tiny_data.keypoints)
    assert loaded.keypoint_names == tiny_data.keypoint_names and loaded.fs == tiny_data.fs
    assert loaded.summary() == tiny_data.summary()


def test_two_dimensional_signals_are_one_channel(tmp_path):
    data = load_npz(write(tmp_path / "d.npz", signals=np.zeros((6, 40), np.float64)))
    assert data.signals.shape == (6, 1, 40) and data.signals.dtype == np.float32


def test_session_ids_repeated_across_elements_are_kept_apart(tmp_path):
    data = load_npz(write(tmp_path / "d.npz"))
    assert set(data.session_ids) == {"a/s1", "a/s2", "b/s1", "b/s2"}


def test_integer_ids_and_extras_are_kept(tmp_path):
    data = load_npz(
        write(
            tmp_path / "d.npz",
            element_ids=np.array([1, 1, 1, 2, 2, 2]),
            beat_labels=np.array(list("NNVNNA")),
        )
    )
    assert data.element_ids[0] == "1"
    assert "".join(data.subset(np.array([2, 5])).extras["beat_labels"]) == "VA"


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"session_ids": None}, "missing required key 'session_ids'"),
        ({"signals": np.zeros((6,), np.float32)}, "'signals' must have shape"),
        ({"signals": np.array(["x"] * 6)}, "'signals' must be numeric"),
        ({"signals": np.full((6, 40), np.nan, np.float32)}, "non-finite values"),
        ({"element_ids": np.array(["a", "b"])}, "'element_ids' must have shape"),
        ({"element_ids": np.zeros(6)}, "'element_ids' must hold strings or integers"),
        ({"keypoints": np.zeros((6, 2), np.float32)}, "'keypoints' must be integers"),
        ({"keypoints": np.zeros((5, 2), np.int32)}, "'keypoints' must have shape"),
        ({"keypoints": np.full((6, 2), 40, np.int32)}, r"sample index in \[0, 40\)"),
        (
            {"keypoints": np.zeros((6, 2), np.int32), "keypoint_names": np.array(["p"])},
            "'keypoint_names' has 1 names for 2",
        ),
        ({"keypoint_names": np.array(["p"])}, "'keypoint_names' given without 'keypoints'"),
        ({"fs": np.float32(-1)}, "'fs' must be one positive number"),
    ],
)
def test_malformed_files_are_refused_with_the_key_and_the_problem(tmp_path, arrays, message):
    with pytest.raises(DataFormatError, match=message):
        load_npz(write(tmp_path / "bad.npz", **arrays))


def test_pickled_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(
        path,
        signals=np.zeros((2, 40)),
        element_ids=np.array([{"x": 1}, {}], dtype=object),
        session_ids=np.array(["a", "b"]),
    )
    with pytest.raises(DataFormatError, match="needs pickle"):
        load_npz(path)


def test_not_an_npz_file(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="not a readable .npz"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(DataFormatError, match="no such file"):
        load_npz(tmp_path / "missing.npz")


def test_sessions_can_be_redefined_from_an_extra_key(tmp_path):
    data = load_npz(write(tmp_path / "d.npz", beat_labels=np.array(list("NNVNVV"))))
    regrouped = data.sessions_from("beat_labels")
    assert list(regrouped.session_ids) == [
        "a/beat_labels=N",
        "a/beat_labels=N",
        "a/beat_labels=V",
        "b/beat_labels=N",
        "b/beat_labels=V",
        "b/beat_labels=V",
    ]
    assert list(data.session_ids)[0] == "a/s1"  # the original is untouched
    with pytest.raises(DataFormatError, match="no key 'nope'"):
        data.sessions_from("nope")
