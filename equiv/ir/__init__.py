"""The graph IR: a DAG of typed op nodes (ops.py, graph.py), ONNX import checked node by node against
onnxruntime (onnx_import.py, check.py), and convolutions as linear operators (conv.py)."""

from .graph import Graph
from .onnx_import import graph_from_onnx, load_graph

__all__ = ["Graph", "graph_from_onnx", "load_graph"]
