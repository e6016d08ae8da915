"""ONNX Runtime, derived from the exported TorchScript at load time.

TorchScript stays the exported format. At start-up the service rebuilds the eager network from
the manifest's configuration and the TorchScript weights, exports it to ONNX in memory, and keeps
the ONNX Runtime session only if it agrees with TorchScript on random signals (1e-4). ONNX Runtime
runs the GRU several times faster at small batches on CPU; anything unexpected (another
architecture, an export failure, a disagreement) leaves the service on TorchScript.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import torch

from model import HierarchicalSignalNet, ModelConfig

TOLERANCE = 1e-4
OUTPUTS = ["embeddings", "positions", "confidences"]


class _BothHeads(torch.nn.Module):
    """ONNX export traces ``forward``: make it the serving method."""

    def __init__(self, net: HierarchicalSignalNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net.embed_and_keypoints(x)


def derive_session(
    scripted: torch.jit.ScriptModule, manifest: dict, threads: int
) -> ort.InferenceSession:
    """An ONNX Runtime session computing what ``scripted.embed_and_keypoints`` computes."""
    net = HierarchicalSignalNet(ModelConfig.from_dict(manifest["model_config"])).eval()
    net.load_state_dict(scripted.state_dict())  # strict: the same architecture, or no ONNX
    example = torch.randn(2, int(manifest["in_channels"]), int(manifest["trained_length"]))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own deprecation
        torch.onnx.export(
            _BothHeads(net),
            (example,),
            buffer,
            input_names=["x"],
            output_names=OUTPUTS,
            dynamic_axes={"x": {0: "batch", 2: "length"}, **{o: {0: "batch"} for o in OUTPUTS}},
            opset_version=17,
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    check_agreement(session, scripted, manifest)
    return session


def check_agreement(session: ort.InferenceSession, scripted, manifest: dict) -> None:
    generator = torch.Generator().manual_seed(0)
    channels = int(manifest["in_channels"])
    for batch, length in ((1, int(manifest["trained_length"])), (3, int(manifest["min_length"]))):
        x = torch.randn(batch, channels, length, generator=generator) * 3 + 1
        with torch.inference_mode():
            expected = [t.numpy() for t in scripted.embed_and_keypoints(x)]
        got = session.run(None, {"x": x.numpy()})
        for name, a, b in zip(OUTPUTS, got, expected, strict=True):
            if not np.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE):
                worst = float(np.abs(a - b).max())
                raise ValueError(f"ONNX {name} differ from TorchScript by up to {worst:.2e}")
