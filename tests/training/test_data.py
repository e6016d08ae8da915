"""Training-side views of the data: dataset items and the element-wise split."""

from training.data import SignalDataset, split_by_element


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
