"""Training-time augmentation of a batch: what differs between recordings that the model should
not tell apart. Each is off at 0 (``TrainConfig``'s ``augment_*`` options), and then returns its
input itself.

- :func:`augment`: white noise and a slow baseline drift (a random sinusoid of 0.3 to 2 cycles
  per window), in units of each signal's own standard deviation; each channel inverted with a
  probability, and the channel order shuffled with another (lead polarity and order differ
  between recordings). Keypoints do not move.
- :func:`random_stretch`: each window stretched in time by a factor of its own from
  [1 - most, 1 + most] (tempo and interval lengths differ between recordings), its keypoints
  moved with it; applied before :func:`augment`, to the clean target too.
- :func:`mask_steps`: runs of network steps hidden (set to the channel's mean), for masked
  step reconstruction (``--lambda-masked``); applied after :func:`augment`, to the input only.
"""

from __future__ import annotations

import math

import torch


def augment(
    x: torch.Tensor,
    *,
    noise: float = 0.0,
    wander: float = 0.0,
    flip: float = 0.0,
    permute: float = 0.0,
) -> torch.Tensor:
    """(B, C, L) -> the same signals with noise, baseline drift, inverted or reordered
    channels; keypoints do not move."""
    b, c, length = x.shape
    out = x  # each augmentation below only when set: all off, the batch itself
    if noise or wander:
        scale = x.std(dim=-1, keepdim=True)  # (B, C, 1)
    if noise:
        out = out + noise * scale * torch.randn_like(x)
    if wander:
        t = torch.linspace(0, 1, length, device=x.device).view(1, 1, length)
        cycles = 0.3 + 1.7 * torch.rand(b, c, 1, device=x.device)
        phase = 2 * math.pi * torch.rand(b, c, 1, device=x.device)
        amplitude = wander * scale * torch.rand(b, c, 1, device=x.device)
        out = out + amplitude * torch.sin(2 * math.pi * cycles * t + phase)
    if flip:
        flipped = torch.rand(b, c, 1, device=x.device) < flip
        out = torch.where(flipped, -out, out)
    if permute and c > 1:
        shuffled = torch.rand(b, device=x.device) < permute
        order = torch.rand(b, c, device=x.device).argsort(dim=1)  # (B, C) a random order
        permuted = out.gather(1, order.unsqueeze(-1).expand(b, c, length))
        out = torch.where(shuffled.view(b, 1, 1), permuted, out)
    return out


def random_stretch(
    signals: torch.Tensor, keypoints: torch.Tensor, most: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch stretched in time, each signal by a factor drawn from [1 - most, 1 + most]
    (see :func:`stretch`); unchanged when ``most`` is 0."""
    if not most:
        return signals, keypoints
    factors = 1 + most * (2 * torch.rand(len(signals), device=signals.device) - 1)
    return stretch(signals, keypoints, factors)


def stretch(
    signals: torch.Tensor, keypoints: torch.Tensor, factors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signals (B, C, L) each stretched in time by its factor (B,) about the window's centre
    (above 1: slower, its waves wider and further apart), read by linear interpolation with
    the edge samples extended; keypoints (B, K) move with them, absent (-1) past the window."""
    b, _, length = signals.shape
    centre = (length - 1) / 2
    t = torch.arange(length, device=signals.device, dtype=signals.dtype)
    source = centre + (t.view(1, length) - centre) / factors.view(b, 1)  # (B, L) samples read
    x = source / centre - 1  # grid_sample's coordinates: -1 the first sample, +1 the last
    grid = torch.stack([x, torch.zeros_like(x)], dim=-1).view(b, 1, length, 2)
    out = torch.nn.functional.grid_sample(
        signals.unsqueeze(2), grid, padding_mode="border", align_corners=True
    ).squeeze(2)  # (B, C, 1, L) read as an image one row high -> (B, C, L)
    moved = torch.round(centre + (keypoints - centre) * factors.view(b, 1)).to(keypoints.dtype)
    inside = (keypoints >= 0) & (moved >= 0) & (moved < length)
    return out, torch.where(inside, moved, -1)


def mask_steps(
    x: torch.Tensor, stride: int, share: float, span: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, L) -> the signals with about ``share`` of their network steps (``stride`` samples
    each) hidden in runs of ``span`` steps, each hidden sample set to its channel's mean, and
    the (B, T) hidden steps. Runs start at random steps; overlapping runs hide less."""
    b, c, length = x.shape
    t = length // stride
    starts = torch.rand(b, t, device=x.device) < share / span  # (B, T)
    hidden = torch.zeros_like(starts)
    for offset in range(span):  # each start hides itself and the span - 1 steps after it
        hidden[:, offset:] |= starts[:, : t - offset]
    samples = torch.zeros(b, length, dtype=torch.bool, device=x.device)
    samples[:, : t * stride] = hidden.repeat_interleave(stride, dim=1)
    masked = torch.where(samples[:, None, :], x.mean(dim=-1, keepdim=True), x)
    return masked, hidden
