"""The subcommands, one module each: each reads its parsed arguments, calls the API and writes its result
to `out` (a `cli.ResultStream`), returning the exit code."""

from .bench import cmd_bench
from .bounds import cmd_bounds
from .check import cmd_check
from .compress import cmd_compress
from .simplify import cmd_simplify
from .slice import cmd_slice

COMMANDS = {"simplify": cmd_simplify, "bounds": cmd_bounds, "check": cmd_check, "slice": cmd_slice, "bench": cmd_bench,
            "compress": cmd_compress}

__all__ = ["COMMANDS"]
