"""S-expressions of VNN-LIB text: tokens with their lines, nesting checked."""

from __future__ import annotations

import re

from ...errors import RegionError

MAX_DEPTH = 200               # parenthesis nesting

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
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z", re.ASCII)   # ASCII: no full-width digits
_VAR = re.compile(r"([XY])_(0|[1-9]\d*)\Z")
_LOOKS_LIKE_VAR = re.compile(r"[XY]_\d+\Z")

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
                raise _fail(path, line, f"stray token {tok!r} outside any (...) form")
            stack[-1].append(Sym(tok, line))
            if kind != "atom":
                line += m.group().count("\n")
    if stack:
        raise _fail(path, stack[0].line, "'(' is never closed (missing ')')")
    if not top:
        raise _fail(path, line, "empty VNN-LIB file: no (declare-const ...) or (assert ...) forms")
    return top
