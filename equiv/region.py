"""Input regions: boxes from VNN-LIB input constraints, from a --box string, or an L-infinity ball."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RegionError


@dataclass(frozen=True)
class Box:
    """An axis-aligned box lo <= x <= hi over the flattened network input."""

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self):
        lo = np.asarray(self.lo, dtype=np.float64).reshape(-1)
        hi = np.asarray(self.hi, dtype=np.float64).reshape(-1)
        if lo.shape != hi.shape:
            raise RegionError(f"box bounds have different lengths: {lo.size} lower, {hi.size} upper")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            bad = np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))
            raise RegionError(f"box bounds must be finite; input(s) {bad[:10].tolist()} are missing or infinite")
        if np.any(lo > hi):
            bad = np.flatnonzero(lo > hi)
            raise RegionError(f"empty box: lower bound above upper bound for input(s) {bad[:10].tolist()}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @property
    def dim(self) -> int:
        return self.lo.size

    @property
    def center(self) -> np.ndarray:
        return (self.lo + self.hi) / 2

    @property
    def radius(self) -> np.ndarray:
        return (self.hi - self.lo) / 2

    def check_dim(self, n: int) -> "Box":
        if self.dim != n:
            raise RegionError(f"the region has {self.dim} dimensions but the network has {n} inputs")
        return self

    def contains(self, x: np.ndarray, tol: float = 0.0) -> np.ndarray:
        x = np.atleast_2d(x)
        return np.all((x >= self.lo - tol) & (x <= self.hi + tol), axis=1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n uniform random points of the box, shape (n, dim)."""
        return self.lo + rng.random((n, self.dim)) * (self.hi - self.lo)

    def corners(self, limit: int = 4096) -> np.ndarray:
        """All 2^d corners when there are at most `limit`, else an empty array."""
        free = np.flatnonzero(self.hi > self.lo)
        if 2 ** free.size > limit:
            return np.empty((0, self.dim))
        bits = (np.arange(2 ** free.size)[:, None] >> np.arange(free.size)) & 1
        pts = np.tile(self.lo, (bits.shape[0], 1))
        pts[:, free] = np.where(bits, self.hi[free], self.lo[free])
        return pts

    def bisect(self, dim: int) -> tuple["Box", "Box"]:
        """Split along one input dimension at its midpoint; the halves share that face."""
        mid = (self.lo[dim] + self.hi[dim]) / 2
        hi1, lo2 = self.hi.copy(), self.lo.copy()
        hi1[dim] = mid
        lo2[dim] = mid
        return Box(self.lo, hi1), Box(lo2, self.hi)

    def to_json(self) -> dict:
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist()}


_ASSERT = re.compile(r"\(\s*(<=|>=)\s+(X_(\d+)|[-+0-9.eE]+)\s+(X_(\d+)|[-+0-9.eE]+)\s*\)")
_DECL = re.compile(r"\(declare-const\s+X_(\d+)\s+Real\)")


def _strip_comments(text: str) -> str:
    return "\n".join(line.split(";", 1)[0] for line in text.splitlines())


def _top_level_asserts(text: str) -> list[str]:
    """The bodies of the (assert ...) forms, matched by parenthesis depth."""
    out, i = [], 0
    while (i := text.find("(assert", i)) != -1:
        depth, j = 0, i
        while j < len(text):
            depth += text[j] == "("
            depth -= text[j] == ")"
            j += 1
            if depth == 0:
                break
        out.append(text[i + len("(assert"):j - 1])
        i = j
    return out


def _bounds_from(atoms: list[tuple[str, str, str]], n: int, lo: np.ndarray, hi: np.ndarray):
    """Apply atoms (op, lhs, rhs) of the form X_i <= v, X_i >= v, v <= X_i, v >= X_i to lo/hi."""
    for op, a, b in atoms:
        if a.startswith("X_") and not b.startswith("X_"):
            i, v, upper = int(a[2:]), float(b), op == "<="
        elif b.startswith("X_") and not a.startswith("X_"):
            i, v, upper = int(b[2:]), float(a), op == ">="
        else:
            raise RegionError(f"unsupported input constraint ({op} {a} {b}): only bounds on single inputs")
        if i >= n:
            raise RegionError(f"constraint on X_{i} but only {n} inputs are declared")
        if upper:
            hi[i] = min(hi[i], v)
        else:
            lo[i] = max(lo[i], v)


def boxes_from_vnnlib(path: str | Path) -> list[Box]:
    """The input region of a VNN-LIB file: one box, or several when the inputs sit in an (or ...).

    Only constraints mentioning X variables are read; output (Y) constraints are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise RegionError(f"VNN-LIB file not found: {path}")
    text = _strip_comments(path.read_text())
    n = len(set(_DECL.findall(text)))
    if n == 0:
        raise RegionError(f"{path}: no input variables (declare-const X_i Real) found")
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    disjuncts: list[list] = []
    for body in _top_level_asserts(text):
        atoms = [(m.group(1), m.group(2), m.group(4)) for m in _ASSERT.finditer(body)]
        atoms = [a for a in atoms if a[1].startswith("X_") or a[2].startswith("X_")]
        if not atoms:
            continue
        if body.strip().startswith("(or"):
            if disjuncts:
                raise RegionError(f"{path}: more than one disjunction over inputs is not supported")
            for part in re.findall(r"\(and((?:[^()]|\([^()]*\))*)\)", body):
                disjuncts.append([(m.group(1), m.group(2), m.group(4)) for m in _ASSERT.finditer(part)])
        else:
            _bounds_from(atoms, n, lo, hi)
    if not disjuncts:
        return [_checked(lo, hi, path)]
    boxes = []
    for atoms in disjuncts:
        l, h = lo.copy(), hi.copy()
        _bounds_from(atoms, n, l, h)
        boxes.append(_checked(l, h, path))
    return boxes


def _checked(lo, hi, path) -> Box:
    missing = np.flatnonzero(~np.isfinite(lo) | ~np.isfinite(hi))
    if missing.size:
        raise RegionError(f"{path}: inputs {['X_%d' % i for i in missing[:10]]} have no lower or upper bound")
    try:
        return Box(lo, hi)
    except RegionError as exc:
        raise RegionError(f"{path}: {exc}") from exc


def hull(boxes: list[Box]) -> Box:
    """The smallest box containing all boxes (simplifying on it is sound for their union)."""
    return Box(np.min([b.lo for b in boxes], axis=0), np.max([b.hi for b in boxes], axis=0))


def box_from_string(spec: str) -> Box:
    """Parse "lo:hi,lo:hi,..." (one interval per input)."""
    lo, hi = [], []
    for k, part in enumerate(spec.split(",")):
        try:
            a, b = part.split(":")
            lo.append(float(a))
            hi.append(float(b))
        except ValueError:
            raise RegionError(f"--box entry {k} ('{part.strip()}') is not of the form lo:hi") from None
    return Box(np.array(lo), np.array(hi))


def ball(center: np.ndarray, radius: float, clip: tuple[float, float] | None = None) -> Box:
    """The L-infinity ball of the given radius around center, optionally clipped to [clip0, clip1]."""
    if not np.isfinite(radius) or radius < 0:
        raise RegionError(f"radius must be a finite number >= 0, got {radius}")
    c = np.asarray(center, dtype=np.float64).reshape(-1)
    lo, hi = c - radius, c + radius
    if clip is not None:
        lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
    return Box(lo, hi)


def load_region(spec=None, box=None, center=None, radius=None, clip=None) -> tuple[Box, str]:
    """Exactly one region source -> (Box, description); several VNN-LIB boxes give their hull."""
    given = [s for s in (spec, box, center) if s is not None]
    if len(given) != 1:
        raise RegionError("give exactly one region: --spec FILE.vnnlib, --box 'lo:hi,...', or --center FILE.npy --radius R")
    if spec is not None:
        boxes = boxes_from_vnnlib(spec)
        if len(boxes) == 1:
            return boxes[0], f"vnnlib:{spec}"
        return hull(boxes), f"vnnlib:{spec} (hull of {len(boxes)} input boxes)"
    if box is not None:
        return box_from_string(box), "box"
    if radius is None:
        raise RegionError("--center needs --radius")
    try:
        c = np.load(center)
    except Exception as exc:
        raise RegionError(f"cannot read centre file {center}: {exc}") from exc
    return ball(c, float(radius), clip), f"ball:{center} r={radius}"
