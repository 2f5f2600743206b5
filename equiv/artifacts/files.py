"""Every file equiv writes goes through here: output paths checked before any work, atomic writes, no strays.

A certifying tool is trusted with people's only copy of a model, so an output path is refused (exit 2,
nothing written) when it resolves -- through symbolic links, `..` or a hard link -- to an input of the
run or to another output of the same run, or when it is not a regular file or a new name in an
existing folder (a device such as /dev/null, a pipe, a folder).  Writes go to a temporary file in the
target's folder that is renamed over the target, never over anything but a regular file, and the
temporary file is removed on every error.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputFileError


def default_file_mode() -> int:
    """0666 minus the process umask: the mode `open()` would have given a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _identity(path: Path):
    """(device, inode) of an existing file, following links; None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


@dataclass
class OutputGuard:
    """The inputs and outputs of one run; `claim` checks an output path before any work is done."""

    inputs: list = field(default_factory=list)
    _claimed: dict = field(default_factory=dict)     # resolved path -> what

    def __post_init__(self):
        self.inputs = [Path(p) for p in self.inputs if p is not None]

    def _same_as(self, real: Path, ident) -> str | None:
        for src in self.inputs:
            if src.resolve() == real or (ident is not None and _identity(src) == ident):
                return f"the input file {src}"
        for other, what in self._claimed.items():
            if other == real or (ident is not None and _identity(other) == ident):
                return f"the {what} ({other})"
        return None

    def claim(self, path, what: str) -> Path:
        """Check that `path` may receive the run's `what` (e.g. "simplified model"); returns it as a Path."""
        p = Path(path)
        if str(path).strip() == "":
            raise InputFileError(f"the {what} path is empty")
        if str(path).strip() == "-":     # (not stdout: a file named '-' appeared silently)
            raise InputFileError(f"the {what} path '-' is not read as stdout: give a file name"
                                 + (" (--json prints the report on stdout)" if what == "report" else ""))
        if p.is_symlink():
            raise InputFileError(f"refusing to write the {what} to {p}: it is a symbolic link; give the real path")
        real = p.resolve()
        ident = _identity(real)
        clash = self._same_as(real, ident)
        if clash:
            raise InputFileError(f"refusing to write the {what} to {p}: that is {clash}; choose another path")
        if real.exists():
            mode = os.stat(real).st_mode
            if stat.S_ISDIR(mode):
                raise InputFileError(f"refusing to write the {what} to {p}: it is a folder; give a file name")
            if not stat.S_ISREG(mode):
                raise InputFileError(f"refusing to write the {what} to {p}: it is not a regular file "
                                     "(a device, pipe or socket); equiv writes only regular files")
        parent = real.parent
        if not parent.is_dir():
            raise InputFileError(f"cannot write the {what} to {p}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputFileError(f"cannot write the {what} to {p}: folder {parent} is not writable")
        self._claimed[real] = what
        return p



# ---- atomic writes ------------------------------------------------------------------------------

def write_bytes_atomic(path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, renamed over a regular file
    (or a new name) only; the temporary file never survives an error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())   # mkstemp makes 0600; a written file gets the usual mode
        _check_replaceable(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return path


def _check_replaceable(path: Path) -> None:
    """Renaming over anything but a regular file (a device, a folder, a link) would destroy it: refuse."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(f"refusing to replace {path}: it is not a regular file")


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(data, path) -> Path:
    """Write JSON atomically, so a reader never sees half a report."""
    return write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def save_onnx_atomic(model, path) -> Path:
    return write_bytes_atomic(path, model.SerializeToString())


def save_figure_atomic(fig, path) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return write_bytes_atomic(path, buf.getvalue())


# ---- output folders -----------------------------------------------------------------------------

def claim_family_dir(out, guard: OutputGuard, force: bool, is_equiv_made, known_files) -> Path:
    """Check a folder for a family of files: it must be new, empty, or made by equiv (then only with force,
    and only when it holds nothing but equiv's files).  `is_equiv_made(folder)` and `known_files(folder)`
    (the names equiv wrote there) come from the caller, who knows the manifest format."""
    out = Path(out)
    if str(out).strip() == "":
        raise InputFileError("the output folder path is empty")
    if out.is_symlink():
        raise InputFileError(f"refusing to write into {out}: it is a symbolic link; give the real path")
    real = out.resolve()
    if real.exists() and not real.is_dir():
        raise InputFileError(f"output folder {out} exists and is not a folder")
    if not real.parent.is_dir():
        raise InputFileError(f"cannot create {out}: folder {real.parent} does not exist")
    if not os.access(real.parent, os.W_OK | os.X_OK):
        raise InputFileError(f"cannot create {out}: folder {real.parent} is not writable")
    for src in guard.inputs:
        if src.resolve() == real or real in src.resolve().parents:
            raise InputFileError(f"refusing to write into {out}: it holds the input file {src}; choose another folder")
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise InputFileError(f"refusing to write into {out}: it is (or holds) the working directory, which the "
                             "family would replace; choose a new folder")
    if real.exists() and any(real.iterdir()):
        if not is_equiv_made(real):
            raise InputFileError(f"refusing to write into {out}: the folder is not empty and was not made by equiv "
                                 "(no manifest); choose a new or empty folder")
        if not force:
            raise InputFileError(f"{out} already holds a family made by equiv; choose another folder or pass "
                                 "--force to replace it")
        extra = sorted(p.name for p in real.iterdir() if p.name not in known_files(real))
        if extra:
            raise InputFileError(f"refusing to replace {out}: it holds files equiv did not make "
                                 f"({', '.join(extra[:5])}); move them or choose another folder")
    guard._claimed[real] = "output folder"
    return out


def replace_dir_atomic(out, fill, may_replace=None) -> Path:
    """Build a folder with `fill(staging_path)` next to `out`, then swap it in: a reader sees the old
    folder or the complete new one, and a failure leaves `out` as it was and no staging folder behind.
    may_replace(folder): None when the folder found at `out` at swap time may be replaced, else why not (another
    run may have written there since the folder was claimed); an existing folder's mode is kept."""
    out = Path(out)
    real = out.resolve()
    staging = Path(tempfile.mkdtemp(prefix=f".{real.name}.", suffix=".new", dir=str(real.parent)))
    old = None
    try:
        os.chmod(staging, _dir_mode())    # mkdtemp makes 0700; the family folder gets the usual mode
        fill(staging)
        if real.exists():
            why = may_replace(real) if may_replace is not None else None
            if why:
                raise InputFileError(f"refusing to replace {out}: {why}; nothing was written")
            os.chmod(staging, os.stat(real).st_mode & 0o7777)
            old = Path(tempfile.mkdtemp(prefix=f".{real.name}.", suffix=".old", dir=str(real.parent)))
            os.rmdir(old)
            os.rename(real, old)
        os.rename(staging, real)
    except BaseException:
        if old is not None and not real.exists():
            os.rename(old, real)
            old = None
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def _dir_mode() -> int:
    """0777 minus the umask: the mode `mkdir` would have given a new folder."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask
