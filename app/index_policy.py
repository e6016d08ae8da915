"""Which index type suits how many references: a small pure decision, tested on its own.

``auto`` keeps exact search up to ``approximate_above`` references and uses IVF past it; it goes
back to exact search only once the set has shrunk to half of that, so a size hovering at the
threshold never rebuilds on every write. An IVF index is retrained (rebuilt) once it holds
``IVF_REGROW`` times the square of its list count, i.e. when its lists have grown 4x too long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IndexKind = Literal["flat", "ivf", "hnsw"]
IndexSetting = Literal["auto", "flat", "ivf", "hnsw"]

IVF_MIN_REFERENCES = 1000  # fewer: an exact scan is as fast, and k-means has too little to learn
IVF_REGROW = 4  # retrain an IVF index once it holds this many times lists² vectors


@dataclass(frozen=True)
class CurrentIndex:
    kind: IndexKind
    lists: int = 0  # IVF only


@dataclass(frozen=True)
class IndexPolicy:
    setting: IndexSetting = "auto"
    approximate_above: int = 20_000  # auto: exact search up to this many references

    @property
    def threshold(self) -> int:
        """Past this many references IVF is used (``ivf`` itself stays exact when tiny)."""
        if self.setting == "auto":
            return max(self.approximate_above, IVF_MIN_REFERENCES)
        return IVF_MIN_REFERENCES

    def kind_for(self, n: int) -> IndexKind:
        """The index type a fresh build for ``n`` references gets."""
        if self.setting in ("auto", "ivf"):
            return "ivf" if n > self.threshold else "flat"
        return self.setting

    def needs_rebuild(self, n: int, current: CurrentIndex) -> bool:
        """Whether ``current`` is the wrong type for ``n`` references, or an IVF index whose
        lists the set has outgrown."""
        wanted = self.kind_for(n)
        if current.kind == "ivf" and wanted == "flat" and self.setting in ("auto", "ivf"):
            return n <= self.threshold // 2  # hysteresis
        if current.kind != wanted:
            return True
        return current.kind == "ivf" and n > IVF_REGROW * current.lists**2
