"""HierarchicalLoss = keypoint cross-entropy + lambda * (session triplet + element triplet
+ outlier triplet) + lambda_reconstruct * reconstruction of the segment around a keypoint
(optional) + lambda_masked * reconstruction of masked steps from their features (optional)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model import HierarchicalSignalNet, sample_to_step


@dataclass
class LossParts:
    total: torch.Tensor
    keypoint: torch.Tensor
    session: torch.Tensor
    element: torch.Tensor
    outlier: torch.Tensor
    reconstruct: torch.Tensor
    masked: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in vars(self).items()}


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, D) unit vectors -> (B, B) Euclidean distances, in [0, 2]."""
    cosine = embeddings @ embeddings.T
    return (2.0 - 2.0 * cosine).clamp_min(1e-8).sqrt()


def triplet_loss(
    distances: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float,
    mining: str,
) -> torch.Tensor:
    """Margin loss over the batch's (anchor, positive, negative) triplets.

    ``positive[a, p]`` and ``negative[a, n]`` are boolean (B, B) masks. ``mining="all"`` averages
    ``relu(d(a,p) - d(a,n) + margin)`` over every valid triplet that still violates the margin;
    ``"hard"`` keeps, per anchor, the farthest positive and the nearest negative. Either way the
    loss is exactly zero once every triplet holds its margin.
    """
    if mining == "hard":
        far_positive = distances.masked_fill(~positive, float("-inf")).amax(dim=1)
        near_negative = distances.masked_fill(~negative, float("inf")).amin(dim=1)
        valid = positive.any(dim=1) & negative.any(dim=1)
        losses = F.relu(far_positive - near_negative + margin)[valid]
    elif mining == "all":
        # (A, P, 1) - (A, 1, N): every triplet of the batch at once.
        gaps = distances.unsqueeze(2) - distances.unsqueeze(1) + margin
        valid = positive.unsqueeze(2) & negative.unsqueeze(1)
        losses = F.relu(gaps[valid])
        losses = losses[losses > 0]
    else:
        raise ValueError(f"mining must be 'all' or 'hard', got {mining!r}")
    if losses.numel() == 0:
        return distances.sum() * 0.0  # keeps the graph, so backward works on a satisfied batch
    return losses.mean()


def keypoint_cross_entropy(
    logits: torch.Tensor, positions: torch.Tensor, stride: int, sigma: float
) -> torch.Tensor:
    """Cross-entropy of the per-keypoint distribution over steps against the true position.

    logits (B, T, K); positions (B, K) in input samples, -1 where absent (masked out). With
    ``sigma > 0`` (in steps) the target is a Gaussian around the exact, fractional step, which
    teaches the decoder's soft-argmax where inside a step the keypoint lies; ``sigma = 0`` is the
    plain one-hot target at the nearest step.
    """
    steps = logits.shape[1]
    present = positions >= 0  # (B, K)
    if not present.any():
        return logits.sum() * 0.0
    target_step = sample_to_step(positions.to(logits.dtype), stride).clamp(0, steps - 1)  # (B, K)
    grid = torch.arange(steps, device=logits.device, dtype=logits.dtype).view(1, steps, 1)
    if sigma > 0:
        target = torch.exp(-0.5 * ((grid - target_step.unsqueeze(1)) / sigma) ** 2)
        target = target / target.sum(dim=1, keepdim=True)
    else:
        target = (grid == target_step.round().unsqueeze(1)).to(logits.dtype)
    log_probs = F.log_softmax(logits, dim=1)  # over steps
    per_keypoint = -(target * log_probs).sum(dim=1)  # (B, K)
    return per_keypoint[present].mean()


def segments_around(
    signals: torch.Tensor, anchors: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``width`` samples of each signal centred on its anchor.

    signals (B, C, L), anchors (B,) sample positions (-1: none) -> segments (B, C, width), each
    channel z-scored over its samples inside the signal, and a (B, 1, width) mask of those samples
    (none for a signal without an anchor). With ``width`` = L this is the signal re-centred on the
    anchor: for a beat anchored on its R peak, its own waves and how close its neighbours are.
    """
    b, c, length = signals.shape
    positions = anchors[:, None] - width // 2 + torch.arange(width, device=signals.device)
    inside = ((positions >= 0) & (positions < length) & (anchors[:, None] >= 0)).unsqueeze(1)
    index = positions.clamp(0, length - 1).unsqueeze(1).expand(b, c, width)
    segments = signals.gather(2, index)  # (B, C, width)
    weight = inside.to(signals.dtype)
    count = weight.sum(dim=-1, keepdim=True).clamp_min(1.0)
    mean = (segments * weight).sum(dim=-1, keepdim=True) / count
    std = (((segments - mean) * weight) ** 2).sum(dim=-1, keepdim=True).div(count).sqrt()
    return (segments - mean) / (std + 1e-6) * weight, inside


class SegmentDecoder(nn.Module):
    """Training-only head: the segment around a keypoint (``segments_around``), from the embedding.

    Asking the embedding to hold the shape of, say, the beat around its R peak keeps what the
    triplet terms alone would discard as within-element variation: the morphology that tells an
    ectopic beat from its record's normal ones. It is not part of the exported model.
    """

    def __init__(self, embedding_dim: int, channels: int, width: int, hidden: int = 256) -> None:
        super().__init__()
        self.channels, self.width = channels, width
        self.net = nn.Sequential(
            nn.Linear(embedding_dim, hidden), nn.ReLU(), nn.Linear(hidden, channels * width)
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(embeddings).view(-1, self.channels, self.width)  # (B, D) -> (B, C, W)


class StepDecoder(nn.Module):
    """Training-only head: each GRU step's ``stride`` samples of the normalised signal (all
    channels), from that step's output alone: with those samples hidden from the input, the
    step's features must carry the local shape its context implies (masked reconstruction). It
    is not part of the exported model."""

    def __init__(self, step_dim: int, channels: int, stride: int) -> None:
        super().__init__()
        self.channels, self.stride = channels, stride
        self.net = nn.Linear(step_dim, channels * stride)

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, C, T * stride)."""
        b, t, _ = steps.shape
        out = self.net(steps).view(b, t, self.channels, self.stride)
        return out.permute(0, 2, 1, 3).reshape(b, self.channels, t * self.stride)


class HierarchicalLoss(nn.Module):
    """Loss on one P-K batch.

    Inputs: embeddings (B, D) unit-norm, keypoint logits (B, T, K), keypoint positions (B, K) in
    samples (-1 absent), element and session labels (B,) as integer codes.

    - session triplet: anchor and positive from one session, negative from another session of the
      same element, with ``margin_session``;
    - element triplet: anchor and positive from one element (any session, so an element's sessions
      are pulled together), negative from another element, with ``margin_element``;
    - with ``outliers`` (B,) booleans (outlier exposure): an outlier is nobody's anchor or
      positive in the two triplets above; the outlier triplet takes a normal anchor, a normal
      positive of its element and an outlier of the same element as negative, with
      ``margin_outlier``: an element's abnormal signals are pushed away from its normal ones
      instead of pulled into them;
    - with a ``decoder``: mean squared error of the segment it rebuilds from each embedding
      against the signal's segment around keypoint ``reconstruct_keypoint`` (signals without
      that keypoint add nothing).
    """

    def __init__(
        self,
        stride: int,
        lambda_metric: float = 1.0,
        margin_session: float = 0.1,
        margin_element: float = 0.3,
        margin_outlier: float = 0.3,
        mining: str = "all",
        keypoint_sigma: float = 1.0,
        decoder: SegmentDecoder | None = None,
        reconstruct_keypoint: int = 0,
        lambda_reconstruct: float = 1.0,
        step_decoder: StepDecoder | None = None,
        lambda_masked: float = 1.0,
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.step_decoder, self.lambda_masked = step_decoder, lambda_masked
        self.reconstruct_keypoint = reconstruct_keypoint
        self.lambda_reconstruct = lambda_reconstruct
        self.stride = stride
        self.lambda_metric = lambda_metric
        self.margin_session = margin_session
        self.margin_element = margin_element
        self.margin_outlier = margin_outlier
        self.mining = mining
        self.keypoint_sigma = keypoint_sigma

    def forward(
        self,
        embeddings: torch.Tensor,
        logits: torch.Tensor,
        positions: torch.Tensor,
        elements: torch.Tensor,
        sessions: torch.Tensor,
        signals: torch.Tensor | None = None,
        outliers: torch.Tensor | None = None,
        steps: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
    ) -> LossParts:
        """``signals`` (B, C, L): what the decoders rebuild (needed with one); ``outliers``
        (B,) booleans: the batch's abnormal signals (outlier exposure); ``steps`` (B, T, F)
        the GRU's outputs and ``hidden`` (B, T) the steps whose samples the input hid (needed
        with a step decoder)."""
        distances = pairwise_distances(embeddings)
        not_self = ~torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
        same_element = elements.unsqueeze(0) == elements.unsqueeze(1)
        same_session = sessions.unsqueeze(0) == sessions.unsqueeze(1)
        normal = ~outliers if outliers is not None else torch.ones_like(not_self[0])
        both_normal = normal.unsqueeze(0) & normal.unsqueeze(1)
        session = triplet_loss(
            distances,
            positive=same_session & not_self & both_normal,
            negative=same_element & ~same_session & both_normal,
            margin=self.margin_session,
            mining=self.mining,
        )
        element = triplet_loss(
            distances,
            positive=same_element & not_self & both_normal,
            negative=~same_element,
            margin=self.margin_element,
            mining=self.mining,
        )
        outlier = distances.new_zeros(())
        if outliers is not None and outliers.any():
            outlier = triplet_loss(
                distances,
                positive=same_element & not_self & both_normal,
                negative=same_element & normal.unsqueeze(1) & outliers.unsqueeze(0),
                margin=self.margin_outlier,
                mining=self.mining,
            )
        keypoint = keypoint_cross_entropy(logits, positions, self.stride, self.keypoint_sigma)
        total = keypoint + self.lambda_metric * (session + element + outlier)
        reconstruct = total.new_zeros(())
        if self.decoder is not None:
            if signals is None:
                raise ValueError("a loss with a decoder needs the signals")
            anchors = positions[:, self.reconstruct_keypoint]
            if (anchors >= 0).any():
                target, inside = segments_around(signals, anchors, self.decoder.width)
                error = (self.decoder(embeddings) - target) ** 2 * inside
                reconstruct = error.sum() / (inside.sum().clamp_min(1) * signals.shape[1])
            total = total + self.lambda_reconstruct * reconstruct
        masked = total.new_zeros(())
        if self.step_decoder is not None:
            if signals is None or steps is None or hidden is None:
                raise ValueError("a loss with a step decoder needs the signals, steps and mask")
            masked = masked_reconstruction(self.step_decoder, steps, hidden, signals)
            total = total + self.lambda_masked * masked
        return LossParts(
            total=total,
            keypoint=keypoint,
            session=session,
            element=element,
            outlier=outlier,
            reconstruct=reconstruct,
            masked=masked,
        )


def masked_reconstruction(
    decoder: StepDecoder, steps: torch.Tensor, hidden: torch.Tensor, signals: torch.Tensor
) -> torch.Tensor:
    """Mean squared error of the hidden steps' samples rebuilt from their step features,
    against the signals normalised as the network normalises its input (0 when none is
    hidden)."""
    target = HierarchicalSignalNet.normalise(signals)[0]  # (B, C, L)
    rebuilt = decoder(steps)  # (B, C, T * stride)
    length = min(rebuilt.shape[2], target.shape[2])
    inside = hidden.repeat_interleave(decoder.stride, dim=1)[:, None, :length]  # (B, 1, L')
    error = (rebuilt[:, :, :length] - target[:, :, :length]) ** 2 * inside
    return error.sum() / (inside.sum().clamp_min(1) * signals.shape[1])
