"""A strict VNN-LIB reader: the input region of a spec as a union of boxes.

The grammar read (a subset of SMT-LIB 2 over reals, as VNN-LIB uses it):

    file     := form*                       ; ';' starts a comment that runs to the end of the line
    form     := (declare-const NAME Real)   ; NAME is X_i (input) or Y_i (output)
              | (assert F)
              | (check-sat) | (get-model) | (exit) | (set-logic ...) | (set-info ...) | (set-option ...)
    F        := (and F*) | (or F*) | true | false
              | (<= T T T*) | (>= T T T*) | (< T T T*) | (> T T T*) | (= T T T*)
    T        := NUMBER | NAME | (+ T+) | (- T) | (- T T+) | (* T+) | (/ T C+)

Numbers may carry a sign and an exponent (-0.5, 1e-3, +2); each literal is read as the nearest
float64. Products may have at most one non-constant factor and divisors must be nonzero constants,
so every atom is linear; its two sides are combined exactly (rational arithmetic) and a bound that
is not a float64 is rounded outwards.

The input region is the set of inputs X satisfying the conjunction of all asserts, where every atom
that mentions only Y variables is replaced by *true*. Formulas only use and/or, so this is a
relaxation: the region read is a superset of the spec's input set, never a subset (sound). Strict
atoms (< and >) are read as closed, which is also a superset. Every atom over inputs must bound a
single input (equiv works on boxes); the formula is expanded into a disjunctive normal form, i.e. a
union of boxes, simplified on the way (true/false propagation, empty boxes dropped, duplicates and
boxes contained in another box of the union dropped).

Anything else is refused with a RegionError "PATH:LINE: what is wrong", never skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import RegionError
from .boxes import MAX_DNF_STEPS, MAX_DNF_TERMS, Expander
from .formula import FALSE, TRUE, FormulaReader
from .sexpr import MAX_DEPTH, SList, Sym, parse_sexprs

__all__ = ["MAX_DEPTH", "MAX_DNF_STEPS", "MAX_DNF_TERMS", "TRUE", "FALSE", "SList", "Sym", "parse_sexprs",
           "read_text", "read_file"]


def read_text(text: str, path: str = "<string>") -> list[tuple[np.ndarray, np.ndarray]]:
    """The input region of VNN-LIB text as a union of boxes [(lo, hi), ...]; RegionError when malformed."""
    n, formula = FormulaReader(str(path)).read(text)
    ex = Expander(str(path))
    return ex.boxes(ex.dnf(formula), n)


def read_file(path: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The input region of a VNN-LIB file as a union of boxes [(lo, hi), ...]; RegionError when malformed."""
    p = Path(path)
    if not p.exists():
        raise RegionError(f"VNN-LIB file not found: {path}")
    if p.is_dir():
        raise RegionError(f"VNN-LIB file {path} is a directory: give the path of a .vnnlib file")
    try:
        text = p.read_text(encoding="utf-8-sig", errors="replace")     # (-sig: a byte-order mark is no token)
    except OSError as exc:
        raise RegionError(f"cannot read VNN-LIB file {path}: {exc}") from exc
    return read_text(text, str(path))
