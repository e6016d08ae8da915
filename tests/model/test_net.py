"""HierarchicalSignalNet: shapes, unit embeddings, batch independence, keypoint decoding."""

import pytest
import torch

from model import HierarchicalSignalNet, ModelConfig, sample_to_step


@pytest.fixture
def net() -> HierarchicalSignalNet:
    torch.manual_seed(0)
    config = ModelConfig(
        in_channels=2, conv_channels=(8, 16), gru_hidden=16, embedding_dim=12, num_keypoints=3
    )
    return HierarchicalSignalNet(config).eval()


def test_forward_shapes_and_unit_norm(net):
    embedding, logits = net(torch.randn(5, 2, 96))
    assert embedding.shape == (5, 12)
    assert logits.shape == (5, 96 // net.stride, 3)  # stride 4: two pools of 2
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(5))


def test_keypoints_are_positions_in_samples_with_confidences(net):
    positions, confidences = net.keypoints(torch.randn(4, 2, 80))
    assert positions.shape == confidences.shape == (4, 3)
    assert ((positions >= 0) & (positions <= 79)).all()
    assert ((confidences >= 0) & (confidences <= 1)).all()


@pytest.mark.parametrize("length", [16, 50, 333])
def test_any_length_from_the_minimum_works(net, length):
    assert net.min_length == 4 * net.stride == 16
    embedding, logits = net(torch.randn(2, 2, length))
    assert embedding.shape == (2, 12) and logits.shape[1] == length // net.stride


def test_a_signals_outputs_do_not_depend_on_its_batch_mates(net):
    x = torch.randn(6, 2, 64)
    alone = net.embed_and_keypoints(x[2:3])
    together = net.embed_and_keypoints(x)
    shuffled = net.embed_and_keypoints(x[[5, 2, 0]])
    for a, b, c in zip(alone, together, shuffled, strict=True):
        torch.testing.assert_close(a[0], b[2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a[0], c[1], atol=1e-5, rtol=1e-5)


def test_raw_units_and_offsets_do_not_matter(net):
    """Normalisation lives inside the network: mV or µV, any baseline, same answer."""
    x = torch.randn(3, 2, 64)
    for a, b in zip(
        net.embed_and_keypoints(x), net.embed_and_keypoints(1000 * x + 42), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_decoding_recovers_sub_step_positions(net):
    """A symmetric peak decodes to the step's centre; a lopsided one leans to its heavier side."""
    stride = net.stride
    logits = torch.full((1, 10, 3), -20.0)
    logits[0, 5, 0] = 5.0  # a single sharp step: centre of step 5
    logits[0, 4:7, 1] = torch.tensor([2.0, 5.0, 2.0])  # symmetric: still the centre
    logits[0, 4:7, 2] = torch.tensor([-20.0, 5.0, 5.0])  # half on step 5, half on 6
    positions, confidences = net.decode_keypoints(logits)
    centre = (5 + 0.5) * stride - 0.5
    torch.testing.assert_close(positions[0], torch.tensor([centre, centre, centre + stride / 2]))
    assert (confidences > 0.99).all()


def test_fine_keypoints_have_steps_of_half_the_stride():
    """Logits at the last conv block's input: twice the GRU's steps, decoded at that stride."""
    config = ModelConfig(conv_channels=(8, 8, 16), gru_hidden=8, embedding_dim=4, num_keypoints=2)
    fine = HierarchicalSignalNet(ModelConfig(**{**config.to_dict(), "fine_keypoints": True}))
    assert fine.config.stride == 8 and fine.config.keypoint_stride == 4
    _, logits = fine.eval()(torch.randn(2, 1, 101))  # 12 GRU steps, 25 finer ones (one trimmed)
    assert logits.shape == (2, 24, 2)
    one_hot = torch.full((1, 24, 2), -20.0)
    one_hot[0, 5] = 5.0
    positions, _ = fine.decode_keypoints(one_hot)
    torch.testing.assert_close(positions[0], torch.full((2,), 5.5 * 4 - 0.5))
    with pytest.raises(ValueError, match="fine_keypoints needs at least two conv blocks"):
        ModelConfig(conv_channels=(8,), fine_keypoints=True)


def test_confidence_is_low_when_the_network_hesitates(net):
    logits = torch.zeros(1, 20, 3)  # nearly flat: every step about equally likely
    logits[0, 10] = 1e-6
    _, confidences = net.decode_keypoints(logits)
    window = 2 * net.decode_radius + 1
    torch.testing.assert_close(confidences[0], torch.full((3,), window / 20))


def test_sample_to_step_inverts_the_decoder_mapping():
    stride = 8
    steps = torch.tensor([0.0, 3.25, 9.0])
    samples = (steps + 0.5) * stride - 0.5
    torch.testing.assert_close(sample_to_step(samples, stride), steps)


def test_config_checks():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ModelConfig(kernel_size=4)
    with pytest.raises(ValueError, match="keypoint_names"):
        ModelConfig(num_keypoints=2, keypoint_names=["a"])
    config = ModelConfig(conv_channels=[4, 8, 8, 8], pool=2)
    assert config.stride == 16 and ModelConfig.from_dict(config.to_dict()) == config


def test_the_morphology_part_is_the_signal_re_centred_on_its_keypoint(shaped):
    x = torch.randn(4, 2, 96)
    served, positions, _ = shaped.embed_and_keypoints(x)
    learned, _ = shaped(x)  # training sees the learned part alone
    assert shaped.config.output_dim == served.shape[1] == 12 + 2 * 32 // 2
    torch.testing.assert_close(served.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(served[:, :12], (1 - 0.3) ** 0.5 * learned)
    z, _ = shaped.normalise(x)
    for i in range(4):
        anchor = int(positions[i, 1].round())
        crop = torch.zeros(2, 32)
        for j, t in enumerate(range(anchor - 16, anchor + 16)):
            if 0 <= t < 96:  # zeros beyond the signal's ends
                crop[:, j] = z[i, :, t]
        expected = torch.nn.functional.normalize(crop.view(2, 16, 2).mean(-1).flatten(), dim=0)
        torch.testing.assert_close(served[i, 12:], 0.3**0.5 * expected)


def test_the_morphology_weight_is_its_share_of_cosine_similarity(shaped):
    x = torch.randn(2, 2, 96)
    served = shaped.embed(x)
    learned, _ = shaped(x)
    shape = served[:, 12:] / 0.3**0.5
    expected = 0.7 * (learned[0] @ learned[1]) + 0.3 * (shape[0] @ shape[1])
    torch.testing.assert_close(served[0] @ served[1], expected)


def test_anchors_beyond_the_signal_give_zeros_not_errors(shaped):
    x = torch.randn(3, 2, 64)
    for offset in (-500.0, 500.0):  # decoded far past either end
        shaped.keypoint_offsets[1] = offset
        served = shaped.embed(x)
        assert torch.isfinite(served).all() and (served[:, 12:] == 0).all()
        torch.testing.assert_close(served.norm(dim=1), torch.ones(3))
        torch.testing.assert_close(torch.jit.script(shaped).embed(x), served)


def test_morphology_config_checks():
    names = {"num_keypoints": 2, "keypoint_names": ["P", "R"]}
    with pytest.raises(ValueError, match="morphology_keypoint 'Q' is not one of"):
        ModelConfig(morphology_keypoint="Q", **names)
    with pytest.raises(ValueError, match="morphology_width .* multiple of morphology_pool"):
        ModelConfig(morphology_keypoint="R", morphology_width=33, morphology_pool=2, **names)
    with pytest.raises(ValueError, match="morphology_weight must be in"):
        ModelConfig(morphology_keypoint="R", morphology_weight=1.0, **names)
    assert ModelConfig(**names).output_dim == 128
