"""equiv: make ReLU networks provably smaller (sound bounds, LP/MILP proofs, equivalent ONNX)."""

__version__ = "0.1.0"
