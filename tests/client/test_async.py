"""``AsyncClient`` against the same real server: the sync client's answers, many calls in
flight at once on one event loop, the same errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hsn_client import AsyncClient, HsnError

from tests.client.conftest import KEY


def test_the_async_client_answers_as_the_sync_one(service, client, stored_data, tmp_path):
    x = stored_data.signals[:10, 0]
    element = str(stored_data.element_ids[0])
    session = stored_data.signals[stored_data.element_ids == element][-3:, 0]
    path = tmp_path / "async.npz"
    np.savez(
        path,
        signals=x[:6],
        element_ids=np.array(["async-e"] * 6),
        session_ids=np.array(["async-e/s"] * 6),
        ids=np.array([f"async-{i}" for i in range(6)]),
    )

    async def calls():
        async with AsyncClient(service.url, api_key=KEY) as clients:
            # Ten embeddings over three requests each, twice at once, beside the others.
            answers = await asyncio.gather(
                clients.embed(x),
                clients.embed(x[::-1]),
                clients.keypoints(x),
                clients.search(x, k=2),
                clients.align(x[:3], average=True),
                clients.verify(session, element),
                clients.drift(session, element),
                clients.element_drift(element),
                clients.elements(limit=3),
                clients.get_reference("ref-7"),
                clients.model(),
            )
            loaded = await clients.load_npz(path, progress=False)
            added = await clients.add_references(x[6:8], ["async-e"] * 2, ["async-e/s"] * 2)
            listed = await clients.list_references(element_id="async-e")
            for ref_id in loaded + added:
                await clients.delete_reference(ref_id)
            with pytest.raises(HsnError) as missing:
                await clients.get_reference(loaded[0])
            return answers, loaded, listed, missing.value

    answers, loaded, listed, missing = asyncio.run(calls())
    embedded, reversed_, keypoints, results, alignment, verified, drift, report, page = answers[:9]
    reference, manifest = answers[9:]
    expected = client.embed(x)
    np.testing.assert_allclose(embedded, expected, atol=1e-6)
    np.testing.assert_allclose(reversed_, expected[::-1], atol=1e-6)
    np.testing.assert_allclose(keypoints.positions, client.keypoints(x).positions, atol=1e-3)
    assert [r.neighbors[0].id for r in results] == [f"ref-{i}" for i in range(10)]
    np.testing.assert_allclose(alignment.mean, client.align(x[:3], average=True).mean, atol=1e-6)
    assert verified.score == pytest.approx(client.verify(session, element).score, abs=1e-6)
    assert drift.distance == pytest.approx(client.drift(session, element).distance)
    assert report.sessions == client.element_drift(element).sessions
    assert page == client.elements(limit=3)
    np.testing.assert_array_equal(reference.signal, stored_data.signals[7, 0])
    assert manifest == client.model()
    assert loaded == [f"async-{i}" for i in range(6)] and listed.total == 8
    assert missing.status == 404


def test_the_async_client_speaks_to_a_collection(service, pump_data):
    async def run():
        async with AsyncClient(service.url, api_key=KEY) as admin:
            await admin.create_collection("pump-async", "pump")
            async with AsyncClient(service.url, api_key=KEY, collection="pump-async") as pump:
                embedded = await pump.embed(pump_data.signals[:3])
                names = [c.name for c in await admin.collections()]
            await admin.delete_collection("pump-async")
            return embedded, names

    embedded, names = asyncio.run(run())
    assert embedded.shape == (3, 24) and "pump-async" in names
