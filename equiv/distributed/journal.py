"""An append-only journal of finished answers, so a killed run resumes without redoing its proofs.

File format: text lines `<json>\t<sha256 of the json, first 16 hex>`.  The first line is a header holding
the hash of the run's inputs (model sha256, region, options); the others hold one answer each, under the
content key of its query.  Every append is flushed and fsync'd before the run goes on, so an answer in
the journal survives a kill.  On opening:
- no file (or an empty one): a new journal with this header;
- a header with other inputs: refused (`JournalMismatchError`, exit 2) rather than mixed;
- a last line without its newline or with a wrong checksum (a write torn by the kill): dropped (and cut
  off the file), the run redoes that answer; a bad line elsewhere: refused as corrupt.
An answer is reused only under the key of a query with the same content (see `work.NeuronQuery.key`);
failed tasks are never journalled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import EquivError

# bumped whenever a journalled answer's meaning changes, so answers of older code are never replayed as proofs
# (2: the LP bounds' reduced-cost rounding and the MILP tolerance margins of stop 47; format 1 answers may be
# unsound on ill-conditioned nets)
FORMAT = 2


class JournalMismatchError(EquivError):
    """The journal holds answers of a run with other inputs, or is corrupt."""

    exit_code = 2


def inputs_hash(description: dict) -> str:
    """sha256 of the canonical JSON of the run's inputs."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def _line(obj: dict) -> bytes:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return f"{text}\t{hashlib.sha256(text.encode()).hexdigest()[:16]}\n".encode()


def _parse(raw: bytes):
    """The object of a complete, intact line, else None."""
    try:
        text, crc = raw.decode().rstrip("\n").rsplit("\t", 1)
    except (UnicodeDecodeError, ValueError):
        return None
    if hashlib.sha256(text.encode()).hexdigest()[:16] != crc:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


_HEADER_START = b'{"describe":'          # a header line's first bytes (keys sorted)


def _open_locked(path: Path):
    """The journal file opened for reading and appending (created if missing) and locked for this run: a second
    run on the same journal would interleave its lines with ours and corrupt it, so it is refused (exit 2)."""
    import fcntl
    if path.exists() and not path.is_file():
        raise JournalMismatchError(f"journal {path} is not a regular file (a directory, pipe or device); choose a "
                                   "file path")
    fh = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise JournalMismatchError(f"journal {path} is in use by another equiv run (it is locked); wait for that run "
                                   "or choose another file") from None
    return fh


def _differences(header: dict, description: dict) -> str:
    """Which of the run's inputs differ from the journal's, e.g. "differs in: time_limit 2 (journal) vs 5"."""
    old = header.get("describe")
    if not isinstance(old, dict):
        return "model, region or options differ"
    keys = sorted(k for k in set(old) | set(description)
                  if json.dumps(old.get(k), sort_keys=True, default=str)
                  != json.dumps(description.get(k), sort_keys=True, default=str))
    if not keys:
        return "model, region or options differ"
    shown = ["{} {} (journal) vs {}".format(k, *_short(old.get(k), description.get(k))) for k in keys[:4]]
    return "differs in: " + "; ".join(shown) + ("; ..." if len(keys) > 4 else "")


def _short(a, b, width: int = 40) -> tuple[str, str]:
    """Two values as JSON texts of at most about `width` characters, cut around the first place they differ (two
    long regions differ somewhere in the middle: their common start says nothing)."""
    ta, tb = (json.dumps(v, sort_keys=True, default=str) for v in (a, b))
    if len(ta) <= width and len(tb) <= width:
        return ta, tb
    at = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
    start = max(0, at - width // 3)

    def cut(t):
        return ("..." if start else "") + t[start:start + width] + ("..." if start + width < len(t) else "")
    return cut(ta), cut(tb)


class Journal:
    """Answers of earlier runs with the same inputs (`get`), and `put` for new ones."""

    def __init__(self, path: str | Path, description: dict):
        self.path = Path(path)
        self.inputs = inputs_hash(description)
        self.answers: dict[str, dict] = {}
        self.reused = 0
        self.written = 0
        self.dropped_torn = False
        header = {"equiv_journal": FORMAT, "inputs": self.inputs, "describe": description}
        self._fh = _open_locked(self.path)
        try:
            self._load(header, description)
        except BaseException:
            self._fh.close()
            raise

    def _load(self, header: dict, description: dict):
        data = self._fh.read()
        if not data or (b"\n" not in data and data.startswith(_HEADER_START) and _parse(data + b"\n") is None):
            # new, or only a header torn by a kill during the first write: start afresh
            self.dropped_torn = bool(data)
            self._fh.seek(0)
            self._fh.truncate(0)
            self._append(header)
            return
        lines = data.split(b"\n")
        tail = lines.pop()                 # b"" when the file ends with a newline, else a torn line
        keep = len(data) - len(tail)
        objs = []
        for n, raw in enumerate(lines):
            obj = _parse(raw + b"\n")
            if obj is None:
                if n == len(lines) - 1 and not tail:     # the last full line is torn: drop it
                    keep -= len(raw) + 1
                    self.dropped_torn = True
                    break
                raise JournalMismatchError(f"journal {self.path} is corrupt at line {n + 1} (bad checksum); "
                                           "move it away to start afresh")
            objs.append(obj)
        self.dropped_torn |= bool(tail)
        version = objs[0].get("equiv_journal") if objs else None
        if isinstance(version, int) and version != FORMAT:
            raise JournalMismatchError(f"journal {self.path} was written by another version of equiv (journal format "
                                       f"{version}; this one reads {FORMAT}): its answers cannot be reused; move it "
                                       "away or choose another file")
        if version != FORMAT:
            raise JournalMismatchError(f"{self.path} is not an equiv journal; move it away or choose another file")
        if objs[0].get("inputs") != self.inputs:
            raise JournalMismatchError(
                f"journal {self.path} belongs to a run with other inputs ({_differences(objs[0], description)}); "
                "its answers cannot be reused: move it away or choose another file")
        for obj in objs[1:]:
            self.answers[obj["key"]] = obj["answer"]
        self._fh.truncate(keep)            # cut a torn tail so the next line starts clean
        self._fh.seek(keep)

    def _append(self, obj: dict):
        try:
            self._fh.write(_line(obj))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:      # a full disk, a file-size limit: the environment's failure, not equiv's
            from ..errors import InputFileError
            raise InputFileError(f"cannot write --journal {self.path}: {exc.strerror or exc}; its complete lines "
                                 "stay valid for a rerun") from None

    def get(self, key: str):
        """The journalled answer (a dict) of the query with this content key, or None."""
        a = self.answers.get(key)
        if a is not None:
            self.reused += 1
        return a

    def put(self, key: str, answer: dict):
        """Journal one finished answer (durably, before returning)."""
        self.answers[key] = answer
        self._append({"key": key, "answer": answer})
        self.written += 1

    def close(self):
        try:
            self._fh.close()
        except OSError:         # (a write that failed already said so; every complete line was flushed)
            pass

    def stats(self) -> dict:
        return {"path": str(self.path), "answers_reused": self.reused, "answers_written": self.written,
                "torn_line_dropped": self.dropped_torn}
