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

import re
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import numpy as np

from ..errors import RegionError

MAX_DNF_TERMS = 10_000        # more boxes than this in the expansion: refuse (split the spec)
MAX_DNF_STEPS = 1_000_000     # box intersections tried while expanding: refuse beyond this
MAX_DEPTH = 200               # parenthesis nesting
_PAIRWISE_PRUNE = 64          # containment pruning of intermediate unions up to this many boxes

_TOKEN = re.compile(r"""
    (?P<nl>\n)
  | (?P<ws>[^\S\n]+)
  | (?P<comment>;[^\n]*)
  | (?P<open>\()
  | (?P<close>\))
  | (?P<string>"(?:[^"]|"")*")
  | (?P<qsym>\|[^|]*\|)
  | (?P<atom>[^\s()";|]+)
  | (?P<bad>["|])
""", re.VERBOSE)
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_VAR = re.compile(r"([XY])_(0|[1-9]\d*)\Z")
_LOOKS_LIKE_VAR = re.compile(r"[XY]_\d+\Z")

_IGNORED = {"check-sat", "get-model", "set-logic", "set-info", "set-option", "exit"}
_RELATIONS = {"<=", ">=", "<", ">", "="}
_UNSUPPORTED = {"not", "=>", "ite", "distinct", "xor", "let", "forall", "exists", "!"}

TRUE = ("true",)
FALSE = ("false",)


class Sym:
    """An atom token (symbol, number, string) with the line it starts on."""

    __slots__ = ("line", "text")

    def __init__(self, text: str, line: int):
        self.text = text
        self.line = line

    def __repr__(self):
        return f"Sym({self.text!r}, line={self.line})"


class SList(list):
    """A parenthesised list of Sym / SList, with the line of its '('."""

    __slots__ = ("line",)


def _fail(path, line, what) -> RegionError:
    return RegionError(f"{path}:{line}: {what}")


def parse_sexprs(text: str, path: str = "<string>") -> list[SList]:
    """The top-level s-expressions of text; RegionError on unbalanced parentheses, stray tokens, an
    unterminated string or an empty file."""
    top: list[SList] = []
    stack: list[SList] = []
    line = 1
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "ws" or kind == "comment":
            continue
        if kind == "nl":
            line += 1
        elif kind == "open":
            node = SList()
            node.line = line
            (stack[-1] if stack else top).append(node)
            stack.append(node)
            if len(stack) > MAX_DEPTH:
                raise _fail(path, line, f"parentheses nested more than {MAX_DEPTH} deep")
        elif kind == "close":
            if not stack:
                raise _fail(path, line, "unexpected ')' with no matching '('")
            stack.pop()
        elif kind == "bad":
            what = "string" if m.group() == '"' else "quoted symbol"
            raise _fail(path, line, f"unterminated {what} (no closing {m.group()})")
        else:
            tok = m.group()
            if kind == "qsym":
                tok = tok[1:-1]
            if not stack:
                raise _fail(path, line, f"stray token '{tok}' outside any (...) form")
            stack[-1].append(Sym(tok, line))
            if kind != "atom":
                line += m.group().count("\n")
    if stack:
        raise _fail(path, stack[0].line, "'(' is never closed (missing ')')")
    if not top:
        raise _fail(path, line, "empty VNN-LIB file: no (declare-const ...) or (assert ...) forms")
    return top


def _round_up(q: Fraction) -> float:
    f = float(q)
    return float(np.nextafter(f, np.inf)) if Fraction(f) < q else f


def _round_down(q: Fraction) -> float:
    f = float(q)
    return float(np.nextafter(f, -np.inf)) if Fraction(f) > q else f


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


class _Reader:
    def __init__(self, path: str):
        self.path = path
        self.vars: dict[str, tuple[str, int]] = {}   # name -> (kind, index)
        self.decl_line: dict[str, int] = {}
        self.steps = 0
        self.conflict = None                          # first empty intersection seen: (i, lo, hi)

    def fail(self, line, what) -> RegionError:
        return _fail(self.path, line, what)

    # ---- forms -----------------------------------------------------------------------------------

    def read(self, text: str) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
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
        n = self.check_inputs()
        return n, self.boxes(self.dnf(_and(asserts)), n)

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
            missing = min(set(range(n)) - set(xs))
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
            return _and([self.atom(op, a, b, head.line) for a, b in pairwise(node[1:])])
        if op in _UNSUPPORTED:
            raise self.fail(head.line, f"'{op}' is not supported: the input region must be built from and, or "
                                       "and the comparisons <=, >=, <, >, =")
        raise self.fail(head.line, f"unknown formula operator '{op}' (expected and, or, <=, >=, <, >, =)")

    def number(self, tok: Sym) -> float:
        v = float(tok.text)
        if not np.isfinite(v):
            raise self.fail(tok.line, f"number {tok.text} is out of range")
        return v

    def atom(self, op: str, a, b, line: int) -> tuple:
        # fast path: (op X_i NUMBER) or (op NUMBER X_i), the bulk of every real spec
        if isinstance(a, Sym) and isinstance(b, Sym):
            va, vb = self.vars.get(a.text), self.vars.get(b.text)
            if va is not None and va[0] == "X" and vb is None and _NUMBER.match(b.text):
                i, v, var_left = va[1], self.number(b), True
            elif vb is not None and vb[0] == "X" and va is None and _NUMBER.match(a.text):
                i, v, var_left = vb[1], self.number(a), False
            else:
                i = None
            if i is not None:
                if op == "=":
                    return ("b", i, v, v)
                upper = (op in ("<=", "<")) == var_left
                return ("b", i, -np.inf, v) if upper else ("b", i, v, np.inf)
        # general path: both sides to exact linear forms, moved to one side: sum(c_k v_k) + c0 REL 0
        ca, ka = self.term(a)
        cb, kb = self.term(b)
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
            raise self.fail(line, f"constraint mixes inputs and outputs ({_names(xs)} with "
                                  f"{', '.join(f'Y_{j}' for j in ys[:5])}): equiv reads only the input region, "
                                  "given by constraints on the X variables alone")
        if not xs:
            return TRUE          # output constraint: not part of the input region (a relaxation)
        if len(xs) > 1:
            raise self.fail(line, f"constraint couples several inputs ({_names(xs)}): equiv works on boxes, so "
                                  "every input constraint must bound a single input")
        i = xs[0]
        c = coeffs[("X", i)]
        bound = -const / c
        lo, hi = _round_down(bound), _round_up(bound)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise self.fail(line, f"the bound on X_{i} is out of range")
        if op == "=":
            return ("b", i, lo, hi)
        return ("b", i, -np.inf, hi) if c > 0 else ("b", i, lo, np.inf)

    def term(self, node) -> tuple[dict, Fraction]:
        """A linear form: ({(kind, index): coefficient}, constant), exact."""
        if isinstance(node, Sym):
            t = node.text
            if _NUMBER.match(t):
                return {}, Fraction(self.number(node))
            var = self.vars.get(t)
            if var is None:
                if _LOOKS_LIKE_VAR.match(t):
                    raise self.fail(node.line, f"undeclared variable '{t}' (declare it with "
                                               f"(declare-const {t} Real) before use)")
                raise self.fail(node.line, f"'{t}' is neither a number nor a declared variable")
            return {var: Fraction(1)}, Fraction(0)
        if not node or not isinstance(node[0], Sym):
            raise self.fail(node.line, "expected a term: a number, a variable or (+ ...), (- ...), (* ...), (/ ...)")
        op, line = node[0].text, node[0].line
        if op not in ("+", "-", "*", "/"):
            raise self.fail(line, f"unsupported term operator '{op}' (expected a number, a variable, +, -, * or /)")
        if len(node) < 2 or (op == "/" and len(node) < 3):
            raise self.fail(line, f"'{op}' has too few arguments")
        args = [self.term(c) for c in node[1:]]
        if op == "+":
            return _lin_sum(args, [1] * len(args))
        if op == "-":
            return _lin_sum(args, [-1]) if len(args) == 1 else _lin_sum(args, [1] + [-1] * (len(args) - 1))
        if op == "*":
            varying = [k for k, (c, _) in enumerate(args) if c]
            if len(varying) > 1:
                raise self.fail(line, "nonlinear term: a product of two or more non-constant factors")
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
                raise self.fail(line, "division by a non-constant term (nonlinear)")
            if kd == 0:
                raise self.fail(line, "division by zero")
            c, k0 = {v: x / kd for v, x in c.items()}, k0 / kd
        return c, k0

    # ---- disjunctive normal form -----------------------------------------------------------------

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
                raise RegionError(f"{self.path}: the input region is unbounded: {'; '.join(parts)}{where}")
        return [(L[k].copy(), H[k].copy()) for k in range(L.shape[0])]


def _lin_sum(args, signs) -> tuple[dict, Fraction]:
    c: dict = {}
    k0 = Fraction(0)
    for (ca, ka), s in zip(args, signs):
        for v, x in ca.items():
            c[v] = c.get(v, 0) + s * x
        k0 += s * ka
    return c, k0


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


def read_text(text: str, path: str = "<string>") -> list[tuple[np.ndarray, np.ndarray]]:
    """The input region of VNN-LIB text as a union of boxes [(lo, hi), ...]; RegionError when malformed."""
    return _Reader(str(path)).read(text)[1]


def read_file(path: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The input region of a VNN-LIB file as a union of boxes [(lo, hi), ...]; RegionError when malformed."""
    p = Path(path)
    if not p.is_file():
        raise RegionError(f"VNN-LIB file not found: {path}")
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise RegionError(f"cannot read VNN-LIB file {path}: {exc}") from exc
    return read_text(text, str(path))
