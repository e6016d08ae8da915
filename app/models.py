"""The models a process serves: the model repository (``HSN_MODEL_REPOSITORY``, one exported
model per subfolder, as ``python -m training train --out`` writes it) and the pool that loads
each model once, with its own batcher, however many collections use it.

``HSN_MODEL_DIR`` is the model of the collection ``default``, and of any collection created
without naming a model.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from app.errors import NotFound
from app.observability import Metrics
from app.runtime import DynamicBatcher, ModelRuntime
from app.services.embedding import EmbeddingService
from app.settings import Settings
from model.export_format import MANIFEST_FILE

log = logging.getLogger(__name__)


class ModelRepository:
    """Where a collection's model is: a subfolder of the repository, or HSN_MODEL_DIR (None)."""

    def __init__(self, default_dir: Path, root: Path | None) -> None:
        self.default_dir, self.root = default_dir, root

    def path(self, model: str | None, field: str = "model") -> Path:
        """The folder of ``model``; NotFound naming ``field`` when it is not one of the
        repository's models (like any other name of something not there)."""
        if model is None:
            return self.default_dir
        if self.root is None:
            raise NotFound(
                field,
                f"no model {model!r}: no model repository is configured (HSN_MODEL_REPOSITORY)",
            )
        folder = self.root / model
        plain = model not in ("", ".", "..") and "/" not in model and "\\" not in model
        if not plain or not (folder / MANIFEST_FILE).is_file():
            known = ", ".join(self.names()) or "none"
            raise NotFound(field, f"no model {model!r} in the repository (it has: {known})")
        return folder

    def names(self) -> list[str]:
        """The repository's models: its subfolders holding a manifest."""
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST_FILE).is_file())


@dataclass
class LoadedModel:
    embedding: EmbeddingService
    memory_bytes: int  # what the process's resident memory grew by while loading it
    users: int = 0  # collections served by it
    started: bool = False  # its batcher runs


def resident_bytes() -> int:
    """This process's resident set size (0 where /proc is not there)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


class ModelPool:
    """Each model folder loaded once (``acquire``) and released when no collection uses it."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self._loaded: dict[Path, LoadedModel] = {}
        self._lock = threading.Lock()  # loads are one at a time: memory is measured around one

    def acquire(self, folder: Path) -> LoadedModel:
        """The model in ``folder``, loaded if no collection uses it yet (blocking: the caller
        runs it off the event loop once serving); ModelLoadError if it cannot be served."""
        folder = folder.resolve()
        with self._lock:
            loaded = self._loaded.get(folder)
            if loaded is None:
                loaded = self._load(folder)
                self._loaded[folder] = loaded
            loaded.users += 1
            return loaded

    def _load(self, folder: Path) -> LoadedModel:
        settings = self.settings
        before = resident_bytes()
        runtime = ModelRuntime(folder, settings.max_batch, settings.threads, settings.engine)
        batcher = DynamicBatcher(
            runtime,
            enabled=settings.dynamic_batching,
            max_signals=settings.batch_max_signals,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            observe=self.metrics.observe_inference,
            workers=settings.inference_worker_count,
        )
        return LoadedModel(EmbeddingService(runtime, batcher), max(0, resident_bytes() - before))

    def release(self, loaded: LoadedModel) -> bool:
        """One collection fewer uses it; True when none does any more (the caller stops it)."""
        with self._lock:
            loaded.users -= 1
            if loaded.users > 0:
                return False
            self._loaded = {k: v for k, v in self._loaded.items() if v is not loaded}
            return True
