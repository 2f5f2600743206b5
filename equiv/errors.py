"""Errors a user can cause, each with the CLI exit code it maps to (2 = bad input)."""


class EquivError(Exception):
    """Base class: a clear message for the user and an exit code."""

    exit_code = 2


class UnsupportedModelError(EquivError):
    """The ONNX model uses an operator or structure equiv cannot represent exactly."""


class RegionError(EquivError):
    """The input region is missing, malformed, unbounded, empty, or of the wrong dimension."""


class InputFileError(EquivError):
    """A file cannot be read, or an output would overwrite an input."""


class SolverUnavailableError(EquivError):
    """The requested solver backend is not installed (names the pip extra to install)."""


class ValidationError(EquivError):
    """A simplified model disagrees with the original beyond tolerance: a bug, never silenced."""

    exit_code = 1


class ImportMismatchError(EquivError):
    """equiv's import of a model disagrees with onnxruntime on one of its tensors: a bug in equiv."""

    exit_code = 4
