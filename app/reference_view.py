"""What the services read of the stored references: the in-memory index (labels, searches) and
the store (vectors, signals), for one model version. The one place an element is looked up,
elements are sampled for a calibration, and an element's sessions are assembled."""

from __future__ import annotations

import numpy as np

from app.calibration import seeded_sample
from app.drift import RecordedSession
from app.errors import NotFound
from app.index import VectorIndex
from app.labels import Filters
from app.schemas import ReferenceOut
from app.store import ReferenceStore
from app.verification import SAMPLE_ELEMENTS, ElementSample

CALIBRATION_REFERENCES = 256  # of one session, at most, in a verification calibration


class ReferenceView:
    def __init__(self, store: ReferenceStore, index: VectorIndex, version: str) -> None:
        self.store, self.index, self.version = store, index, version

    # -- references and elements -------------------------------------------------------------
    def reference(self, ref_id: str, field: str = "ref_id") -> ReferenceOut:
        """The stored reference ``ref_id``; NotFound naming ``field`` when there is none."""
        ref = self.store.get(ref_id)
        if ref is None:
            raise NotFound(field, f"no reference with id {ref_id!r}")
        return ref

    def require_element(self, element_id: str, field: str = "element_id") -> None:
        """NotFound naming ``field`` when no reference of ``element_id`` is held."""
        if not self.index.has_element(element_id):
            raise _no_element(element_id, field)

    def sample_elements(self, min_sessions: int) -> list[str]:
        """Up to SAMPLE_ELEMENTS elements with at least ``min_sessions`` sessions (the same
        ones while the references stay the same)."""
        counts = self.index.session_counts()
        return seeded_sample([e for e, n in counts.items() if n >= min_sessions], SAMPLE_ELEMENTS)

    def keys_of_element(self, element_id: str) -> np.ndarray:
        return self.index.keys_of_element(element_id)

    def recorded_sessions(
        self, element_id: str, field: str = "element_id", first: int | None = None
    ) -> list[RecordedSession]:
        """The element's sessions in the order of their first recording (only its ``first``
        ones, when given: only their signals are read), with this model's embeddings and
        their signals."""
        refs = self.store.element_references(element_id)
        if not refs:
            raise _no_element(element_id, field)
        keys, vectors = self.store.embeddings(np.array([r.key for r in refs]), self.version)
        vector_of = dict(zip(keys.tolist(), vectors, strict=True))
        grouped: dict[str, list[int]] = {}
        recorded: dict[str, str] = {}
        for ref in refs:  # in time order: a session's first row is its first recording
            if ref.key in vector_of:
                grouped.setdefault(ref.session_id, []).append(ref.key)
                recorded.setdefault(ref.session_id, ref.recorded_at)
        kept = list(grouped.items())[:first]
        signal_of = self.store.signals([k for _, ks in kept for k in ks])
        sessions = []
        for session, ks in kept:
            stored = [k for k in ks if k in signal_of]  # none deleted since the first read
            if stored:
                sessions.append(
                    RecordedSession(
                        session,
                        recorded[session],
                        np.stack([vector_of[k] for k in stored]),
                        [signal_of[k] for k in stored],
                    )
                )
        return sessions

    def element_sample(self, element_id: str) -> ElementSample:
        """An element's references by session (up to CALIBRATION_REFERENCES each)."""
        sessions = []
        for keys in self.index.sessions_of_element(element_id).values():
            _, vectors = self.store.embeddings(keys[:CALIBRATION_REFERENCES], self.version)
            if len(vectors):
                sessions.append(vectors)
        return ElementSample(element_id, sessions)

    def first_of_sessions(self, element_id: str, sessions: int) -> np.ndarray:
        """The embeddings of the first reference of each of the element's first ``sessions``."""
        firsts = [keys[:1] for keys in self.index.sessions_of_element(element_id).values()]
        return self.store.embeddings(np.concatenate(firsts[:sessions]), self.version)[1]

    def vectors(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This model's vectors of ``keys``: (the keys still stored, their vectors)."""
        return self.store.embeddings(keys, self.version)

    # -- similarity to elements --------------------------------------------------------------
    def similarities(self, signals: np.ndarray, element_id: str, k: int) -> np.ndarray:
        """Each signal's similarity to the element: the mean of its k nearest references of
        the element (app/verification.py's similarity)."""
        rows = self.index.search(signals, k, Filters(element_id=element_id))
        return np.array([np.mean([h.similarity for h in row]) for row in rows])

    def other_elements_near(
        self, probes: np.ndarray, element_id: str, neighbours: int
    ) -> list[dict[str, list[float]]]:
        """Per probe signal, the elements but ``element_id`` among its ``neighbours`` nearest
        references (where the most similar other element almost always is), each with those
        references' similarities, most similar first."""
        rows = self.index.search(probes, neighbours, Filters(exclude_element_id=element_id))
        found = []
        for row in rows:
            described = self.index.describe(np.array([h.key for h in row], dtype=np.int64))
            by_element: dict[str, list[float]] = {}
            for h in row:  # most similar first
                if h.key in described:
                    by_element.setdefault(described[h.key][1], []).append(h.similarity)
            found.append(by_element)
        return found


def _no_element(element_id: str, field: str) -> NotFound:
    return NotFound(field, f"no references of element {element_id!r}")
