"""HierarchicalSignalNet: one network, two heads.

A signal (B, C, L) of raw values goes through per-signal normalisation, a convolutional trunk that
downsamples by ``stride`` = pool ** len(conv_channels), and a bidirectional GRU over the
T = L / stride steps. The embedding head reads the GRU's final hidden states; the keypoint head
reads every step.

    x (B, C, L) -> normalise -> conv blocks (B, H, T) -> BiGRU (B, T, 2G)
        -> final hidden states (B, 2G) -> Linear -> L2 normalise -> embedding (B, D)
        -> every step (B, T, 2G)       -> Linear -> keypoint logits (B, T, K)

With ``fine_keypoints`` the keypoint head reads finer steps instead: the last conv block's input
(B, H', T * pool) beside the GRU's steps repeated ``pool`` times, so keypoint logits are
(B, T * pool, K) and positions resolve to ``stride / pool`` samples (see :class:`FineKeypointHead`).

Keypoint logits are a distribution over steps per keypoint (softmax over T). Decoding turns them
into a position in input samples with sub-step precision: a soft-argmax over a small window around
the most likely step. Its confidence is the probability mass inside that window.

Optionally the served embedding also carries a part that is not learned (``morphology_keypoint``):
the normalised signal re-centred on one decoded keypoint, so that similarity still sees shapes the
training taught the learned part to ignore (see :meth:`HierarchicalSignalNet.morphology`).
Training's ``forward`` returns the learned embedding alone; ``embed`` and ``embed_and_keypoints``
return both parts, (B, D + C * W / pool).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

FROM_DATA = {"not_an_option": "read from the training data"}


def _help(text: str) -> dict[str, str]:
    """A field's metadata: what it means, as training's command line shows it (``training``
    turns each field with a help text into a flag; ``model`` does not import it)."""
    return {"help": text}


@dataclass
class ModelConfig:
    in_channels: int = field(default=1, metadata=FROM_DATA)
    conv_channels: tuple[int, ...] = field(
        default=(32, 64, 128),
        metadata=_help("output channels of each conv block, each halving the steps by --pool"),
    )
    kernel_size: int = field(default=7, metadata=_help("the conv blocks' kernel size (odd)"))
    pool: int = field(default=2, metadata=_help("max-pooling factor of each conv block"))
    gru_hidden: int = field(default=128, metadata=_help("hidden units of each GRU direction"))
    gru_layers: int = field(default=1, metadata=_help("stacked GRU layers"))
    embedding_dim: int = field(default=128, metadata=_help("dimensions of the learned embedding"))
    num_keypoints: int = field(default=4, metadata=FROM_DATA)
    dropout: float = field(default=0.0, metadata=_help("dropout between the GRU's layers"))
    # Also feed each channel's log standard deviation (its amplitude in the client's units) to
    # the network: z-scoring alone discards amplitude, which can tell recordings apart.
    scale_channels: bool = field(
        default=False,
        metadata=_help("also give the network each channel's log amplitude (lost to z-scoring)"),
    )
    decode_radius: int = field(
        default=2,
        metadata=_help("keypoint decoding: soft-argmax over the peak step +- this many steps"),
    )
    # Signals shorter than min_steps GRU steps carry too little context; longer than max_length
    # would exceed what the network was sized and tested for.
    min_steps: int = field(
        default=4, metadata=_help("GRU steps a signal needs at least (shorter ones are refused)")
    )
    max_length: int = field(
        default=8192, metadata=_help("samples a served signal may have at most")
    )
    keypoint_names: list[str] = field(default_factory=list, metadata=FROM_DATA)
    # Keypoint logits at the last conv block's input (stride / pool samples per step) rather
    # than at the GRU's steps: halving the GRU's step from 8 to 4 samples gained 3-9 points
    # within 20 ms on the QT Database (BENCHMARKS.md), at twice the cost; this halves the
    # keypoints' step again without running the GRU over twice the steps.
    fine_keypoints: bool = field(
        default=False,
        metadata=_help(
            "keypoint logits at the last conv block's input (the GRU's step / pool) beside the "
            "GRU's context"
        ),
    )
    # The served embedding's part that is not learned (None = none): the signal re-centred on
    # this keypoint, morphology_width samples, averaged over morphology_pool, holding
    # morphology_weight of the cosine similarity. Triplet training makes the learned part ignore
    # what varies within an element, which anomaly scores need (measured on the QT Database in
    # BENCHMARKS.md, "Real ECG, cross-validated, round 2").
    morphology_keypoint: str | None = field(
        default=None,
        metadata=_help(
            "a keypoint name (e.g. R_peak): served embeddings also hold the signal re-centred "
            "on it, a part not trained to ignore within-element variation (for anomaly scores)"
        ),
    )
    morphology_width: int = field(default=256, metadata=_help("samples of that part"))
    morphology_pool: int = field(
        default=2, metadata=_help("samples of that part averaged into one")
    )
    morphology_weight: float = field(
        default=0.5, metadata=_help("that part's share of cosine similarity, in (0, 1)")
    )

    def __post_init__(self) -> None:
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (got {self.kernel_size})")
        if self.keypoint_names and len(self.keypoint_names) != self.num_keypoints:
            raise ValueError(
                f"keypoint_names has {len(self.keypoint_names)} names for "
                f"{self.num_keypoints} keypoints"
            )
        if self.fine_keypoints and len(self.conv_channels) < 2:
            raise ValueError("fine_keypoints needs at least two conv blocks (conv_channels)")
        if self.morphology_keypoint is not None:
            if self.morphology_keypoint not in self.keypoint_names:
                raise ValueError(
                    f"morphology_keypoint {self.morphology_keypoint!r} is not one of the "
                    f"keypoints {self.keypoint_names}"
                )
            if self.morphology_width < 1 or self.morphology_width % self.morphology_pool:
                raise ValueError(
                    f"morphology_width ({self.morphology_width}) must be a positive multiple "
                    f"of morphology_pool ({self.morphology_pool})"
                )
            if not 0 < self.morphology_weight < 1:
                raise ValueError(
                    f"morphology_weight must be in (0, 1), got {self.morphology_weight}"
                )

    @property
    def stride(self) -> int:
        return self.pool ** len(self.conv_channels)

    @property
    def keypoint_stride(self) -> int:
        """Input samples per step of the keypoint logits."""
        return self.stride // self.pool if self.fine_keypoints else self.stride

    @property
    def min_length(self) -> int:
        return self.min_steps * self.stride

    @property
    def output_dim(self) -> int:
        """Dimensions of a served embedding: the learned part and the morphology part."""
        if self.morphology_keypoint is None:
            return self.embedding_dim
        return self.embedding_dim + self.in_channels * self.morphology_width // self.morphology_pool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["conv_channels"] = list(self.conv_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**d)


class ConvBlock(nn.Module):
    """Conv1d -> BatchNorm1d -> ReLU -> MaxPool1d: (B, C_in, L) -> (B, C_out, L / pool)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, pool: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm1d(c_out)
        self.pool = nn.MaxPool1d(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.bn(self.conv(x))))


class FineKeypointHead(nn.Module):
    """Keypoint logits at the finer steps of the last conv block's input: the GRU's steps
    (context: which bump is the P wave) repeated ``pool`` times beside the conv features (where
    its edges are). (B, T, 2G) steps, (B, H', T' >= T * pool) features -> (B, T * pool, K)."""

    def __init__(
        self, gru_dim: int, fine_channels: int, num_keypoints: int, pool: int, width: int = 32
    ) -> None:
        super().__init__()
        self.pool = pool
        self.context = nn.Conv1d(gru_dim, width, 1)
        self.mix = nn.Conv1d(width + fine_channels, width, 5, padding=2)
        self.out = nn.Conv1d(width, num_keypoints, 1)

    def forward(self, steps: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        context = self.context(steps.transpose(1, 2))  # (B, W, T)
        context = context.repeat_interleave(self.pool, dim=2)  # (B, W, T * pool)
        fine = fine[:, :, : context.shape[2]]  # max-pooling dropped any odd last step
        h = F.relu(self.mix(torch.cat([context, fine], dim=1)))  # (B, W, T * pool)
        return self.out(h).transpose(1, 2)  # (B, T * pool, K)


class HierarchicalSignalNet(nn.Module):
    """Embeds signals and locates their keypoints.

    ``forward`` returns ``(embedding (B, D), keypoint_logits (B, T, K))``; ``embed`` and
    ``keypoints`` are the serving entry points and survive TorchScript export.
    """

    __constants__ = ["fine_keypoints"]  # TorchScript compiles only the head's call in use

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.stride = config.stride
        self.keypoint_stride = config.keypoint_stride
        self.fine_keypoints = config.fine_keypoints
        self.decode_radius = config.decode_radius
        self.in_channels = config.in_channels
        self.min_length = config.min_length
        self.max_length = config.max_length
        self.scale_channels = config.scale_channels
        first = config.in_channels * (2 if config.scale_channels else 1)
        channels = (first, *config.conv_channels)
        self.trunk = nn.Sequential(
            *[
                ConvBlock(c_in, c_out, config.kernel_size, config.pool)
                for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
            ]
        )
        self.gru = nn.GRU(
            channels[-1],
            config.gru_hidden,
            num_layers=config.gru_layers,
            batch_first=True,
            bidirectional=True,
            dropout=config.dropout if config.gru_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.embedding_head = nn.Linear(2 * config.gru_hidden, config.embedding_dim)
        if config.fine_keypoints:
            self.keypoint_head: nn.Module = FineKeypointHead(
                2 * config.gru_hidden, channels[-2], config.num_keypoints, config.pool
            )
        else:
            self.keypoint_head = nn.Linear(2 * config.gru_hidden, config.num_keypoints)
        # Per-keypoint shift (samples) subtracted after decoding: fitted after training so that
        # positions follow a reference annotator's convention (zero unless calibrated).
        self.register_buffer("keypoint_offsets", torch.zeros(config.num_keypoints))
        names = config.keypoint_names
        anchor = config.morphology_keypoint
        self.morphology_index = names.index(anchor) if anchor is not None else -1
        self.morphology_width = config.morphology_width
        self.morphology_pool = config.morphology_pool
        self.morphology_weight = config.morphology_weight

    @staticmethod
    def normalise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-signal, per-channel z-score, so clients send raw values in any unit or offset.

        Returns the z-scored signal (B, C, L) and each channel's log standard deviation
        (B, C, 1). Dividing by the peak first keeps float32 from overflowing on huge values.
        """
        peak = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
        x = x / peak
        mean = x.mean(dim=-1, keepdim=True)
        std = x.std(dim=-1, keepdim=True, unbiased=False)
        return (x - mean) / (std + 1e-6), torch.log(std * peak + 1e-12)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training's view: the learned embedding (B, D) and keypoint logits (B, T, K)."""
        _, embedding, logits = self.encode(x)
        return embedding, logits

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, L) -> normalised signals (B, C, L), learned embedding (B, D), logits (B, T, K)."""
        z, fine, steps, final = self.recurrent(x)
        embedding, logits = self.heads(fine, steps, final)
        return z, embedding, logits

    def heads(
        self, fine: torch.Tensor, steps: torch.Tensor, final: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`recurrent` returns (less the signals) -> learned embedding (B, D) and
        keypoint logits (B, T, K)."""
        last = torch.cat([final[-2], final[-1]], dim=1)  # forward and backward directions: (B, 2G)
        embedding = F.normalize(self.embedding_head(self.dropout(last)), dim=1)  # (B, D)
        if self.fine_keypoints:
            logits = self.keypoint_head(self.dropout(steps), fine)  # (B, T * pool, K)
        else:
            logits = self.keypoint_head(self.dropout(steps))  # (B, T, K)
        return embedding, logits

    def recurrent(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, L) -> normalised signals (B, C, L), the last trunk block's input
        (B, H', T * pool), the GRU's output per step (B, T, 2G) and its final states
        (layers * 2, B, G): what the heads read, and the per-step features local evidence
        compares."""
        x, log_scale = self.normalise(x)  # (B, C, L), (B, C, 1)
        z = x
        if self.scale_channels:
            x = torch.cat([x, log_scale.expand_as(x)], dim=1)  # (B, 2C, L)
        h = x
        fine = x
        for block in self.trunk:  # (B, C, L) -> (B, H, T)
            fine = h  # the last block's input: (B, H', T * pool)
            h = block(h)
        steps, final = self.gru(h.transpose(1, 2))  # (B, T, 2G), (layers*2, B, G)
        return z, fine, steps, final

    def morphology(self, z: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, C, L) normalised signals, (B, K) decoded positions -> (B, C * W / pool) unit norm:
        each signal's W samples centred on the anchor keypoint (zeros beyond the signal's ends,
        so a neighbouring cycle's distance shows as where it starts), averaged over ``pool``."""
        b, c, _ = z.shape
        width = self.morphology_width
        padded = F.pad(z, (width, width))  # (B, C, L + 2W): any anchor in the signal fits
        anchor = positions[:, self.morphology_index].round().long()  # (B,)
        last = torch.full_like(anchor, padded.shape[2] - width)  # the last start that fits
        start = torch.minimum((anchor + width - width // 2).clamp_min(0), last)
        index = start.view(b, 1, 1) + torch.arange(width, device=z.device).view(1, 1, width)
        crop = padded.gather(2, index.expand(b, c, width))  # (B, C, W)
        crop = F.avg_pool1d(crop, self.morphology_pool)  # (B, C, W / pool)
        return F.normalize(crop.flatten(1), dim=1)

    def served(
        self, z: torch.Tensor, embedding: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """The embedding the service stores and searches: the learned one, or both parts
        weighted so that the morphology's share of a cosine similarity is its weight."""
        if self.morphology_index < 0:
            return embedding
        shape = self.morphology(z, positions)
        learned = math.sqrt(1.0 - self.morphology_weight) * embedding
        both = torch.cat([learned, math.sqrt(self.morphology_weight) * shape], dim=1)
        return F.normalize(both, dim=1)  # unit already, unless a flat signal has no shape

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) raw signals -> (B, D') unit-norm served embeddings."""
        return self.embed_and_keypoints(x)[0]

    @torch.jit.export
    def decode_keypoints(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, K) logits -> positions (B, K) in input samples, confidences (B, K) in [0, 1]."""
        probs = torch.softmax(logits, dim=1)  # distribution over steps, per keypoint
        steps = probs.shape[1]
        peak = probs.argmax(dim=1, keepdim=True)  # (B, 1, K)
        offsets = torch.arange(steps, device=logits.device).view(1, steps, 1)
        window = (offsets - peak).abs() <= self.decode_radius  # (B, T, K)
        mass = (probs * window).sum(dim=1)  # (B, K)
        centre = (probs * window * offsets).sum(dim=1) / mass.clamp_min(1e-12)  # in steps
        # Step t covers samples [t*stride, (t+1)*stride) (the keypoint head's stride): its
        # centre is at (t + 0.5)*stride - 0.5.
        positions = (centre + 0.5) * self.keypoint_stride - 0.5 - self.keypoint_offsets
        return positions, mass.clamp(0.0, 1.0)

    @torch.jit.export
    def keypoints(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, L) raw signals -> positions (B, K) in samples, confidences (B, K)."""
        return self.decode_keypoints(self.forward(x)[1])

    @torch.jit.export
    def embed_and_keypoints(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both heads from one pass: embeddings (B, D'), positions (B, K), confidences (B, K)."""
        z, embedding, logits = self.encode(x)
        positions, confidences = self.decode_keypoints(logits)
        return self.served(z, embedding, positions), positions, confidences


def sample_to_step(position: torch.Tensor, stride: int) -> torch.Tensor:
    """Inverse of the decoder's step -> sample mapping: a sample position as a fractional step."""
    return (position + 0.5) / stride - 0.5
