"""Slicing: a family of small networks that together equal the original on the region.

On a large region few neurons are stable, so one simplified network stays big.  Bisect the region,
simplify on each piece (each piece's proofs hold on that piece only), and ship every piece's
network plus ONE dispatcher model that routes each input to its piece (`dispatch.py`).

* Splitting: a greedy bisection tree.  The leaf with the most ReLUs left (after simplification) is
  split next.  Strategy "unstable" bisects it along the dimension whose two halves have the fewest
  unstable ReLUs in sum by batched DeepPoly (all candidate halves in one pass, with the leaf's proved
  bounds intersected in); strategy "width" bisects the widest dimension relative to the region.
  Stop when every leaf has at most `target_relus` ReLUs or there are `max_slices` leaves.
* Reuse: a child box lies inside its parent, so the parent's proved bounds hold on it (intersected
  in) and the parent's witnesses that lie inside it are real points of it.
* Tiling: both halves share ONE float64 midpoint, so the leaves tile the region exactly;
  `check_tiling` proves it from the boxes alone (containment, disjoint interiors, exact volume).
* Every slice and the dispatcher are run against the original in onnxruntime before anything is
  written; a difference above the tolerance is a bug (ValidationError, nothing written).
"""

from __future__ import annotations

from .family import SliceFamily, certify_family, prepass_unstable, slice_model
from .manifest import (DISPATCH, MANIFEST, PLOT, build_manifest, claim_output_dir, family_summary, format_summary,
                       most_split_dims, plot_family, read_manifest, slice_file, write_family)
from .tiling import check_tiling, check_tree, dispatch_points, face_points
from .tree import (STRATEGIES, Piece, SliceOptions, build_tree, choose_dim, fewest_unstable_dim, prove_piece,
                   splittable_dims, widest_dim)
from .verify import Check, VerifyReport, verify_family

__all__ = ["DISPATCH", "MANIFEST", "PLOT", "STRATEGIES", "Check", "Piece", "SliceFamily", "SliceOptions", "VerifyReport",
           "build_manifest", "build_tree", "certify_family", "check_tiling", "check_tree", "choose_dim", "claim_output_dir",
           "dispatch_points", "face_points", "family_summary", "fewest_unstable_dim", "format_summary", "most_split_dims",
           "plot_family", "prepass_unstable", "prove_piece", "read_manifest", "slice_file", "slice_model",
           "splittable_dims", "verify_family", "widest_dim", "write_family"]
