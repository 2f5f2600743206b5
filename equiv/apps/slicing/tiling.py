"""Exact tiling of the region by slice boxes (from the numbers alone), the tree's bisections, and the
points that exercise the dispatcher (random, faces, corners)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ...spec.region import Box


def check_tiling(region_lo, region_hi, lo, hi) -> list[str]:
    """Problems that keep boxes [lo[s], hi[s]] from tiling the region exactly (empty list: they tile it).

    Checked rigorously from the numbers alone: every box lies inside the region, no two boxes share
    interior points, and their volumes add up to the region's, computed exactly with Fractions of the
    float bounds over the region's non-degenerate dimensions.  Together these imply exact coverage:
    the union is closed, so an uncovered point of the region would have an uncovered neighbourhood of
    positive volume, and with disjoint interiors the union's volume would fall short of the region's.
    """
    rlo, rhi = np.asarray(region_lo, float), np.asarray(region_hi, float)
    lo, hi = np.atleast_2d(np.asarray(lo, float)), np.atleast_2d(np.asarray(hi, float))
    if lo.shape != hi.shape or lo.shape[1:] != rlo.shape or lo.shape[0] == 0:
        return [f"slice boxes of shape {lo.shape} / {hi.shape} do not match the region's {rlo.size} dimensions"]
    problems = []
    bad = ~(np.isfinite(lo).all(axis=1) & np.isfinite(hi).all(axis=1)) | (lo > hi).any(axis=1)
    problems += [f"slice {s}: box is not finite or has lo > hi" for s in np.flatnonzero(bad)]
    outside = (lo < rlo).any(axis=1) | (hi > rhi).any(axis=1)
    problems += [f"slice {s}: box is not inside the region" for s in np.flatnonzero(outside & ~bad)]
    free = np.flatnonzero(rhi > rlo)          # dimensions along which volume is measured
    flat = (hi[:, free] <= lo[:, free]).any(axis=1)
    problems += [f"slice {s}: box has no volume" for s in np.flatnonzero(flat & ~bad)]
    if problems:
        return problems
    for s in range(lo.shape[0] - 1):
        # interiors are disjoint iff some dimension separates the boxes (one ends where the other starts)
        sep = ((hi[s, free] <= lo[s + 1:, free]) | (hi[s + 1:, free] <= lo[s, free])).any(axis=1)
        problems += [f"slices {s} and {s + 1 + t} overlap" for t in np.flatnonzero(~sep)]
    if problems:
        return problems[:20] + ([f"... {len(problems) - 20} more overlaps"] if len(problems) > 20 else [])

    def volume(a, b):
        v = Fraction(1)
        for d in free:
            v *= Fraction(b[d]) - Fraction(a[d])
        return v

    total, whole = sum(volume(a, b) for a, b in zip(lo, hi)), volume(rlo, rhi)
    if total != whole:
        problems.append(f"the slices' volumes add up to {float(total / whole):.17g} of the region's: "
                        f"{'a gap' if total < whole else 'an overlap'} somewhere")
    return problems


def check_tree(tree: dict, slices: list[dict]) -> list[str]:
    """Problems with the manifest's tree: each split must bisect its node at `mid` along `split_dim`,
    and its leaves must be exactly the slices, with the same boxes."""
    problems, found = [], {}

    def walk(node, path):
        lo, hi = node["lo"], node["hi"]
        if "children" not in node:
            found[node["slice"]] = (lo, hi)
            return
        d, mid = node["split_dim"], node["mid"]
        a, b = node["children"]
        want_a = (lo, hi[:d] + [mid] + hi[d + 1:])
        want_b = (lo[:d] + [mid] + lo[d + 1:], hi)
        if (a["lo"], a["hi"]) != want_a or (b["lo"], b["hi"]) != want_b or not lo[d] < mid < hi[d]:
            problems.append(f"tree node {path or 'root'} is not bisected at {mid} along dimension {d}")
        elif mid != (float(lo[d]) + float(hi[d])) / 2:
            # equiv splits at the float64 midpoint (`Box.bisect`): a moved split point is an edited family
            problems.append(f"tree node {path or 'root'} splits dimension {d} at {mid!r}, not at its midpoint "
                            f"{(float(lo[d]) + float(hi[d])) / 2!r}")
        walk(a, path + "0")
        walk(b, path + "1")

    try:
        walk(tree, "")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return [f"the tree is malformed ({type(exc).__name__}: {exc})"]
    listed = {s["id"]: (s["lo"], s["hi"]) for s in slices}
    if set(found) != set(listed):
        problems.append(f"the tree's leaves {sorted(found)} are not the slices {sorted(listed)}")
    problems += [f"slice {i}: its box differs from its tree leaf" for i in listed if i in found and found[i] != listed[i]]
    return problems


def face_points(boxes: list[Box], per_face: int, rng: np.random.Generator, region: Box | None = None) -> np.ndarray:
    """`per_face` random points on every face (x_d = lo_d or hi_d) of every box: the shared faces where
    the dispatcher has to choose between two slices.  With `region`, only the faces inside it (the shared
    ones: a graph's thousands of inputs give far too many faces on the region's boundary)."""
    pts = []
    for b in boxes:
        for d in np.flatnonzero(b.hi > b.lo):
            for side in (b.lo[d], b.hi[d]):
                if region is not None and side in (region.lo[d], region.hi[d]):
                    continue
                x = b.sample(per_face, rng)
                x[:, d] = side
                pts.append(x)
    return np.vstack(pts) if pts else np.empty((0, boxes[0].dim))


def dispatch_points(region: Box, boxes: list[Box], n: int, per_face: int, seed: int, inner_faces: bool = False) -> dict:
    """Named point sets for checking a dispatcher: random points of the region, slice faces (only those inside
    the region with `inner_faces`), slice corners."""
    rng = np.random.default_rng(seed)
    corners = [b.corners(limit=64) for b in boxes]
    return {"random": region.sample(n, rng), "faces": face_points(boxes, per_face, rng, region if inner_faces else None),
            "slice_corners": np.unique(np.vstack(corners), axis=0), "region_center": region.center[None]}
