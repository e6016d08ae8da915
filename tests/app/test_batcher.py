"""Dynamic batching on the real model: concurrent requests share model calls, results stay each
request's own, and a lone client does not wait for company that never comes."""

import asyncio
import time

import numpy as np

from app.runtime import DynamicBatcher, ModelRuntime


def run_batcher(model_dir, coroutine, max_wait_s=0.05):
    runtime = ModelRuntime(model_dir, max_batch=256, threads=1, engine="torchscript")
    calls: list[int] = []

    async def main():
        batcher = DynamicBatcher(
            runtime,
            enabled=True,
            max_signals=64,
            max_wait_s=max_wait_s,
            observe=lambda n, s: calls.append(n),
        )
        batcher.start()
        try:
            return await coroutine(batcher, runtime)
        finally:
            await batcher.stop()

    return asyncio.run(main()), calls


def test_concurrent_requests_share_model_calls_and_keep_their_results(model_dir, service_data):
    x = service_data.signals[:12]

    async def twelve_at_once(batcher, runtime):
        results = await asyncio.gather(*(batcher.infer([x[i : i + 1]]) for i in range(12)))
        return results, runtime.run(x)

    (results, alone), calls = run_batcher(model_dir, twelve_at_once)
    assert sum(calls) == 12 and len(calls) < 12  # merged
    for i, result in enumerate(results):
        np.testing.assert_allclose(result.embeddings[0], alone.embeddings[i], atol=1e-5)


def test_a_lone_client_does_not_wait(model_dir, service_data):
    x = service_data.signals[:1]

    async def one_after_another(batcher, _):
        latencies = []
        for _ in range(5):
            started = time.perf_counter()
            await batcher.infer([x])
            latencies.append(time.perf_counter() - started)
        return latencies

    latencies, calls = run_batcher(model_dir, one_after_another, max_wait_s=0.5)
    assert calls == [1] * 5
    assert max(latencies) < 0.25  # far below the 0.5 s it would wait for company


def test_with_two_workers_two_model_calls_run_at_once(model_dir, service_data):
    runtime = ModelRuntime(model_dir, max_batch=256, threads=1, engine="onnx")
    run, spans = runtime.run, []

    def slow_run(x):  # long enough that overlapping calls cannot be a coincidence
        started = time.perf_counter()
        time.sleep(0.3)
        result = run(x)
        spans.append((started, time.perf_counter()))
        return result

    runtime.run = slow_run
    x = service_data.signals[:2]

    async def main(workers):
        batcher = DynamicBatcher(runtime, True, max_signals=1, max_wait_s=0.0, workers=workers)
        batcher.start()
        try:
            return await asyncio.gather(batcher.infer([x[:1]]), batcher.infer([x[1:]]))
        finally:
            await batcher.stop()

    first, second = asyncio.run(main(workers=2))
    (a_start, a_end), (b_start, b_end) = spans
    assert max(a_start, b_start) < min(a_end, b_end)  # overlapped
    np.testing.assert_allclose(second.embeddings, run(x[1:]).embeddings, atol=1e-5)
    spans.clear()
    asyncio.run(main(workers=1))
    (a_start, a_end), (b_start, b_end) = sorted(spans)
    assert b_start >= a_end  # one at a time


def test_a_stopped_model_answers_what_it_took_and_refuses_what_comes_after(model_dir, service_data):
    """A collection deleted or switched while requests are in its model's batcher: those are
    answered before it stops; one arriving after is refused (503 through the API), never left
    waiting."""
    from app.errors import Unavailable

    x = service_data.signals[:8]

    async def stop_while_busy(batcher, runtime):
        in_flight = [asyncio.ensure_future(batcher.infer([x[i : i + 1]])) for i in range(8)]
        await asyncio.sleep(0)  # they are inside infer
        await batcher.stop()
        answered = await asyncio.gather(*in_flight)
        try:
            await asyncio.wait_for(batcher.infer([x[:1]]), 5)
        except Unavailable as exc:
            return answered, exc
        return answered, None

    (answered, refused), _ = run_batcher(model_dir, stop_while_busy, max_wait_s=0)
    assert len(answered) == 8 and all(a.embeddings.shape[0] == 1 for a in answered)
    assert refused is not None and refused.field == "collection"
