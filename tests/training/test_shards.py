"""The sharded dataset: its index, memory-mapped reads, and training and evaluating on it."""

import json
import mmap

import numpy as np
import pytest
import torch

from model.data_format import DataFormatError, load_npz
from model.shards import INDEX_FILE, ShardedData, load_signals, write_shards
from tests.conftest import TINY_MODEL, TINY_MODEL_FLAGS
from training.__main__ import main
from training.data import ShardedSignalDataset
from training.sampler import HierarchicalSampler
from training.train import TrainConfig, Trainer


def _rows_by_key(data):
    """Signals keyed by (element, session, first value): row order aside, the same data."""
    return {
        (e, s, float(x[0, 0])): (x, None if data.keypoints is None else tuple(k))
        for e, s, x, k in zip(
            data.element_ids,
            data.session_ids,
            data.signals,
            data.keypoints if data.keypoints is not None else [None] * len(data),
            strict=True,
        )
    }


def test_shards_hold_the_same_rows_and_labels_come_from_the_index(tiny_data, tmp_path):
    assert len(tiny_data) == 80
    index = write_shards([tiny_data], tmp_path, shard_size=30)
    assert [s["count"] for s in index["shards"]] == [30, 30, 20]
    assert json.loads((tmp_path / INDEX_FILE).read_text()) == index
    first = index["shards"][0]
    assert {"path", "count", "length", "channels", "elements", "sessions", "sha256"} <= set(first)
    assert sum(run[2] for run in first["runs"]) == first["count"]
    assert load_npz(tmp_path / first["path"]).extras.keys() == tiny_data.extras.keys()

    sharded = ShardedData(tmp_path)
    assert all(isinstance(s.signals.base, mmap.mmap) for s in sharded.shards)
    loaded = sharded.load_all()
    assert len(loaded) == len(tiny_data) == len(sharded)
    theirs, ours = _rows_by_key(tiny_data), _rows_by_key(loaded)
    assert theirs.keys() == ours.keys()
    for key, (signal, keypoints) in theirs.items():
        np.testing.assert_array_equal(ours[key][0], signal)
        assert ours[key][1] == keypoints
    assert load_signals(tmp_path).summary() == {**tiny_data.summary()}
    assert sharded.summary()["signals"] == len(tiny_data)


def test_a_batch_reads_its_rows_across_shards_in_the_order_asked(tiny_data, tmp_path):
    write_shards([tiny_data], tmp_path, shard_size=7)
    sharded = ShardedData(tmp_path)
    everything = sharded.load_all()
    rows = np.array([71, 0, 15, 8, 8, 42])
    signals, keypoints, elements, sessions = ShardedSignalDataset(sharded).batch(torch.tensor(rows))
    np.testing.assert_array_equal(signals.numpy(), everything.signals[rows])
    np.testing.assert_array_equal(keypoints.numpy(), everything.keypoints[rows])
    np.testing.assert_array_equal(
        sharded.element_names[elements.numpy()], everything.element_ids[rows]
    )
    np.testing.assert_array_equal(
        sharded.session_names[sessions.numpy()], everything.session_ids[rows]
    )


def test_the_sampler_draws_hierarchical_batches_from_the_index_alone(tiny_data, tmp_path):
    write_shards([tiny_data], tmp_path, shard_size=5)
    sharded = ShardedData(tmp_path)
    sampler = HierarchicalSampler.from_groups(
        sharded.groups(sharded.element_names), p=4, k=4, seed=1
    )
    for batch in sampler:
        elements, sessions = sharded.labels(np.array(batch))
        assert len(set(elements)) == 4
        for e in set(elements):
            mine = sessions[elements == e]
            assert len(mine) == 4 and len(set(mine)) == 2  # session positives and negatives


def test_a_damaged_shard_or_mismatched_sources_are_refused(tiny_data, tmp_path):
    write_shards([tiny_data], tmp_path / "a", shard_size=16)
    shard = tmp_path / "a" / "shard-00001.npz"
    raw = bytearray(shard.read_bytes())
    raw[-40] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match="shard-00001.npz: 'sha256'"):
        ShardedData(tmp_path / "a")
    ShardedData(tmp_path / "a", verify=False)  # the damage goes unseen without the check
    index = json.loads((tmp_path / "a" / INDEX_FILE).read_text())
    del index["shards"][0]["runs"]
    (tmp_path / "a" / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(DataFormatError, match="index.json: missing 'runs'"):
        ShardedData(tmp_path / "a")
    shorter = tiny_data.subset(np.arange(len(tiny_data)))
    shorter.signals = shorter.signals[:, :, :32]
    shorter.keypoints = np.minimum(shorter.keypoints, 31)
    with pytest.raises(DataFormatError, match="'length' is 32"):
        write_shards([tiny_data, shorter], tmp_path / "b", shard_size=16)


def test_training_on_shards_splits_elements_as_in_memory(tiny_data, tmp_path):
    write_shards([tiny_data], tmp_path / "shards", shard_size=30)
    config = TrainConfig(epochs=1, p=4, k=4, test_fraction=0.2, model=TINY_MODEL)
    in_memory = Trainer(config, tiny_data, tmp_path / "a")
    sharded = Trainer(config, ShardedData(tmp_path / "shards"), tmp_path / "b")
    assert sharded.split.test_elements == in_memory.split.test_elements
    assert set(sharded.split.val_data.element_ids) == set(in_memory.split.val_data.element_ids)
    assert sharded.split.train_summary == {
        **in_memory.split.train_summary,
        "keypoints_present": None,
    } | {"shards": 3}
    manifest = sharded.fit()
    assert manifest["training_data"]["signals"] == len(in_memory.split.train_data)
    assert manifest["validation_metrics"].keys() == in_memory.fit()["validation_metrics"].keys()


def test_the_command_line_shards_trains_and_evaluates_on_a_directory(tiny_data, tmp_path, capsys):
    tiny_data.save(tmp_path / "big.npz")
    shards = tmp_path / "shards"
    assert (
        main(
            ["shard", "--data", str(tmp_path / "big.npz"), "--out", str(shards)]
            + ["--shard-size", "30"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["shards"] == 3
    args = ["train", "--data", str(shards), "--out", str(tmp_path / "m"), "--epochs", "1"]
    assert main(args + ["--p", "4", "--k", "4", *TINY_MODEL_FLAGS]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(shards)]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["signals"] == len(tiny_data)
    gold = ["--gold-data", str(tmp_path / "big.npz")]
    assert main(args + ["--p", "4", "--k", "4", *gold]) == 2
    assert "gold data and teacher correction need the data in memory" in capsys.readouterr().err
