"""HierarchicalLoss on hand-computed cases."""

import math

import pytest
import torch

from model import HierarchicalSignalNet, ModelConfig
from training.loss import (
    HierarchicalLoss,
    SegmentDecoder,
    StepDecoder,
    keypoint_cross_entropy,
    masked_reconstruction,
    pairwise_distances,
    segments_around,
    triplet_loss,
)

SQRT2 = math.sqrt(2)


def unit(*xy):
    return torch.tensor(xy, dtype=torch.float32)


def masks(elements, sessions):
    e, s = torch.tensor(elements), torch.tensor(sessions)
    not_self = ~torch.eye(len(e), dtype=torch.bool)
    same_e, same_s = e[:, None] == e[None], s[:, None] == s[None]
    return same_e, same_s, not_self


@pytest.mark.parametrize("mining", ["all", "hard"])
def test_zero_once_both_margins_hold(mining):
    # a, p: element 0 session 0; s: element 0 session 1; n: element 1.
    # d(a,p) = 0, d(a,s) = 0.63, d(s,n) = 1.90, d(a,n) = 2: every triplet holds its margin.
    emb = unit([1, 0], [1, 0], [0.8, 0.6], [-1, 0])
    loss = HierarchicalLoss(stride=8, margin_session=0.1, margin_element=0.3, mining=mining)
    parts = loss(
        emb,
        torch.zeros(4, 5, 1),
        torch.full((4, 1), -1),
        torch.tensor([0, 0, 0, 1]),
        torch.tensor([0, 0, 1, 2]),
    )
    assert parts.element.item() == 0.0 and parts.session.item() == 0.0
    assert parts.total.item() == 0.0


@pytest.mark.parametrize("mining", ["all", "hard"])
def test_a_session_negative_closer_than_the_positive_costs_the_gap_plus_margin(mining):
    # a=(1,0) and p=(0,1) share a session; s=(1,0) is another session of the same element.
    emb = unit([1, 0], [0, 1], [1, 0], [-1, 0])
    same_e, same_s, not_self = masks([0, 0, 0, 1], [0, 0, 1, 2])
    value = triplet_loss(
        pairwise_distances(emb), same_s & not_self, same_e & ~same_s, margin=0.1, mining=mining
    )
    # anchor a: d(a,p) - d(a,s) + .1 = sqrt2 + .1; anchor p: sqrt2 - sqrt2 + .1.
    assert value.item() == pytest.approx((SQRT2 + 0.1 + 0.1) / 2, abs=1e-3)


def test_element_triplet_value_by_hand():
    # a=(1,0), p=(0,1) one session of element 0; n=(1,0) element 1.
    emb = unit([1, 0], [0, 1], [1, 0])
    same_e, same_s, not_self = masks([0, 0, 1], [0, 0, 1])
    d = pairwise_distances(emb)
    value = triplet_loss(d, same_e & not_self, ~same_e, margin=0.3, mining="all")
    # anchor a: sqrt2 - 0 + .3; anchor p: sqrt2 - sqrt2 + .3; anchor n has no positive.
    assert value.item() == pytest.approx(((SQRT2 + 0.3) + 0.3) / 2, abs=1e-3)
    session = triplet_loss(d, same_s & not_self, same_e & ~same_s, margin=0.1, mining="all")
    assert session.item() == 0.0  # no element has two sessions: no session triplets


def test_hard_mining_takes_the_farthest_positive_and_nearest_negative():
    emb = unit([1, 0], [0.6, 0.8], [0, 1], [0.8, 0.6], [-1, 0])
    same_e, _, not_self = masks([0, 0, 0, 1, 1], [0, 0, 0, 1, 1])
    d = pairwise_distances(emb)
    value = triplet_loss(d, same_e & not_self, ~same_e, margin=0.2, mining="hard")
    expected = []
    for a in range(5):
        pos = [d[a, j] for j in range(5) if j != a and same_e[a, j]]
        neg = [d[a, j] for j in range(5) if not same_e[a, j]]
        expected.append(max(0.0, max(pos).item() - min(neg).item() + 0.2))
    assert value.item() == pytest.approx(sum(expected) / 5, abs=1e-5)


def test_keypoint_cross_entropy_one_hot_and_masking():
    logits = torch.randn(2, 6, 2)
    positions = torch.tensor([[43, -1], [-1, -1]])  # sample 43 -> step 5 at stride 8 (centre 43.5)
    value = keypoint_cross_entropy(logits, positions, stride=8, sigma=0.0)
    expected = -torch.log_softmax(logits[0, :, 0], dim=0)[5]
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    none = keypoint_cross_entropy(logits, torch.full((2, 2), -1), stride=8, sigma=0.0)
    assert none.item() == 0.0


def test_gaussian_target_is_best_matched_by_a_gaussian():
    positions = torch.tensor([[20]])  # step (20.5 / 8) - 0.5 = 2.06: between steps 2 and 3
    grid = torch.arange(8.0)
    step = (20 + 0.5) / 8 - 0.5
    matched = (-0.5 * (grid - step) ** 2).view(1, 8, 1)  # log of the target, up to a constant
    sharp = torch.full((1, 8, 1), -10.0)
    sharp[0, 2, 0] = 10.0
    loss = lambda lg: keypoint_cross_entropy(lg, positions, stride=8, sigma=1.0).item()  # noqa: E731
    assert loss(matched) < loss(sharp)


def test_gradients_reach_both_heads_and_the_trunk():
    torch.manual_seed(0)
    net = HierarchicalSignalNet(
        ModelConfig(conv_channels=(4, 8), gru_hidden=8, embedding_dim=4, num_keypoints=2)
    )
    x = torch.randn(8, 1, 64)
    embeddings, logits = net(x)
    elements = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    sessions = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    positions = torch.randint(0, 64, (8, 2))
    HierarchicalLoss(stride=net.stride, margin_session=1.0, margin_element=2.0)(
        embeddings, logits, positions, elements, sessions
    ).total.backward()
    for name in (
        "embedding_head.weight",
        "keypoint_head.weight",
        "trunk.0.conv.weight",
        "gru.weight_ih_l0",
    ):
        grad = dict(net.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_segments_are_centred_on_the_anchor_z_scored_and_masked_outside_the_signal():
    signals = torch.arange(20, dtype=torch.float32).repeat(3, 2, 1)  # (3, 2, 20): 0..19
    segments, inside = segments_around(signals, torch.tensor([10, 1, -1]), width=6)
    # Anchor 10: samples 7..12, all inside; z-scored: mean 9.5, std sqrt(35/12).
    expected = (torch.arange(7, 13.0) - 9.5) / math.sqrt(35 / 12)
    torch.testing.assert_close(segments[0, 0], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(segments[0, 1], expected, atol=1e-4, rtol=0)
    # Anchor 1: samples -2..3, the first two outside the signal: masked and zero.
    assert inside[1, 0].tolist() == [False, False, True, True, True, True]
    assert segments[1, :, :2].abs().max() == 0
    torch.testing.assert_close(segments[1, 0, 2:].mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    # No anchor: nothing to rebuild.
    assert not inside[2].any() and segments[2].abs().max() == 0


def test_the_reconstruction_term_is_the_decoders_squared_error_on_signals_with_the_keypoint():
    torch.manual_seed(0)
    decoder = SegmentDecoder(embedding_dim=2, channels=1, width=8)
    torch.nn.init.zeros_(decoder.net[-1].weight)
    torch.nn.init.zeros_(decoder.net[-1].bias)  # predicts zeros: the error is the target's power
    loss = HierarchicalLoss(stride=4, decoder=decoder, reconstruct_keypoint=1, lambda_reconstruct=2)
    signals = torch.randn(4, 1, 32)
    # Column 1 is the anchor (column 0 is absent throughout); one signal lacks it.
    positions = torch.tensor([[-1, 16], [-1, 3], [-1, -1], [-1, 20]])
    args = (
        unit([1, 0], [0, 1], [1, 0], [0, 1]),
        torch.zeros(4, 8, 2),
        positions,
        torch.tensor([0, 0, 1, 1]),
        torch.tensor([0, 1, 2, 3]),
    )
    parts = loss(*args, signals)
    assert parts.reconstruct.item() == pytest.approx(1.0, abs=1e-4)  # z-scored: unit power
    without = HierarchicalLoss(stride=4)(*args)
    assert without.reconstruct.item() == 0.0
    assert parts.total.item() == pytest.approx(without.total.item() + 2.0, abs=1e-4)
    parts.total.backward()
    assert decoder.net[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs the signals"):
        loss(*args)
    # Anchors present but every segment sample outside the signal: nothing to rebuild, not NaN.
    far = (args[0], args[1], torch.tensor([[-1, 100]] * 4), *args[3:])
    assert loss(*far, signals).reconstruct.item() == 0.0


def test_an_outlier_is_no_positive_and_a_negative_for_its_own_elements_normal_signals():
    # a, p normal of element 0; o an outlier of element 0 close to a; n element 1 close to o.
    emb = unit([1, 0], [0.6, 0.8], [0.8, -0.6], [0, -1])
    elements, sessions = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 1])
    outliers = torch.tensor([False, False, True, False])
    loss = HierarchicalLoss(stride=8, margin_element=0.3, margin_outlier=0.3, mining="all")
    args = (emb, torch.zeros(4, 5, 1), torch.full((4, 1), -1), elements, sessions)
    without, exposed = loss(*args), loss(*args, outliers=outliers)
    d = pairwise_distances(emb)
    # Without exposure o anchors (o, p, n) and (o, a, n), both short of the margin (the mean
    # of the violated ones); with it, o is no anchor or positive, and a's and p's element
    # triplets hold their margin.
    violated = (d[2, 1] - d[2, 3] + 0.3) + (d[2, 0] - d[2, 3] + 0.3)
    assert without.element.item() == pytest.approx(violated.item() / 2, abs=1e-4)
    assert exposed.element.item() == 0.0 and without.outlier.item() == 0.0
    # (a, p, o) costs d(a,p) - d(a,o) + .3; (p, a, o) holds (o is far from p)
    expected = (d[0, 1] - d[0, 2] + 0.3).item()
    assert exposed.outlier.item() == pytest.approx(expected, abs=1e-4)
    assert exposed.total.item() == pytest.approx(expected, abs=1e-4)  # lambda_metric 1


def test_the_masked_term_is_the_step_decoders_squared_error_on_hidden_steps_only():
    torch.manual_seed(0)
    signals = torch.randn(3, 2, 34)  # 4 steps of 8 samples; the last 2 samples are no step's
    steps = torch.randn(3, 4, 5)
    hidden = torch.tensor([[True, False, False, False], [False] * 4, [False, False, True, True]])
    decoder = StepDecoder(5, channels=2, stride=8)
    rebuilt = decoder(steps)
    assert rebuilt.shape == (3, 2, 32)
    # step t of the decoder's output is that step's samples, from that step's features alone
    moved = steps.clone()
    moved[:, 1] += 1
    assert torch.equal(decoder(moved)[:, :, :8], rebuilt[:, :, :8])
    target = HierarchicalSignalNet.normalise(signals)[0]
    by_hand = torch.cat(
        [
            ((rebuilt[0, :, 0:8] - target[0, :, 0:8]) ** 2).flatten(),
            ((rebuilt[2, :, 16:32] - target[2, :, 16:32]) ** 2).flatten(),
        ]
    ).mean()
    torch.testing.assert_close(masked_reconstruction(decoder, steps, hidden, signals), by_hand)
    nothing = masked_reconstruction(decoder, steps, torch.zeros_like(hidden), signals)
    assert nothing == 0
