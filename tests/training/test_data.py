"""Training-side views of the data: dataset items, the element-wise split and its folds."""

import pytest

from training.data import SignalDataset, fold_elements, split_by_element


def test_dataset_items_and_codes(tiny_data):
    dataset = SignalDataset(tiny_data)
    signal, keypoints, index = dataset[3]
    assert signal.shape == (1, 64) and keypoints.shape == (4,) and index == 3
    assert len(dataset.element_names) == 8
    assert dataset.element_codes.max() == 7


def test_split_by_element_keeps_elements_whole(tiny_data):
    train, val = split_by_element(tiny_data, 0.25, seed=1)
    assert len(train) + len(val) == len(tiny_data)
    train_elements = set(tiny_data.element_ids[train])
    val_elements = set(tiny_data.element_ids[val])
    assert not train_elements & val_elements and len(val_elements) == 2


def test_folds_hold_out_every_element_exactly_once(tiny_data):
    folds = [fold_elements(tiny_data.element_ids, 3, f, seed=2) for f in range(3)]
    assert sorted(len(f) for f in folds) == [2, 3, 3]
    assert set().union(*folds) == set(tiny_data.element_ids)
    assert sum(len(f) for f in folds) == len(set(tiny_data.element_ids))  # disjoint
    assert folds[0] == fold_elements(tiny_data.element_ids, 3, 0, seed=2)  # fixed by the seed
    with pytest.raises(ValueError, match="fold must be"):
        fold_elements(tiny_data.element_ids, 3, 3, seed=2)
    with pytest.raises(ValueError, match="at least as many elements"):
        fold_elements(tiny_data.element_ids, 9, 0, seed=2)
