"""`equiv bounds`: interval/DeepPoly on the graph engine; LP/MILP bounds on chains."""

from __future__ import annotations

import json

import numpy as np

from .common import progress_of, region_of, require_chain, stability_options


def cmd_bounds(args, out) -> int:
    if args.method in ("lp", "milp"):
        return _bounds_chain(args, out)
    from ..errors import SolverUnavailableError
    from ..solvers import BACKENDS
    if args.backend not in BACKENDS:          # (unused by interval / deeppoly, but a typo is still refused)
        raise SolverUnavailableError(f"unknown solver backend '{args.backend}'; available: {', '.join(BACKENDS)}")
    from ..bounds.engine import deeppoly_graph, interval_graph
    from ..ir import load_graph
    g = load_graph(args.model)
    box, source = region_of(args)
    box.check_dim(g.n_inputs)
    b = interval_graph(g, box) if args.method == "interval" else deeppoly_graph(g, box, blocks=args.blocks)
    from ..apps.graph_simplify import exact_first_dense
    exact_first_dense(g, box, b)
    counts = b.counts(g)
    layers = [{"layer": k, "kind": "relu input", "tensor": g.args(row["relu"])[0], **row,
               "lo": b.lo[g.args(row["relu"])[0]].reshape(-1).tolist(),
               "hi": b.hi[g.args(row["relu"])[0]].reshape(-1).tolist()}
              for k, row in enumerate(b.per_layer(g), start=1)]
    layers += [{"layer": len(layers) + k, "kind": "output", "tensor": o, "shape": list(g.shape(o)),
                "lo": b.lo[o].reshape(-1).tolist(), "hi": b.hi[o].reshape(-1).tolist()}
               for k, o in enumerate(g.outputs, start=1)]
    if args.json:
        out.emit(json.dumps({"model": args.model, "region": {"source": source, **box.to_json()}, "method": args.method,
                             "relus": g.n_relus, "counts": counts, "layers": layers,
                             "blocks": [[s.block.start, s.block.end] for s in b.summaries.values()],
                             "seconds": {k: round(v, 4) for k, v in b.seconds.items()}}, indent=1))
        return 0
    lines = [f"{args.model}: {args.method} bounds on {source}"]
    pooled = _max_pool_relus(g)
    for row in layers:
        lo, hi = np.array(row["lo"]), np.array(row["hi"])
        what = (f"relu {row['layer']} ({row['relu']}{', in a MaxPool' if row['relu'] in pooled else ''})"
                if row["kind"] == "relu input" else f"output ({row['tensor']})")
        extra = (f"  dead {row['dead']}, active {row['active']}, unstable {row['unstable']}"
                 if row["kind"] == "relu input" else "")
        lines.append(f"  {what}: {lo.size} positions {tuple(row['shape'])}, lo in [{lo.min():.4g}, {lo.max():.4g}], "
                     f"hi in [{hi.min():.4g}, {hi.max():.4g}]{extra}")
    lines.append(f"  stable {counts['stable']} of {g.n_relus} ReLUs (dead {counts['dead']}, active {counts['active']})")
    if pooled:
        inner = sum(int(np.prod(g.shape(r))) for r in pooled)
        lines.append(f"  {inner} of the {g.n_relus} are inside MaxPools (equiv reads max(a, c) as c + relu(a - c); "
                     "a stable one means the window's winner is known)")
    out.emit("\n".join(lines))
    return 0


def _max_pool_relus(g) -> set:
    """The ReLUs inside MaxPools as the import lowered them (max(a, c) = c + relu(a - c))."""
    from ..ir.onnx_export import max_pools
    return {v for _, _, body in max_pools(g).values() for v in body} & set(g.relus)


def _bounds_chain(args, out) -> int:
    """LP/MILP bounds: the solver encodings still work on chains of dense layers."""
    from ..ir.chain_io import load_onnx
    from ..prove.stability import prove_stability
    require_chain(args.model, f"equiv bounds --method {args.method}")
    net = load_onnx(args.model)
    box, source = region_of(args)
    box.check_dim(net.n_inputs)
    res = prove_stability(net, box, stability_options(args, progress=progress_of(args)))
    b = res.bounds
    if args.json:
        out.emit(json.dumps({"model": args.model, "region": {"source": source, **box.to_json()}, "method": args.method,
                             "relus": net.n_relus, "counts": b.counts(net.masks),
                             "layers": _chain_layers(args.model, net, b),
                             "seconds": {k: round(v, 4) for k, v in res.stage_seconds.items()}}, indent=1))
        return 0
    lines = [f"{args.model}: {args.method} bounds on {source}"]
    for k, (lo, hi) in enumerate(zip(b.lo, b.hi), start=1):
        kind = "output" if k == len(b.lo) else f"layer {k}"
        extra = ""
        if k < len(b.lo):
            m = net.masks[k - 1]
            extra = f"  dead {int(((hi <= 0) & m).sum())}, active {int(((lo >= 0) & (hi > 0) & m).sum())}, " \
                    f"unstable {int(((lo < 0) & (hi > 0) & m).sum())}"
        lines.append(f"  {kind:>8}: {lo.size} neurons, lo in [{lo.min():.4g}, {lo.max():.4g}], "
                     f"hi in [{hi.min():.4g}, {hi.max():.4g}]{extra}")
    c = b.counts(net.masks)
    lines.append(f"  stable {c['stable']} of {net.n_relus} ReLUs (dead {c['dead']}, active {c['active']})")
    out.emit("\n".join(lines))
    return 0


def _chain_layers(path, net, b) -> list[dict]:
    """The layers of a chain's bounds in the layout of the graph engine's (`kind`, `tensor`, `shape`, counts per
    ReLU layer, `lo`, `hi`), so a reader handles every method alike; `tensor` names the model's tensor (the
    ReLU's input, the output) when the graph reading pairs one with each layer, else null."""
    from ..ir import load_graph
    g = load_graph(path)
    names = [g.args(r)[0] for r in g.relus] + list(g.outputs)
    if len(names) != len(b.lo):
        names = [None] * len(b.lo)
    rows = []
    for k, (lo, hi) in enumerate(zip(b.lo, b.hi)):
        shape = [int(lo.size)]
        if names[k] is not None and int(np.prod(g.shape(names[k]))) == lo.size:
            shape = [int(d) for d in g.shape(names[k])]
        row = {"layer": k + 1, "kind": "output" if k == len(b.lo) - 1 else "relu input", "tensor": names[k],
               "shape": shape}
        if k < len(b.lo) - 1:
            m = net.masks[k]
            row |= {"relu": None if names[k] is None else g.relus[k], "size": int(m.sum()),
                    "dead": int(((hi <= 0) & m).sum()), "active": int(((lo >= 0) & (hi > 0) & m).sum()),
                    "unstable": int(((lo < 0) & (hi > 0) & m).sum())}
        rows.append(row | {"lo": lo.tolist(), "hi": hi.tolist()})
    return rows
