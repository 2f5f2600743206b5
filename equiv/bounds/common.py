"""Per-layer bounds container and the phase of a neuron implied by its bounds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Relative/absolute outward rounding applied to every computed bound: float64 sums of a few hundred
# terms are exact to ~1e-13 relative, so 1e-9 is a generous safety margin that costs no precision.
ROUND_REL = 1e-9
ROUND_ABS = 1e-9
# Relative margin on the sum of |terms| of a back-substituted bound (`engine._backward(magnitude=True)`):
# a difference of two networks is a small sum of large terms, which the margins above do not cover.
ROUND_TERMS = 1e-12
# Per accumulated operation, a margin relative to a tensor's forward magnitude (`engine.rounding_margins`:
# |W| M + |b| from max |x| at the inputs, which bounds every term the tensor's bounds sum up, since ReLU
# slopes lie in [0, 1] and their intercepts below |l|).  float64 rounds each operation by at most 2^-53
# relative, so operations x 2^-52 x magnitude bounds the error.  Without it, terms of 1e10 cancelling to
# 1e-7 (weights ~1e5, inputs ~1e3) gave an upper bound below a real value, and a ReLU was called dead that
# is not (found by an adversarial hunt).
ROUND_MAG = 2.0 ** -52


def outward(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Widen [lo, hi] by the floating-point safety margin."""
    return lo - ROUND_ABS - ROUND_REL * np.abs(lo), hi + ROUND_ABS + ROUND_REL * np.abs(hi)


@dataclass
class Bounds:
    """lo[k], hi[k]: bounds of the pre-activation z_{k+1} of dense layer k+1 (last entry: the output)."""

    lo: list[np.ndarray]
    hi: list[np.ndarray]

    def copy(self) -> "Bounds":
        return Bounds([a.copy() for a in self.lo], [a.copy() for a in self.hi])

    def intersect(self, other: "Bounds") -> "Bounds":
        """Per neuron, the tighter of two sound bounds (both hold, so their intersection does)."""
        return Bounds([np.maximum(a, b) for a, b in zip(self.lo, other.lo)],
                      [np.minimum(a, b) for a, b in zip(self.hi, other.hi)])

    @property
    def hidden(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(zip(self.lo[:-1], self.hi[:-1]))

    def counts(self, masks: list[np.ndarray]) -> dict:
        """Hidden ReLU neurons proved dead (hi <= 0), active (lo >= 0) and unstable by these bounds."""
        dead = active = total = 0
        for (lo, hi), m in zip(self.hidden, masks):
            dead += int(np.sum((hi <= 0) & m))
            active += int(np.sum((lo >= 0) & (hi > 0) & m))
            total += int(m.sum())
        return {"dead": dead, "active": active, "stable": dead + active, "unstable": total - dead - active}

    def to_json(self) -> list[dict]:
        return [{"layer": k + 1, "lo": lo.tolist(), "hi": hi.tolist()} for k, (lo, hi) in enumerate(zip(self.lo, self.hi))]
