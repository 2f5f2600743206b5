"""VNN-LIB forms and formulas: declarations, and/or trees of single-input bounds, exact linear terms."""

from __future__ import annotations

import re
from fractions import Fraction
from itertools import pairwise

import numpy as np

from ...errors import RegionError
from .sexpr import _LOOKS_LIKE_VAR, _NUMBER, _VAR, SList, Sym, _fail, parse_sexprs

_IGNORED = {"check-sat", "get-model", "set-logic", "set-info", "set-option", "exit"}
_RELATIONS = {"<=", ">=", "<", ">", "="}
_UNSUPPORTED = {"not", "=>", "ite", "distinct", "xor", "let", "forall", "exists", "!"}

_EXPONENT = re.compile(r"[eE]([+-]?\d+)\Z")
MAX_EXPONENT = 400          # an exact 10**e beyond float64's range only costs time and memory
MAX_DIGITS = 1000

TRUE = ("true",)
FALSE = ("false",)


def _float(q: Fraction) -> float:
    """The nearest float64, or +-inf beyond float64's range (the caller refuses it)."""
    try:
        return float(q)
    except OverflowError:
        return float(np.inf) if q > 0 else float(-np.inf)


def _round_up(q: Fraction) -> float:
    f = _float(q)
    return float(np.nextafter(f, np.inf)) if np.isfinite(f) and Fraction(f) < q else f


def _round_down(q: Fraction) -> float:
    f = _float(q)
    return float(np.nextafter(f, -np.inf)) if np.isfinite(f) and Fraction(f) > q else f


def _and(children) -> tuple:
    out = []
    for c in children:
        if c is TRUE:
            continue
        if c is FALSE:
            return FALSE
        if c[0] == "and":
            out.extend(c[1])
        else:
            out.append(c)
    if not out:
        return TRUE
    return out[0] if len(out) == 1 else ("and", out)


def _or(children) -> tuple:
    out = []
    for c in children:
        if c is FALSE:
            continue
        if c is TRUE:
            return TRUE
        if c[0] == "or":
            out.extend(c[1])
        else:
            out.append(c)
    if not out:
        return FALSE
    return out[0] if len(out) == 1 else ("or", out)


def _names(idx) -> str:
    names = [f"X_{i}" for i in idx]
    if len(names) > 10:
        return ", ".join(names[:10]) + f" and {len(names) - 10} more"
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


class FormulaReader:
    """The forms of a file: declared variables and the asserted formula (over input bounds)."""

    def __init__(self, path: str):
        self.path = path
        self.vars: dict[str, tuple[str, int]] = {}   # name -> (kind, index)
        self.decl_line: dict[str, int] = {}

    def fail(self, line, what) -> RegionError:
        return _fail(self.path, line, what)

    # ---- forms -----------------------------------------------------------------------------------

    def read(self, text: str) -> tuple[int, tuple]:
        """(number of inputs, the conjunction of the asserts)."""
        asserts = []
        for form in parse_sexprs(text, self.path):
            if not form or not isinstance(form[0], Sym):
                raise self.fail(form.line, "expected a command such as (declare-const X_0 Real) or (assert ...)")
            cmd = form[0].text
            if cmd == "declare-const":
                self.declare(form)
            elif cmd == "assert":
                if len(form) != 2:
                    raise self.fail(form.line, f"assert takes exactly one formula, got {len(form) - 1}")
                asserts.append(self.formula(form[1]))
            elif cmd not in _IGNORED:
                raise self.fail(form.line, f"unknown or unsupported command '{cmd}' (VNN-LIB uses declare-const "
                                           "and assert)")
        return self.check_inputs(), _and(asserts)

    def declare(self, form: SList):
        if len(form) != 3 or not all(isinstance(t, Sym) for t in form[1:]):
            raise self.fail(form.line, "expected (declare-const NAME Real)")
        name, sort = form[1].text, form[2].text
        m = _VAR.match(name)
        if not m:
            raise self.fail(form[1].line, f"cannot declare '{name}': VNN-LIB variables are X_i (inputs) or "
                                          "Y_i (outputs), i = 0, 1, 2, ...")
        if sort != "Real":
            raise self.fail(form[2].line, f"'{name}' is declared with sort '{sort}'; VNN-LIB variables are Real")
        if name in self.vars:
            raise self.fail(form.line, f"'{name}' is declared twice (first on line {self.decl_line[name]})")
        self.vars[name] = (m.group(1), int(m.group(2)))
        self.decl_line[name] = form.line

    def check_inputs(self) -> int:
        xs = sorted(i for kind, i in self.vars.values() if kind == "X")
        if not xs:
            raise RegionError(f"{self.path}: no input variables (declare-const X_i Real) found")
        n = xs[-1] + 1
        if len(xs) != n:
            missing = next(i for i, x in enumerate(xs) if x != i)       # xs: sorted, distinct
            raise self.fail(self.decl_line[f"X_{n - 1}"],
                            f"X_{n - 1} is declared but X_{missing} is not: the inputs must be X_0 .. X_{n - 1}")
        return n

    # ---- formulas --------------------------------------------------------------------------------

    def formula(self, node) -> tuple:
        if isinstance(node, Sym):
            if node.text == "true":
                return TRUE
            if node.text == "false":
                return FALSE
            raise self.fail(node.line, f"expected a formula such as (<= X_0 1), got '{node.text}'")
        if not node:
            raise self.fail(node.line, "empty '()' where a formula is expected")
        head = node[0]
        if not isinstance(head, Sym):
            raise self.fail(node.line, "expected a formula operator (and, or, <=, >=, <, >, =), got a list")
        op = head.text
        if op == "and":
            return _and([self.formula(c) for c in node[1:]])
        if op == "or":
            return _or([self.formula(c) for c in node[1:]])
        if op in _RELATIONS:
            if len(node) < 3:
                raise self.fail(head.line, f"'{op}' needs at least two arguments")
            return _and([atom(self, op, a, b, head.line) for a, b in pairwise(node[1:])])
        if op in _UNSUPPORTED:
            raise self.fail(head.line, f"'{op}' is not supported: the input region must be built from and, or "
                                       "and the comparisons <=, >=, <, >, =")
        raise self.fail(head.line, f"unknown formula operator '{op}' (expected and, or, <=, >=, <, >, =)")

    def number(self, tok: Sym) -> float:
        v = float(tok.text)
        if not np.isfinite(v):
            raise self.fail(tok.line, f"number {tok.text} is out of range")
        return v

    def exact(self, tok: Sym) -> Fraction:
        """The literal's exact rational value (a decimal such as 0.69 is not a float64): derived bounds are
        rounded outward once, from exact values, so the box holds every real point of the constraint."""
        self.number(tok)
        m = _EXPONENT.search(tok.text)
        if (m and abs(int(m.group(1))) > MAX_EXPONENT) or len(tok.text) > MAX_DIGITS:
            raise self.fail(tok.line, f"number {tok.text[:40]} is out of range for an exact term (exponent beyond "
                                      f"+-{MAX_EXPONENT} or more than {MAX_DIGITS} characters)")
        return Fraction(tok.text)


def atom(r: FormulaReader, op: str, a, b, line: int) -> tuple:
    """One comparison as a bound on a single input, TRUE / FALSE, or a RegionError."""
    # fast path: (op X_i NUMBER) or (op NUMBER X_i), the bulk of every real spec
    if isinstance(a, Sym) and isinstance(b, Sym):
        va, vb = r.vars.get(a.text), r.vars.get(b.text)
        if va is not None and va[0] == "X" and vb is None and _NUMBER.match(b.text):
            i, v, var_left = va[1], r.number(b), True
        elif vb is not None and vb[0] == "X" and va is None and _NUMBER.match(a.text):
            i, v, var_left = vb[1], r.number(a), False
        else:
            i = None
        if i is not None:
            if op == "=":
                return ("b", i, v, v)
            upper = (op in ("<=", "<")) == var_left
            return ("b", i, -np.inf, v) if upper else ("b", i, v, np.inf)
    # general path: both sides to exact linear forms, moved to one side: sum(c_k v_k) + c0 REL 0
    ca, ka = term(r, a)
    cb, kb = term(r, b)
    coeffs = dict(ca)
    for v, c in cb.items():
        coeffs[v] = coeffs.get(v, 0) - c
    coeffs = {v: c for v, c in coeffs.items() if c != 0}
    const = ka - kb
    if op in (">=", ">"):
        coeffs = {v: -c for v, c in coeffs.items()}
        const = -const
    # now: sum(coeffs) + const <= 0   (or == 0 for '=')
    xs = sorted(i for kind, i in coeffs if kind == "X")
    ys = sorted(i for kind, i in coeffs if kind == "Y")
    if not coeffs:
        return TRUE if (const == 0 if op == "=" else const <= 0) else FALSE
    if xs and ys:
        raise r.fail(line, f"constraint mixes inputs and outputs ({_names(xs)} with "
                              f"{', '.join(f'Y_{j}' for j in ys[:5])}): equiv reads only the input region, "
                              "given by constraints on the X variables alone")
    if not xs:
        return TRUE          # output constraint: not part of the input region (a relaxation)
    if len(xs) > 1:
        raise r.fail(line, f"constraint couples several inputs ({_names(xs)}): equiv works on boxes, so "
                              "every input constraint must bound a single input")
    i = xs[0]
    c = coeffs[("X", i)]
    bound = -const / c
    lo, hi = _round_down(bound), _round_up(bound)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise r.fail(line, f"the bound on X_{i} is out of range")
    if op == "=":
        return ("b", i, lo, hi)
    return ("b", i, -np.inf, hi) if c > 0 else ("b", i, lo, np.inf)


def term(r: FormulaReader, node) -> tuple[dict, Fraction]:
    """A linear form: ({(kind, index): coefficient}, constant), exact."""
    if isinstance(node, Sym):
        t = node.text
        if _NUMBER.match(t):
            return {}, r.exact(node)
        var = r.vars.get(t)
        if var is None:
            if _LOOKS_LIKE_VAR.match(t):
                raise r.fail(node.line, f"undeclared variable '{t}' (declare it with "
                                           f"(declare-const {t} Real) before use)")
            raise r.fail(node.line, f"'{t}' is neither a number nor a declared variable")
        return {var: Fraction(1)}, Fraction(0)
    if not node or not isinstance(node[0], Sym):
        raise r.fail(node.line, "expected a term: a number, a variable or (+ ...), (- ...), (* ...), (/ ...)")
    op, line = node[0].text, node[0].line
    if op not in ("+", "-", "*", "/"):
        raise r.fail(line, f"unsupported term operator '{op}' (expected a number, a variable, +, -, * or /)")
    if len(node) < 2 or (op == "/" and len(node) < 3):
        raise r.fail(line, f"'{op}' has too few arguments")
    args = [term(r, c) for c in node[1:]]
    if op == "+":
        return _lin_sum(args, [1] * len(args))
    if op == "-":
        return _lin_sum(args, [-1]) if len(args) == 1 else _lin_sum(args, [1] + [-1] * (len(args) - 1))
    if op == "*":
        varying = [k for k, (c, _) in enumerate(args) if c]
        if len(varying) > 1:
            raise r.fail(line, "nonlinear term: a product of two or more non-constant factors")
        scale = Fraction(1)
        for k, (_, c0) in enumerate(args):
            if k not in varying:
                scale *= c0
        if not varying:
            return {}, scale
        c, k0 = args[varying[0]]
        return {v: x * scale for v, x in c.items()}, k0 * scale
    c, k0 = args[0]                                   # "/"
    for cd, kd in args[1:]:
        if cd:
            raise r.fail(line, "division by a non-constant term (nonlinear)")
        if kd == 0:
            raise r.fail(line, "division by zero")
        c, k0 = {v: x / kd for v, x in c.items()}, k0 / kd
    return c, k0


def _lin_sum(args, signs) -> tuple[dict, Fraction]:
    c: dict = {}
    k0 = Fraction(0)
    for (ca, ka), s in zip(args, signs):
        for v, x in ca.items():
            c[v] = c.get(v, 0) + s * x
        k0 += s * ka
    return c, k0
