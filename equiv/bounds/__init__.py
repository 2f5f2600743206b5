"""Sound pre-activation bounds: intervals, DeepPoly/CROWN back-substitution (one box or many at once),
and input splitting over a tiling of the region."""

from .batch import deeppoly_boxes
from .common import Bounds, outward
from .deeppoly import deeppoly_bounds
from .interval import interval_bounds
from .split import SplitResult, split_bounds

__all__ = ["Bounds", "outward", "interval_bounds", "deeppoly_bounds", "deeppoly_boxes", "split_bounds", "SplitResult"]
