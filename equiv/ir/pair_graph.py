"""Two networks of the same structure -> one difference graph, so the one bounds engine bounds f - g directly.

For every tensor n of f and g write dn = n_f - n_g (ReluDiff / NeuroDiff).  A linear op with parameters P
(weights, scales) is bilinear in (P, x), so

    dy = L_{P_f}(dx) + L_{P_f - P_g}(x_g) + (b_f - b_g),

an op without parameters (Add, Concat, Reshape, ...) gives dy = L(dx...), a constant its difference, and a
shared input none (a tensor whose difference is exactly 0 has no node).  Each activation becomes
dh = `ops.ReluDiff`(dz, z_g, z_f), relaxed by lines in (dz, z_g).  The graph holds g's tensors ("g:n"),
f's ("f:n", whose bounds the engine ties to z_g + dz) and the differences ("d:n"); "pair:d", "pair:g"
and "pair:f" are the outputs flattened and concatenated ((1, n_outputs)): f - g, g, and f read through
the pair (g + d).  The node order is tensor by tensor (g:n, f:n, then d:n), so each tensor's three bounds
are tied before anything later reads them.  Back-substituting d walks only the difference and g
tensors: when f and g are close, the relaxation errors of the two networks cancel instead of adding up.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import ops
from .graph import Graph

PARAMS = ("W", "s")       # the array fields a linear op is linear in (Dense/Conv/MatMul weights, Scale factors)


class StructureError(ValueError):
    """The two graphs are not the same network up to parameters (then the product graph is used instead)."""


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.shape(a) == np.shape(b) and bool(np.all(np.asarray(a) == np.asarray(b)))
    return a == b


def act_masks(op) -> tuple:
    """(relu, linear) masks of a relu-kind op (a plain Relu: relu everywhere)."""
    return (op.relu_mask, op.linear_mask) if hasattr(op, "relu_mask") else (True, False)


def _check(f: Graph, g: Graph):
    if f.inputs != g.inputs or f.outputs != g.outputs or set(f.order) != set(g.order):
        raise StructureError("the graphs have different tensors, inputs or outputs")
    for n in f.order:
        a, b = f.op(n), g.op(n)
        if a.kind != b.kind or tuple(a.shape) != tuple(b.shape) or f.args(n) != g.args(n):
            raise StructureError(f"tensor '{n}' differs in op, shape or arguments")
        if a.kind == "linear":
            if type(a) is not type(b):
                raise StructureError(f"tensor '{n}' is a {type(a).__name__} in A and a {type(b).__name__} in B")
            for fl in dataclasses.fields(a):
                # (pooling only labels a Conv whose weights are not parameters: a pool read back is a plain Conv)
                if fl.name not in ("shape", "bias", "pooling") + PARAMS and not _same(getattr(a, fl.name),
                                                                                      getattr(b, fl.name)):
                    raise StructureError(f"tensor '{n}' differs in '{fl.name}'")


def difference_graph(f: Graph, g: Graph) -> Graph:
    """The difference graph of two graphs that differ only in parameters, biases, constants and activation
    masks (a float16 or quantised copy, equiv's own output with masked ReLUs); StructureError otherwise.
    meta: "pre" {tensor read by an activation: (f, g, d node or None)}, "d_of" {tensor: its d node}, "out"
    the three flattened outputs, "outputs" the networks' output tensors."""
    _check(f, g)
    nodes, d_of, pre, zeros = [], {}, {}, set()
    name_in = {n: "in:" + n for n in f.inputs}
    for n in f.inputs:
        nodes.append((name_in[n], f.op(n), []))

    def arg(prefix, a):
        return name_in.get(a, prefix + a)

    def zero(a):
        """A zero constant standing for the difference of tensor a (exactly 0)."""
        z = f"d0:{a}"
        if z not in zeros:
            zeros.add(z)
            nodes.append((z, ops.Const(f.shape(a), value=np.zeros(f.shape(a))), []))
        return z

    for n in f.order:
        a, b = f.op(n), g.op(n)
        if a.kind == "input":
            continue
        args = f.args(n)
        nodes.append(("g:" + n, b, [arg("g:", x) for x in args]))
        nodes.append(("f:" + n, a, [arg("f:", x) for x in args]))
        diffs = [d_of.get(x) for x in args]
        if a.kind == "const":
            if not _same(a.value, b.value):
                nodes.append(("d:" + n, ops.Const(a.shape, value=np.asarray(a.value, np.float64) - b.value), []))
                d_of[n] = "d:" + n
        elif a.kind == "relu":
            z = args[0]
            (fr, fl), (gr, gl) = act_masks(a), act_masks(b)
            pre[z] = (arg("f:", z), arg("g:", z), d_of.get(z))      # (an input: the one both read)
            if d_of.get(z) is None and _same(fr, gr) and _same(fl, gl):
                continue           # same input, same activation: no difference
            nodes.append(("d:" + n, ops.ReluDiff(a.shape, f_relu=fr, f_linear=fl, g_relu=gr, g_linear=gl),
                          [d_of.get(z) or zero(z), arg("g:", z), arg("f:", z)]))
            d_of[n] = "d:" + n
        else:
            _linear_difference(nodes, d_of, n, a, b, args, diffs, zero, arg)
    outs = {}
    for prefix in ("g:", "f:", "d:"):
        parts = []
        for k, o in enumerate(f.outputs):
            src = arg(prefix, o) if prefix != "d:" else (d_of.get(o) or zero(o))
            name = f"pair:{prefix[0]}{k}"
            nodes.append((name, ops.Reshape((1, f.op(o).size), in_shape=f.shape(o)), [src]))
            parts.append(name)
        if len(parts) > 1:
            nodes.append((f"pair:{prefix[0]}s", ops.Concat((1, f.n_outputs), axis=1,
                                                           in_shapes=[(1, f.op(o).size) for o in f.outputs]), parts))
            outs[prefix[0]] = f"pair:{prefix[0]}s"
        else:
            outs[prefix[0]] = parts[0]
    m = (1, f.n_outputs)
    nodes.append(("pair:f", ops.Add(m, in_shapes=[m, m]), [outs["g"], outs["d"]]))
    graph = Graph.build(nodes, [name_in[n] for n in f.inputs], [outs["d"]],
                        {"pre": pre, "out": {"d": outs["d"], "g": outs["g"], "f": "pair:f"}, "d_of": d_of,
                         "outputs": list(f.outputs)})
    graph.order = [n for n, _, _ in nodes]      # tensor by tensor: a topological order (see the docstring)
    return graph


def _linear_difference(nodes, d_of, n, a, b, args, diffs, zero, arg):
    """d of a linear op: L_f(d args) + L_{P_f - P_g}(g args) + (b_f - b_g); no node when it is exactly 0.
    Its two terms are named d#<n>/a and d#<n>/b: never a tensor's d:<name>, whatever the tensors are called."""
    dparams = {p: np.asarray(getattr(a, p), np.float64) - getattr(b, p) for p in PARAMS
               if hasattr(a, p) and not _same(getattr(a, p), getattr(b, p))}
    same_bias = _same(a.bias, b.bias) or (a.bias is None and b.bias is None)
    dbias = None if same_bias else (0.0 if a.bias is None else np.asarray(a.bias, np.float64)) - \
        (0.0 if b.bias is None else b.bias)
    terms = []
    if any(d is not None for d in diffs):
        nodes.append((f"d#{n}/a", dataclasses.replace(a, bias=None), [d or zero(x) for d, x in zip(diffs, args)]))
        terms.append(f"d#{n}/a")
    if dparams or dbias is not None:
        if dparams:         # (parameterised ops have one argument)
            nodes.append((f"d#{n}/b", dataclasses.replace(a, bias=dbias, **dparams), [arg("g:", args[0])]))
        else:               # only the bias differs: a constant
            nodes.append((f"d#{n}/b", ops.Const(a.shape, value=np.broadcast_to(dbias, a.shape).copy()), []))
        terms.append(f"d#{n}/b")
    if not terms:
        return
    if len(terms) == 1:
        d_of[n] = terms[0]
    else:
        nodes.append(("d:" + n, ops.Add(a.shape, in_shapes=[a.shape, a.shape]), terms))
        d_of[n] = "d:" + n


def pair_graph(pair) -> Graph:
    """The difference graph of an `align.AlignedPair` of chains (cached on the pair, never changed)."""
    cached = pair.__dict__.get("_pair_graph")
    if cached is None:
        from .chain_graph import network_graph
        cached = pair.__dict__["_pair_graph"] = difference_graph(network_graph(pair.f), network_graph(pair.g))
    return cached
