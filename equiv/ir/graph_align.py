"""Read back a graph equiv wrote as the graph it was written from: the file's ops (with their float32
parameters) under the in-memory graph's tensor names, so `ir.pair_graph` can pair them with the original.

Writing and reading an ONNX file changes a graph's form but not its function: tensors are renamed, a
dense layer with a bias comes back as a bias-free product and an Add, an all-linear masked ReLU as a Mul
by its 0/1 mask, an identity as nothing.  `align_to` undoes exactly these changes, matching nodes by
position in the DAG (same arguments, same op type and shape); anything else is a StructureError.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import ops
from .graph import Graph
from .pair_graph import StructureError


def is_identity(op) -> bool:
    """An op that returns its input unchanged (how Identity, a zero Add or a Mul by 1 read back)."""
    if isinstance(op, ops.Reshape):
        return tuple(op.in_shape) == tuple(op.shape)
    if isinstance(op, ops.Shift):
        return op.bias is None or not np.any(op.bias)
    if isinstance(op, ops.Scale):
        return (op.bias is None or not np.any(op.bias)) and bool(np.all(np.asarray(op.s) == 1))
    if isinstance(op, ops.MaskedRelu):
        return not np.any(op.relu_mask) and bool(np.all(op.linear_mask))
    return False


def float32_identity(op):
    """The identity op that a Scale or Shift becomes once its constants are rounded to float32 (a slope of
    1 - 1e-9 is 1.0 in the file, which reads back as no node), else None."""
    if isinstance(op, (ops.Scale, ops.Shift)):
        s32 = np.asarray(getattr(op, "s", 1.0), np.float64).astype(np.float32)
        b32 = None if op.bias is None else np.asarray(op.bias, np.float64).astype(np.float32)
        if np.all(s32 == 1) and (b32 is None or not np.any(b32)):       # (the same type: pairs stay aligned)
            return dataclasses.replace(op, s=np.ones_like(s32, np.float64), bias=None) if isinstance(op, ops.Scale) \
                else dataclasses.replace(op, bias=None)
    return None


def normalised(g: Graph) -> Graph:
    """g without identity nodes (outputs kept), and each Shift folded into the bias-free Dense, Conv or Pad that
    only it reads (how a dense layer with a bias reads back, and a Pad holding a Concat's constants)."""
    alias, nodes = {}, {}
    users = {n: len(list(g.dag.successors(n))) for n in g.order}
    for n in g.order:
        op, args = g.op(n), [alias.get(a, a) for a in g.args(n)]
        if op.kind == "linear" and len(args) == 1 and n not in g.outputs and is_identity(op):
            alias[n] = args[0]
            continue
        if isinstance(op, ops.Shift) and len(args) == 1 and op.bias is not None and args[0] in nodes:
            x = args[0]
            xop, xargs = nodes[x]
            if isinstance(xop, (ops.Dense, ops.Conv, ops.Pad)) and xop.bias is None and users[x] == 1 \
                    and x not in g.outputs:
                del nodes[x]
                op = dataclasses.replace(xop, bias=np.broadcast_to(np.asarray(op.bias, np.float64), op.shape).copy())
                args = xargs
        nodes[n] = (op, args)
    return Graph.build([(n, op, args) for n, (op, args) in nodes.items()], g.inputs, g.outputs, dict(g.meta))


def _as(ref_op, got_op):
    """got_op where it can stand for ref_op (same type and shape; a Mul by a 0/1 mask for an all-linear
    masked ReLU, a Relu for a MaskedRelu that keeps every ReLU), else None."""
    if tuple(ref_op.shape) != tuple(got_op.shape):
        return None
    if ref_op.kind == "relu":
        if isinstance(got_op, (ops.Relu, ops.MaskedRelu)):
            return got_op
        if isinstance(got_op, ops.Scale) and (got_op.bias is None or not np.any(got_op.bias)):
            s = np.broadcast_to(np.asarray(got_op.s), got_op.shape)
            if np.all((s == 0) | (s == 1)):
                return ops.MaskedRelu(got_op.shape, relu_mask=np.zeros(got_op.shape, bool), linear_mask=s == 1)
        return None
    return got_op if type(got_op) is type(ref_op) else None


def _scale_then_shift(got: Graph, users: dict, rop, gop, x: str) -> str | None:
    """The Shift that alone reads bias-free Scale x, when ref's op is a Scale with a bias (how an elementwise
    x * s + t per position reads back), else None."""
    if not (isinstance(rop, ops.Scale) and np.any(rop.bias) and isinstance(gop, ops.Scale) and gop.bias is None
            and len(users[x]) == 1 and x not in got.outputs):
        return None
    y = users[x][0]
    yop = got.op(y)
    ok = isinstance(yop, ops.Shift) and yop.bias is not None and tuple(yop.shape) == tuple(gop.shape)
    return y if ok else None


def _absorbed(ref: Graph, got: Graph, nodes: list, n: str, x: str) -> bool:
    """Whether ref's Shift n reads a bias-free layer whose counterpart x in got carries a bias (the Shift
    absorbed in writing), the Shift being that layer's only reader."""
    a = ref.args(n)[0]
    rop, xop = ref.op(a), got.op(x)
    mine = [op for name, op, _ in nodes if name == a]
    return (hasattr(rop, "bias") and rop.bias is None and getattr(xop, "bias", None) is not None and bool(mine)
            and mine[0] is xop and list(ref.dag.successors(a)) == [n] and tuple(rop.shape) == tuple(ref.op(n).shape)
            and a not in ref.outputs)


def align_to(ref: Graph, got: Graph) -> Graph:
    """got with ref's tensor names and DAG, each node computed by got's own op (identities that got lost in
    writing are put back as ref's); StructureError when got is not ref written and read back."""
    if len(ref.inputs) != len(got.inputs) or len(ref.outputs) != len(got.outputs):
        raise StructureError("the graphs have different numbers of inputs or outputs")
    got = normalised(got)
    users = {n: list(got.dag.successors(n)) for n in got.order}
    where = dict(zip(ref.inputs, got.inputs))        # ref tensor -> the got tensor holding its value
    used = set(got.inputs)
    nodes = []
    for n in ref.order:
        rop = ref.op(n)
        if rop.kind == "input":
            nodes.append((n, got.op(where[n]), []))
            continue
        gargs = [where[a] for a in ref.args(n)]
        pick = None
        pool = users[gargs[0]] if gargs else [x for x in got.order if not got.args(x)]
        # the node equiv wrote for n (`graph_to_onnx` names it t_<n>) first: two nodes of one type and shape on
        # the same arguments (two dense layers of the input) are told apart by it.  (Any consistent pairing
        # is sound: every node keeps the file's own op, so the result computes what the file computes.)
        pool = sorted(pool, key=lambda x: x not in (f"t_{n}", n))
        for x in pool:
            if x in used:
                continue
            gop = got.op(x)
            if got.args(x) != gargs:
                # a - b with the Add's arguments swapped (how -a + b reads back, as Sub(b, a))
                if not (isinstance(gop, ops.Add) and len(gargs) == 2 and got.args(x) == gargs[::-1]):
                    continue
                gop = dataclasses.replace(gop, signs=tuple(gop.signs[::-1]), in_shapes=list(gop.in_shapes[::-1]))
            shift = _scale_then_shift(got, users, rop, gop, x)
            if shift is not None:           # x * s + t written as Mul then Add: one Scale with a bias again
                pick = (shift, dataclasses.replace(gop, bias=np.broadcast_to(
                    np.asarray(got.op(shift).bias, np.float64), gop.shape).copy()))
                used.add(x)
                break
            op = _as(rop, gop)
            if op is not None:
                pick = (x, op)
                break
        if pick is None and isinstance(rop, ops.Shift) and len(gargs) == 1 and _absorbed(ref, got, nodes, n, gargs[0]):
            # a bias-free layer then this Shift, written as one layer with the bias (a Gemm): the layer
            # without its bias, then the bias as the Shift (the same function)
            k = next(i for i, (name, _, _) in enumerate(nodes) if name == ref.args(n)[0])
            a, aop, aargs = nodes[k]
            nodes[k] = (a, dataclasses.replace(aop, bias=None), aargs)
            nodes.append((n, ops.Shift(rop.shape, bias=aop.bias), ref.args(n)))
            where[n] = gargs[0]
            continue
        if pick is None:
            if len(gargs) == 1 and is_identity(rop):
                nodes.append((n, rop, ref.args(n)))
                where[n] = gargs[0]
                continue
            same = float32_identity(rop)
            if len(gargs) == 1 and same is not None:      # written in float32 it is the identity: as the file
                nodes.append((n, same, ref.args(n)))
                where[n] = gargs[0]
                continue
            raise StructureError(f"tensor '{n}' ({type(rop).__name__}) has no counterpart in the file read back")
        used.add(pick[0])
        where[n] = pick[0]
        nodes.append((n, pick[1], ref.args(n)))
    extra = [x for x in got.order if x not in used]
    if extra:
        raise StructureError(f"the file read back computes more than the graph: {extra[:3]}")
    if [where[o] for o in ref.outputs] != list(got.outputs):
        raise StructureError("the outputs do not correspond")
    out = Graph.build(nodes, ref.inputs, ref.outputs, dict(ref.meta))
    return out
