"""Small helpers shared by the service tests."""

import io

import numpy as np

NPY = {"content-type": "application/x-npy"}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_body(data, **arrays) -> bytes:
    """``data`` as a bulk-load body (the training NPZ format), with per-signal ``arrays``."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        signals=data.signals,
        element_ids=data.element_ids,
        session_ids=data.session_ids,
        **arrays,
    )
    return buffer.getvalue()


def references(data, index, prefix="ref"):
    return [
        {
            "id": f"{prefix}-{i}",
            "element_id": str(data.element_ids[i]),
            "session_id": str(data.session_ids[i]),
            "signal": data.signals[i, 0].tolist(),
            "metadata": {"n": int(i)},
        }
        for i in index
    ]
