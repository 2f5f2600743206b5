"""The input formula as a union of boxes: disjunctive normal form, pruned on the way."""

from __future__ import annotations

import numpy as np

from ...errors import RegionError
from .formula import _names

MAX_DNF_TERMS = 10_000        # more boxes than this in the expansion: refuse (split the spec)
MAX_DNF_STEPS = 1_000_000     # box intersections tried while expanding: refuse beyond this
_PAIRWISE_PRUNE = 64          # containment pruning of intermediate unions up to this many boxes


class Expander:
    """Expands an and/or formula of bounds {i: (lo, hi)} into boxes, with size limits."""

    def __init__(self, path: str):
        self.path = path
        self.steps = 0
        self.conflict = None                          # first empty intersection seen: (i, lo, hi)


    def too_large(self, what: str) -> RegionError:
        return RegionError(f"{self.path}: the input constraints expand to {what} (disjunctive normal form); "
                           f"equiv reads at most {MAX_DNF_TERMS} boxes: split the spec into several files "
                           "with simpler input constraints")

    def meet(self, a: dict, t: dict):
        """The intersection of two boxes {i: (lo, hi)}, or None when it is empty. Boxes are never mutated."""
        if not t:
            return a
        if not a:
            return t
        if len(a) < len(t):
            a, t = t, a
        m = dict(a)
        for i, (lo, hi) in t.items():
            cur = m.get(i)
            if cur is not None:
                lo, hi = max(lo, cur[0]), min(hi, cur[1])
                if lo > hi:
                    if self.conflict is None:
                        self.conflict = (i, lo, hi)
                    return None
            m[i] = (lo, hi)
        return m

    def prune(self, terms: list) -> list:
        if len(terms) <= 1:
            return terms
        seen, out = set(), []
        for t in terms:
            key = frozenset(t.items())
            if key not in seen:
                seen.add(key)
                out.append(t)
        if len(out) <= _PAIRWISE_PRUNE:
            out = [t for k, t in enumerate(out) if not any(j != k and _inside(t, u) for j, u in enumerate(out))]
        return out

    def dnf(self, f) -> list[dict]:
        kind = f[0]
        if kind == "true":
            return [{}]
        if kind == "false":
            return []
        if kind == "b":
            return [{f[1]: (f[2], f[3])}]
        if kind == "or":
            out = []
            for c in f[1]:
                out.extend(self.dnf(c))
                if len(out) > MAX_DNF_TERMS:
                    out = self.prune(out)
                    if len(out) > MAX_DNF_TERMS:
                        raise self.too_large(f"more than {MAX_DNF_TERMS} boxes")
            return self.prune(out)
        # "and": the single-bound children first, into one box, then the product with the others
        base: dict = {}
        for c in f[1]:
            if c[0] == "b":
                i, lo, hi = c[1], c[2], c[3]
                cur = base.get(i)
                if cur is not None:
                    lo, hi = max(lo, cur[0]), min(hi, cur[1])
                    if lo > hi:
                        if self.conflict is None:
                            self.conflict = (i, lo, hi)
                        return []
                base[i] = (lo, hi)
        acc = [base]
        for c in f[1]:
            if c[0] == "b":
                continue
            d = self.dnf(c)
            if not d:
                return []
            if len(d) == 1 and not d[0]:
                continue
            self.steps += len(acc) * len(d)
            if self.steps > MAX_DNF_STEPS:
                raise self.too_large(f"more than {MAX_DNF_STEPS} box intersections")
            new = []
            for a in acc:
                for t in d:
                    m = self.meet(a, t)
                    if m is not None:
                        new.append(m)
                if len(new) > MAX_DNF_TERMS:
                    new = self.prune(new)
                    if len(new) > MAX_DNF_TERMS:
                        raise self.too_large(f"more than {MAX_DNF_TERMS} boxes")
            acc = self.prune(new)
            if not acc:
                return []
        return acc

    def boxes(self, terms: list[dict], n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        if not terms:
            why = ""
            if self.conflict is not None:
                i, lo, hi = self.conflict
                why = f" (for instance X_{i} would need to be >= {lo!r} and <= {hi!r})"
            raise RegionError(f"{self.path}: the input region is empty: the input constraints contradict each "
                              f"other{why}")
        L = np.full((len(terms), n), -np.inf)
        H = np.full((len(terms), n), np.inf)
        for k, t in enumerate(terms):
            if t:
                idx = np.fromiter(t.keys(), dtype=np.int64, count=len(t))
                b = np.array(list(t.values()), dtype=np.float64)
                L[k, idx] = b[:, 0]
                H[k, idx] = b[:, 1]
        keep = _maximal(L, H)
        L, H = L[keep], H[keep]
        for k in range(L.shape[0]):
            no_lo, no_hi = np.flatnonzero(L[k] == -np.inf), np.flatnonzero(H[k] == np.inf)
            if no_lo.size or no_hi.size:
                parts = []
                if no_lo.size:
                    parts.append(f"{_names(no_lo)} {'has' if no_lo.size == 1 else 'have'} no lower bound")
                if no_hi.size:
                    parts.append(f"{_names(no_hi)} {'has' if no_hi.size == 1 else 'have'} no upper bound")
                where = f" (in input box {k + 1} of {L.shape[0]})" if L.shape[0] > 1 else ""
                raise RegionError(f"{self.path}: the input region is unbounded: {'; '.join(parts)}{where}; it declares "
                                  f"{n} input{'s' if n > 1 else ''} (X_0 .. X_{n - 1}), each needs a lower and an "
                                  "upper bound")
        return [(L[k].copy(), H[k].copy()) for k in range(L.shape[0])]


def _inside(t: dict, u: dict) -> bool:
    """Box t is contained in box u (both {i: (lo, hi)}; a missing i is unbounded)."""
    for i, (lo, hi) in u.items():
        cur = t.get(i)
        if cur is None or cur[0] < lo or cur[1] > hi:
            return False
    return True


def _maximal(L: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Indices (in order) of the boxes that are neither a repeat of an earlier box nor contained in another."""
    m, n = L.shape
    if m == 1:
        return np.arange(1)
    first: dict = {}
    for k in range(m):
        first.setdefault(L[k].tobytes() + H[k].tobytes(), k)
    uniq = np.array(sorted(first.values()))
    L, H = L[uniq], H[uniq]
    if L.shape[0] ** 2 * n > 5e8:            # too costly to compare all pairs; the union is the same
        return uniq
    keep = np.ones(L.shape[0], bool)
    for k in range(L.shape[0]):
        inside = np.all(L <= L[k], axis=1) & np.all(H >= H[k], axis=1)
        inside[k] = False
        keep[k] = not inside.any()
    return uniq[keep]
