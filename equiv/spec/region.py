"""Input regions: boxes from VNN-LIB input constraints, from a --box string, or an L-infinity ball."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import vnnlib
from ..errors import RegionError

F32_MAX = float(np.finfo(np.float32).max)


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
        big = np.flatnonzero((np.abs(lo) > F32_MAX) | (np.abs(hi) > F32_MAX))
        if big.size:
            raise RegionError(f"box bounds beyond float32's range (|x| > {F32_MAX:.4g}) for input(s) {big[:10].tolist()}: "
                              "the models take float32 inputs")
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

    def random_vertices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n random vertices (each input at its lower or upper bound), shape (n, dim): ReLU networks are
        piecewise linear, so extremes sit at vertices, which uniform samples in many dimensions never reach."""
        return np.where(rng.random((n, self.dim)) < 0.5, self.lo, self.hi)

    def vertices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """All vertices when there are at most n, else n random ones."""
        corners = self.corners(limit=n)
        return corners if len(corners) else self.random_vertices(n, rng)

    def bisect(self, dim: int) -> tuple["Box", "Box"]:
        """Split along one input dimension at its midpoint; the halves share that face."""
        mid = (self.lo[dim] + self.hi[dim]) / 2
        hi1, lo2 = self.hi.copy(), self.lo.copy()
        hi1[dim] = mid
        lo2[dim] = mid
        return Box(self.lo, hi1), Box(lo2, self.hi)

    def to_json(self) -> dict:
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist()}

    def sha256(self) -> str:
        """sha256 of the bounds as little-endian float64, lo then hi: names the box in a few bytes (an image's
        bounds as JSON take ~60 KB)."""
        return hashlib.sha256(self.lo.astype("<f8").tobytes() + self.hi.astype("<f8").tobytes()).hexdigest()


def boxes_from_vnnlib(path: str | Path) -> list[Box]:
    """The input region of a VNN-LIB file as a union of boxes, in the order of their appearance.

    Read by the strict parser of equiv.spec.vnnlib: and/or in any nesting are expanded into boxes; atoms
    over outputs (Y) alone count as true (a superset of the spec's inputs, so sound); anything that is
    not understood raises RegionError "PATH:LINE: what is wrong" instead of being skipped.
    """
    boxes = []
    for k, (lo, hi) in enumerate(vnnlib.read_file(path)):
        try:
            boxes.append(Box(lo, hi))
        except RegionError as exc:   # not expected: the reader returns finite, non-empty boxes
            raise RegionError(f"{path}: input box {k + 1}: {exc}") from exc
    return boxes


def hull(boxes: list[Box]) -> Box:
    """The smallest box containing all boxes (simplifying on it is sound for their union)."""
    return Box(np.min([b.lo for b in boxes], axis=0), np.max([b.hi for b in boxes], axis=0))


def box_from_string(spec: str) -> Box:
    """Parse "lo:hi,lo:hi,..." (one interval per input; finite numbers, lo <= hi)."""
    if not spec or not spec.strip():
        raise RegionError("--box is empty: expected one interval per input, of the form lo:hi,lo:hi,...")
    lo, hi = [], []
    for k, part in enumerate(spec.split(",")):
        try:
            a, b = part.split(":")
            a, b = float(a), float(b)
        except ValueError:
            raise RegionError(f"--box entry {k} ('{part.strip()}') is not of the form lo:hi") from None
        if not (np.isfinite(a) and np.isfinite(b)):
            raise RegionError(f"--box entry {k} ('{part.strip()}'): the bounds must be finite numbers "
                              "(not nan or inf)")
        if a > b:
            raise RegionError(f"--box entry {k} ('{part.strip()}'): lower bound {a!r} is above upper bound {b!r}")
        lo.append(a)
        hi.append(b)
    return Box(np.array(lo), np.array(hi))


def ball(center: np.ndarray, radius: float, clip: tuple[float, float] | None = None) -> Box:
    """The L-infinity ball of the given radius around center, optionally clipped to [clip0, clip1]."""
    if not np.isfinite(radius) or radius < 0:
        raise RegionError(f"radius must be a finite number >= 0, got {radius}")
    c = np.asarray(center, dtype=np.float64).reshape(-1)
    lo, hi = c - radius, c + radius
    if clip is not None:
        if clip[0] > clip[1]:
            raise RegionError(f"--clip {clip[0]:g}:{clip[1]:g} is empty (lower bound above upper bound)")
        apart = np.flatnonzero((hi < clip[0]) | (lo > clip[1]))
        if apart.size:
            raise RegionError(f"empty region: the ball does not meet --clip {clip[0]:g}:{clip[1]:g} at input(s) "
                              f"{apart[:10].tolist()}")
        lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
    return Box(lo, hi)


def load_regions(spec=None, box=None, center=None, radius=None, clip=None) -> tuple[list[Box], str]:
    """Exactly one region source -> (every box of the region's union, description).

    A VNN-LIB file gives one box per disjunct of its input constraints; --box and balls give one box.
    """
    given = [s for s in (spec, box, center) if s is not None]
    if len(given) != 1:
        raise RegionError("give exactly one region: --spec FILE.vnnlib, --box 'lo:hi,...', or --center FILE.npy --radius R")
    if clip is not None and center is None:
        raise RegionError("--clip applies only to --center/--radius balls")
    if radius is not None and center is None:
        raise RegionError("--radius applies only to --center balls")
    if spec is not None:
        boxes = boxes_from_vnnlib(spec)
        if len(boxes) == 1:
            return boxes, f"vnnlib:{spec}"
        return boxes, f"vnnlib:{spec} (union of {len(boxes)} input boxes)"
    if box is not None:
        return [box_from_string(box)], "box"
    if radius is None:
        raise RegionError("--center needs --radius")
    try:
        c = np.load(center, allow_pickle=False)
    except Exception as exc:
        why = "not a .npy array file (numpy.save writes one)" if isinstance(exc, ValueError) else str(exc)
        raise RegionError(f"cannot read centre file {center}: {why}") from exc
    if not isinstance(c, np.ndarray) or c.dtype.kind not in "iuf":
        what = "an .npz archive" if not isinstance(c, np.ndarray) else f"an array of dtype {c.dtype}"
        raise RegionError(f"centre file {center} holds {what}; it must hold one array of real numbers (integer "
                          "or float; numpy.save writes one)")
    return [ball(c, float(radius), clip)], f"ball:{center} r={radius}"


def load_region(spec=None, box=None, center=None, radius=None, clip=None) -> tuple[Box, str]:
    """Exactly one region source -> (Box, description); several VNN-LIB boxes give their hull."""
    boxes, desc = load_regions(spec=spec, box=box, center=center, radius=radius, clip=clip)
    if len(boxes) == 1:
        return boxes[0], desc
    return hull(boxes), f"vnnlib:{spec} (hull of {len(boxes)} input boxes)"


# ---- float32 points of a region: what onnxruntime can be asked about ---------------------------------------

def float32_up(a: np.ndarray) -> np.ndarray:
    """Elementwise, the smallest float32 >= a."""
    a32 = np.asarray(a, np.float64).astype(np.float32)
    return np.where(a32.astype(np.float64) < a, np.nextafter(a32, np.float32(np.inf)), a32)


def float32_down(a: np.ndarray) -> np.ndarray:
    """Elementwise, the largest float32 <= a."""
    a32 = np.asarray(a, np.float64).astype(np.float32)
    return np.where(a32.astype(np.float64) > a, np.nextafter(a32, np.float32(-np.inf)), a32)


def float32_gaps(box: Box) -> np.ndarray:
    """The inputs whose interval [lo, hi] holds no float32 value (e.g. an input fixed at -0.3)."""
    return np.flatnonzero(float32_up(box.lo).astype(np.float64) > box.hi)


def float32_inward(box: Box) -> tuple[np.ndarray, np.ndarray]:
    """(lo32, hi32): per input the smallest float32 >= lo and the largest float32 <= hi, so a float32 x lies in
    [lo, hi] exactly when lo32 <= x <= hi32; an input whose interval holds no float32 (`float32_gaps`) takes
    the float32 nearest lo at both ends."""
    lo32, hi32 = float32_up(box.lo), float32_down(box.hi)
    gaps = float32_gaps(box)
    lo32[gaps] = hi32[gaps] = box.lo[gaps].astype(np.float32)
    return lo32, hi32


def floats_in_box(X: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Row by row, the float32 point nearest x that still lies in the box, and whether the box holds one there;
    an input whose interval holds no float32 (`float32_gaps`) takes the float32 nearest its lower end."""
    lo32, hi32 = float32_inward(box)
    x32 = np.clip(np.clip(X, box.lo, box.hi).astype(np.float32), lo32, hi32)
    inside = (x32.astype(np.float64) >= box.lo) & (x32.astype(np.float64) <= box.hi)
    inside[:, float32_gaps(box)] = True
    return x32, inside.all(axis=1)
