"""What the index knows of each reference besides its vector: its key, its id and integer codes of
its element and session, and the key selections that search filters become.

Kept in numpy arrays sorted by key (about 16 bytes a reference plus its id string), so filters and
the names of the neighbours a search returns never need the database: a search keeps answering
while the database is unreachable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np


class Codes:
    """Names <-> dense integer codes, for elements or sessions."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names: list[str] = list(names)
        self.codes: dict[str, int] = {name: code for code, name in enumerate(self.names)}

    def code(self, name: str) -> int:
        """The name's code, made if new."""
        if name not in self.codes:
            self.codes[name] = len(self.names)
            self.names.append(name)
        return self.codes[name]


@dataclass(frozen=True)
class Filters:
    """What a search is restricted to, end to end (request -> service -> index -> labels):
    only one element's or one session's references, none of a session's or an element's."""

    element_id: str | None = None
    session_id: str | None = None
    exclude_session_id: str | None = None
    exclude_element_id: str | None = None


@dataclass
class Selection:
    """Which keys a search may return: only ``allowed`` (when set), none of ``excluded``."""

    allowed: np.ndarray | None = None
    excluded: np.ndarray | None = None
    # FAISS search parameters built for it, by search breadth: a selection searched many times
    # (the tombstones) builds its selector once (an IDSelectorBatch of 50,000 keys: ~ms)
    memo: dict | None = field(default=None, compare=False, repr=False)

    @property
    def is_empty(self) -> bool:
        return self.allowed is not None and not len(self.allowed)


@dataclass
class LabelRows:
    """Labels of some references, as given to :meth:`LabelTable.set`."""

    keys: np.ndarray  # (n,) int64
    ids: list[str]
    element_ids: list[str]
    session_ids: list[str]


@dataclass
class IndexRows(LabelRows):
    """References as the index takes them: labels and embeddings."""

    vectors: np.ndarray  # (n, D) float32


def positions_in(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``keys`` sit in ``sorted_keys`` (ascending), and which of them are there."""
    at = np.searchsorted(sorted_keys, keys)
    found = at < len(sorted_keys)
    found[found] = sorted_keys[at[found]] == keys[found]
    return at, found


def selection_of(
    filters: Filters,
    keys_of_element: Callable[[str], np.ndarray],
    keys_of_session: Callable[[str], np.ndarray],
) -> Selection:
    """The keys a search filtered this way may return, from a label store's sorted keys of an
    element and of a session (a LabelTable's, a segment's)."""
    allowed: np.ndarray | None = None
    if filters.element_id is not None:
        allowed = keys_of_element(filters.element_id)
    if filters.session_id is not None:
        in_session = keys_of_session(filters.session_id)
        allowed = in_session if allowed is None else np.intersect1d(allowed, in_session)
    excluded: np.ndarray | None = None
    if filters.exclude_session_id is not None:
        excluded = keys_of_session(filters.exclude_session_id)
    if filters.exclude_element_id is not None:
        of_element = keys_of_element(filters.exclude_element_id)
        excluded = of_element if excluded is None else np.union1d(excluded, of_element)
    if excluded is not None:
        if allowed is not None:
            allowed, excluded = np.setdiff1d(allowed, excluded), None
        elif not len(excluded):
            excluded = None
    return Selection(allowed, excluded)


class LabelTable:
    """Sorted keys with, in step, ids and element and session codes. Not thread-safe: the index
    that owns it holds the lock."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.int64)
        self.ids = np.zeros(0, object)
        self.element_of = np.zeros(0, np.int32)
        self.session_of = np.zeros(0, np.int32)
        self.elements = Codes()
        self.sessions = Codes()

    def __len__(self) -> int:
        return len(self.keys)

    def positions(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where ``keys`` sit in ``self.keys``, and which of them are there."""
        return positions_in(self.keys, keys)

    def set(self, rows: LabelRows) -> None:
        """Existing keys change in place, new ones are added."""
        keys = np.asarray(rows.keys, dtype=np.int64)
        ids = np.array(rows.ids, dtype=object)
        elements = np.array([self.elements.code(e) for e in rows.element_ids], dtype=np.int32)
        sessions = np.array([self.sessions.code(s) for s in rows.session_ids], dtype=np.int32)
        at, found = self.positions(keys)
        self.ids[at[found]] = ids[found]
        self.element_of[at[found]] = elements[found]
        self.session_of[at[found]] = sessions[found]
        new, kept = ~found, len(self.keys)
        self.keys = np.concatenate([self.keys, keys[new]])
        self.ids = np.concatenate([self.ids, ids[new]])
        self.element_of = np.concatenate([self.element_of, elements[new]])
        self.session_of = np.concatenate([self.session_of, sessions[new]])
        if (np.diff(self.keys[max(0, kept - 1) :]) < 0).any():  # the appended part out of order
            order = np.argsort(self.keys, kind="stable")  # keys are ascending: rarely needed
            self.keys, self.ids = self.keys[order], self.ids[order]
            self.element_of, self.session_of = self.element_of[order], self.session_of[order]

    def remove(self, keys: np.ndarray) -> np.ndarray:
        """Drops the keys that are there; returns those."""
        at, found = self.positions(np.asarray(keys, dtype=np.int64))
        at = at[found]
        gone = self.keys[at]
        self.keys = np.delete(self.keys, at)
        self.ids = np.delete(self.ids, at)
        self.element_of = np.delete(self.element_of, at)
        self.session_of = np.delete(self.session_of, at)
        return gone

    def describe(self, keys: np.ndarray) -> dict[int, tuple[str, str, str]]:
        """key -> (id, element_id, session_id) for the keys that are there."""
        at, found = self.positions(np.asarray(keys, dtype=np.int64))
        at = at[found]
        return {
            int(key): (ref_id, self.elements.names[e], self.sessions.names[s])
            for key, ref_id, e, s in zip(
                self.keys[at].tolist(),
                self.ids[at].tolist(),
                self.element_of[at].tolist(),
                self.session_of[at].tolist(),
                strict=True,
            )
        }

    def has_element(self, element_id: str) -> bool:
        code = self.elements.codes.get(element_id)
        return code is not None and bool((self.element_of == code).any())

    def keys_of_element(self, element_id: str | None) -> np.ndarray:
        """The element's keys; every key for None."""
        if element_id is None:
            return self.keys
        return self._keys_where(self.elements, self.element_of, element_id)

    def _keys_where(self, codes: Codes, of: np.ndarray, name: str) -> np.ndarray:
        code = codes.codes.get(name)
        return self.keys[of == code] if code is not None else self.keys[:0]

    def session_counts(self) -> dict[str, int]:
        """element -> how many sessions it has references in, for every element that has any."""
        pairs = np.unique(np.stack([self.element_of, self.session_of]), axis=1)
        codes, counts = np.unique(pairs[0], return_counts=True)
        return {
            self.elements.names[c]: n for c, n in zip(codes.tolist(), counts.tolist(), strict=True)
        }

    def sessions_of_element(self, element_id: str) -> dict[str, np.ndarray]:
        """session name -> its keys, for one element's references."""
        keys = self.keys_of_element(element_id)
        at, _ = self.positions(keys)
        codes = self.session_of[at]
        return {
            self.sessions.names[code]: keys[codes == code] for code in np.unique(codes).tolist()
        }

    def selection(self, filters: Filters) -> Selection:
        """The keys a search filtered this way may return."""
        return selection_of(
            filters,
            lambda name: self._keys_where(self.elements, self.element_of, name),
            lambda name: self._keys_where(self.sessions, self.session_of, name),
        )
