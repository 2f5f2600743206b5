"""Sound pre-activation bounds: intervals, DeepPoly/CROWN back-substitution, LP tightening."""

from .common import Bounds, outward
from .deeppoly import deeppoly_bounds
from .interval import interval_bounds

__all__ = ["Bounds", "outward", "interval_bounds", "deeppoly_bounds"]
