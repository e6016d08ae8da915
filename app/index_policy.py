"""When a collection's index is rebuilt, and as what: a small pure decision, tested on its own.

A collection's index is one large immutable segment, built from the store in the background,
plus a small mutable segment (searched exactly) that takes the writes since, and tombstones
hiding the large segment's deleted or replaced references (:mod:`app.index`). The next large
segment is built once the mutable part and the tombstones pass ``mutable_limit`` of the large
segment's size, or the size calls for another index type.

``auto`` keeps exact search up to ``approximate_above`` references, uses IVF on float vectors
past it, and IVF with product-quantised codes (``ivfpq``: 32 bytes a 128-d vector, its shortlist
rescored from the float vectors) past ``compress_above``. Measured on clustered 128-d vectors,
one query at a time: at 30,000 references float IVF takes 0.09 ms and IVF-PQ 0.14; at 100,000
0.26 against 0.24; at 300,000 0.47 against 0.33, both at recall@10 1.0 (BENCHMARKS.md "Ten
million references"). It goes back to the smaller size's type only once the set has shrunk to
half of a threshold, so a size hovering at one never rebuilds on every write. An IVF index is
retrained (rebuilt) once it holds ``IVF_REGROW`` times the square of its list count, i.e. when
its lists have grown 4x too long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IndexKind = Literal["flat", "ivf", "ivfpq", "hnsw"]
IndexSetting = Literal["auto", "flat", "ivf", "ivfpq", "hnsw"]

IVF_MIN_REFERENCES = 1000  # fewer: an exact scan is as fast, and k-means has too little to learn
IVF_REGROW = 4  # retrain an IVF index once it holds this many times lists² vectors
# The mutable segment is searched exactly (50,000 128-d vectors: ~3 ms a query on one core) and
# held by every process: a large segment is rebuilt before it passes this many, or a twentieth
# of the large segment, whichever is smaller (but at least MUTABLE_MIN: small sets rebuild in
# milliseconds, and rebuilding on every write would only churn files).
MUTABLE_MAX = 50_000
MUTABLE_MIN = 1_000


@dataclass(frozen=True)
class CurrentIndex:
    """The large segment a collection serves: its type, lists (IVF only) and size; kind None
    when it has none yet."""

    kind: IndexKind | None
    lists: int = 0
    references: int = 0


def mutable_limit(references: int, most: int = MUTABLE_MAX) -> int:
    """Writes (in the mutable segment) plus tombstones a large segment of ``references`` takes
    before the next is built."""
    return max(MUTABLE_MIN, min(most, references // 20))


@dataclass(frozen=True)
class IndexPolicy:
    setting: IndexSetting = "auto"
    approximate_above: int = 20_000  # auto: exact search up to this many references
    compress_above: int = 100_000  # auto: float IVF up to this many, IVF-PQ past it
    mutable_max: int = MUTABLE_MAX

    @property
    def threshold(self) -> int:
        """Past this many references an IVF index is used (``ivf``/``ivfpq`` themselves stay
        exact when tiny)."""
        if self.setting == "auto":
            return max(self.approximate_above, IVF_MIN_REFERENCES)
        return IVF_MIN_REFERENCES

    def kind_for(self, n: int) -> IndexKind:
        """The index type a fresh build for ``n`` references gets."""
        if self.setting in ("auto", "ivf", "ivfpq"):
            if n <= self.threshold:
                return "flat"
            if self.setting == "auto":
                return "ivfpq" if n > self.compress_above else "ivf"
            return self.setting
        return self.setting

    def needs_rebuild(self, n: int, current: CurrentIndex) -> bool:
        """Whether ``current`` is the wrong type for ``n`` references, or an IVF index whose
        lists the set has outgrown."""
        if current.kind is None:
            return True
        wanted = self.kind_for(n)
        ivf = current.kind in ("ivf", "ivfpq")
        if current.kind != wanted:  # hysteresis: back to a smaller size's type at half
            if ivf and wanted == "flat" and self.setting != "flat":
                return n <= self.threshold // 2
            if self.setting == "auto" and (current.kind, wanted) == ("ivfpq", "ivf"):
                return n <= self.compress_above // 2
            return True
        return ivf and n > IVF_REGROW * current.lists**2

    def wants_build(self, n: int, current: CurrentIndex, mutable: int, tombstones: int) -> bool:
        """Whether to build the next large segment: the type no longer suits ``n``, or the
        writes since the last build have passed the mutable segment's limit."""
        limit = mutable_limit(current.references, self.mutable_max)
        return self.needs_rebuild(n, current) or mutable + tombstones > limit
