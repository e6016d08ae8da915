"""The exported model in the service: loading it safely and feeding it batches.

``ModelRuntime`` loads ``model.pt`` only from the configured directory, after checking the
manifest's format version and the weights' SHA-256. ``DynamicBatcher`` runs model calls on
``workers`` inference threads, so the event loop never blocks on the model; requests that queue
while every worker is busy go into one call (up to ``max_signals``; ``max_wait_s`` > 0 also holds
a call back for company while requests arrive together).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app.errors import Unavailable
from app.onnx_engine import derive_session
from app.signals import SignalBatch, SignalLimits
from model.export_format import MODEL_FILE, ExportFormatError, read_manifest

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message says what is wrong in one line."""


@dataclass
class Inference:
    embeddings: np.ndarray  # (N, D)
    positions: np.ndarray  # (N, K) in samples
    confidences: np.ndarray  # (N, K)

    @staticmethod
    def concat(parts: list[Inference]) -> Inference:
        return Inference(
            *(
                np.concatenate(arrays)
                for arrays in zip(
                    *((p.embeddings, p.positions, p.confidences) for p in parts), strict=True
                )
            )
        )

    def slice(self, start: int, stop: int) -> Inference:
        return Inference(
            self.embeddings[start:stop], self.positions[start:stop], self.confidences[start:stop]
        )


class ModelRuntime:
    """One loaded model: its manifest, input limits and a synchronous ``run``."""

    def __init__(
        self, model_dir: Path, max_batch: int, threads: int = 1, engine: str = "onnx"
    ) -> None:
        try:
            manifest = read_manifest(model_dir)
        except ExportFormatError as exc:
            raise ModelLoadError(str(exc)) from exc
        model_path = model_dir / MODEL_FILE
        torch.set_num_threads(threads)
        try:
            self.module = torch.jit.load(str(model_path), map_location="cpu").eval()
        except Exception as exc:  # torch raises RuntimeError and others on a bad archive
            raise ModelLoadError(f"{model_path}: cannot load TorchScript ({exc})") from exc
        self.manifest = manifest
        self.version: str = manifest["model_version"]
        self.keypoint_names: list[str] = list(manifest["keypoint_names"])
        self.dim: int = int(manifest["embedding_dim"])
        self.limits = SignalLimits(
            in_channels=int(manifest["in_channels"]),
            min_length=int(manifest["min_length"]),
            max_length=int(manifest["max_length"]),
            max_batch=max_batch,
        )

        self.engine = "torchscript"
        self.session = None
        if engine == "onnx":
            try:
                self.session = derive_session(self.module, manifest, threads)
                self.engine = "onnx"
            except Exception as exc:  # any failure leaves the checked TorchScript path
                log.warning("serving with TorchScript: no ONNX Runtime session (%s)", exc)
        log.info("model %s served by %s", self.version, self.engine)

    def run(self, x: np.ndarray) -> Inference:
        """(B, C, L) float32 -> Inference. Call from the inference thread, not the event loop."""
        if self.session is not None:
            return Inference(*self.session.run(None, {"x": x}))
        with torch.inference_mode():
            emb, pos, conf = self.module.embed_and_keypoints(torch.from_numpy(x))
        return Inference(emb.numpy(), pos.numpy(), conf.numpy())


@dataclass
class _Pending:
    batch: SignalBatch
    future: asyncio.Future


class DynamicBatcher:
    """Runs requests' batches on one inference thread, merging concurrent ones."""

    def __init__(
        self,
        runtime: ModelRuntime,
        enabled: bool,
        max_signals: int,
        max_wait_s: float,
        observe=None,  # callback(batch_signals: int, seconds: float) for metrics
        workers: int = 1,
    ) -> None:
        self.runtime = runtime
        self.enabled = enabled
        self.max_signals = max_signals
        self.max_wait_s = max_wait_s
        self.observe = observe or (lambda n, s: None)
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.calls: set[asyncio.Task] = set()  # model calls in flight
        self.free_workers = asyncio.Semaphore(workers)
        self.last_merged = 0  # requests in the previous model call
        self.in_flight = 0  # requests inside infer
        self.idle = asyncio.Event()
        self.idle.set()
        self.stopped = False

    def start(self) -> None:
        if self.enabled:
            self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stops taking requests; those already inside ``infer`` are answered first (up to
        ``grace_s``): a collection switched or deleted while they ran still answers them."""
        self.stopped = True
        try:
            await asyncio.wait_for(self.idle.wait(), grace_s)
        except TimeoutError:
            log.warning("stopping a model with %d request(s) still in flight", self.in_flight)
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        await asyncio.gather(*self.calls, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def infer(self, batch: SignalBatch) -> Inference:
        if self.stopped:  # its collection deleted, or switched to another model: nothing done
            raise Unavailable("collection", "its model was unloaded meanwhile: retry")
        self.in_flight += 1
        self.idle.clear()
        try:
            loop = asyncio.get_running_loop()
            if not self.enabled:
                return await loop.run_in_executor(self.executor, self._run, [batch])
            pending = _Pending(batch, loop.create_future())
            self.queue.put_nowait(pending)
            return await pending.future
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # A worker first, then the requests: whatever queued while all were busy goes into
            # the next call.
            await self.free_workers.acquire()
            try:
                items = await self._gather(loop)
            except BaseException:
                self.free_workers.release()
                raise
            call = loop.create_task(self._call(loop, items))
            self.calls.add(call)
            call.add_done_callback(self._finished)

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> list[_Pending]:
        """The oldest queued request and those behind it, up to ``max_signals``."""
        items = [await self.queue.get()]
        size = sum(len(c) for c in items[0].batch)
        # Wait for company only while requests have been arriving together: a lone client
        # should not pay max_wait on every call.
        wait = self.max_wait_s if self.last_merged > 1 else 0.0
        deadline = loop.time() + wait
        while size < self.max_signals:
            try:
                nxt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            items.append(nxt)
            size += sum(len(c) for c in nxt.batch)
        self.last_merged = len(items)
        return items

    def _finished(self, call: asyncio.Task) -> None:
        self.calls.discard(call)
        self.free_workers.release()

    async def _call(self, loop: asyncio.AbstractEventLoop, items: list[_Pending]) -> None:
        try:
            results = await loop.run_in_executor(self.executor, self._run, [i.batch for i in items])
        except Exception as exc:  # a model failure fails the requests, not the loop
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        offset = 0
        for item in items:
            n = sum(len(c) for c in item.batch)
            if not item.future.done():  # the client may have gone away
                item.future.set_result(results.slice(offset, offset + n))
            offset += n

    def _run(self, batches: list[SignalBatch]) -> Inference:
        """Merge chunks of equal length across requests into one call each; keep the order."""
        started = time.perf_counter()
        chunks = [chunk for batch in batches for chunk in batch]
        by_length: dict[tuple[int, int], list[int]] = {}
        for i, chunk in enumerate(chunks):
            by_length.setdefault(chunk.shape[1:], []).append(i)
        outputs: list[Inference | None] = [None] * len(chunks)
        for members in by_length.values():
            merged = self.runtime.run(np.concatenate([chunks[i] for i in members]))
            offset = 0
            for i in members:
                outputs[i] = merged.slice(offset, offset + len(chunks[i]))
                offset += len(chunks[i])
        result = Inference.concat(outputs)  # type: ignore[arg-type]
        self.observe(len(result.embeddings), time.perf_counter() - started)
        return result
