"""Run models in onnxruntime and compare them on many points of a region (random, corners, witnesses)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from ..errors import RegionError
from ..spec.region import Box, floats_in_box


class OnnxRunner:
    """Evaluate an ONNX model on a batch of flat float32 points, batched when the model allows it.

    A point holds every input flattened, in the order of the graph's inputs (as VNN-COMP's X_i); the
    result holds every output flattened, in order."""

    def __init__(self, model: onnx.ModelProto | str):
        if isinstance(model, str):
            model = onnx.load(model)
        self.model = model
        inits = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in inits]
        self.names = [i.name for i in inputs]
        self.shapes = [[d.dim_value if d.HasField("dim_value") else 1 for d in i.type.tensor_type.shape.dim]
                       for i in inputs]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.input_name, self.shape = self.names[0], self.shapes[0]
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # probing a batched copy may fail: stay quiet
        opts.intra_op_num_threads = 1
        # onnxruntime's extended graph optimisations fuse Transpose + MatMul by a 1-D constant into a
        # FusedMatMul that computes a wrong answer (seen with onnxruntime 1.32; found by tests/test_import_fuzz.py):
        # compare models under ONNX's own semantics, with the basic (semantics-preserving) level only
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self._opts = opts
        self.single = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.batched = self._try_batched(model, inits)

    def _feed(self, x: np.ndarray, lead: list) -> dict:
        """{input name: array} from flat points x (n, total), each input shaped `lead + shape[1:]` or its shape."""
        feed, k = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            part = x[:, k:k + size]
            feed[name] = part.reshape(lead + shape[1:]) if lead else part.reshape(shape)
            k += size
        return feed

    def _try_batched(self, model, inits):
        """A copy of the model with a symbolic batch dimension, if onnxruntime accepts it."""
        if any(not s or s[0] != 1 for s in self.shapes):
            return None
        m = copy.deepcopy(model)
        for vi in [i for i in m.graph.input if i.name not in inits] + list(m.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if dims:
                dims[0].dim_param = "batch"
        try:
            sess = ort.InferenceSession(m.SerializeToString(), self._opts, providers=["CPUExecutionProvider"])
            # two batch sizes, each row checked against the model run on its own: one size may happen to
            # broadcast against a constant of the model (a (3, 4) one took a probe of 3 for a batch axis)
            rng = np.random.default_rng(0)
            for b in (5, 7):
                x = rng.normal(size=(b, sum(self.sizes))).astype(np.float32)
                outs = sess.run(None, self._feed(x, [b]))
                if not all(o.shape[0] == b for o in outs):
                    return None
                got = np.hstack([o.reshape(b, -1) for o in outs])
                one = np.vstack([np.hstack([r.reshape(1, -1) for r in self.single.run(None, self._feed(xi[None], []))])
                                 for xi in x])
                if got.shape != one.shape or not np.allclose(got, one, rtol=1e-4, atol=1e-5, equal_nan=True):
                    return None
            return sess
        except Exception:
            return None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        x = x.reshape(x.shape[0], -1)
        if self.batched is not None:
            out = []
            for s in range(0, x.shape[0], 4096):
                chunk = x[s:s + 4096]
                res = self.batched.run(None, self._feed(chunk, [chunk.shape[0]]))
                out.append(np.hstack([r.reshape(chunk.shape[0], -1) for r in res]))
            return np.vstack(out)
        return np.vstack([np.hstack([r.reshape(1, -1) for r in self.single.run(None, self._feed(xi[None], []))])
                          for xi in x])

    def float64(self, x: np.ndarray) -> np.ndarray:
        """The model's outputs at flat points x computed in float64 by ONNX's reference evaluator (onnxruntime
        has no float64 Conv): the function the file describes, nearly free of rounding, point by point."""
        if getattr(self, "_reference", None) is None:
            from onnx.reference import ReferenceEvaluator
            self._reference = ReferenceEvaluator(as_float64(self.model))
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        return np.vstack([np.hstack([np.asarray(r, np.float64).reshape(1, -1)
                                     for r in self._reference.run(None, self._feed(xi[None], []))]) for xi in x])


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model with every float32 tensor (initializers, constants, inputs, outputs, casts) float64."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    g = m.graph
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
            elif node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    return m


ROUNDING_RELATIVE = 2.0 ** -16     # float32 rounding allowed on top of the tolerance, relative to |output|
ROUNDING_RELATIVE_64 = 2.0 ** -40  # the same in float64 (the reference evaluator's recheck)
RECHECK_POINTS = 128               # failing points rechecked in float64 (the worst, then others at random)


@dataclass
class ValidationReport:
    """Sampled comparison of two models.  A point passes when |a - b| <= tolerance + ROUNDING_RELATIVE x the
    larger |output| there: two float32 evaluations of one function differ by rounding that grows with the
    magnitude of the values (ACAS Xu at inputs of 1000: outputs ~113, 1.8e-4 apart), which the absolute
    tolerance alone took for a bug; 2^-16 is 128 float32 ulps, far below any real error.  When the original's
    exact (float64) function is known, its own float32 error over the points (`float32_noise`, per output) is
    allowed NOISE_FACTOR times over as well: with intermediate values far larger than the outputs (inputs near 1e6)
    that error exceeds any share of |output|, and two correct float32 models differed by 28 there.

    Points that still fail are rechecked in float64 (`OnnxRunner.float64`, both files run by ONNX's reference
    evaluator): a rewrite that is exact in the reals may still change the float32 rounding (a BatchNorm
    folded into a convolution of mixed 1e-6 and 1e3 weights raised it 4x), and only a difference that
    survives in float64 is a bug.  `float64_recheck` holds what that found ({} when not needed)."""

    samples: int
    max_abs_diff: float
    worst_input: list
    by_source: dict          # source -> (count, max abs diff)
    tolerance: float
    excess: float = -np.inf  # max over points of |a - b| - the rounding allowances (what the tolerance bounds)
    float32_noise: float = 0.0   # largest |original in onnxruntime - original in float64| over the points
    float64_recheck: dict = field(default_factory=dict)   # {"points", "max_abs_diff", "excess"} in float64
    failing_input: list = field(default_factory=list)   # the point of largest excess (the one a failure is about)
    failing_diff: float = 0.0                            # max |diff| there

    @property
    def ok(self) -> bool:
        if self.excess <= self.tolerance:
            return True
        return bool(self.float64_recheck) and self.float64_recheck["excess"] <= self.tolerance

    def failure(self) -> str:
        """What a failed comparison says: the difference at the point that fails most, not at the point of
        largest |diff| (a large output there may be within its rounding allowance)."""
        x = self.failing_input or self.worst_input
        d = self.failing_diff if self.failing_input else self.max_abs_diff
        return (f"differs from the original by {d:.3g} (tolerance {self.tolerance:g}; largest |diff| seen "
                f"{self.max_abs_diff:.3g}) at input {np.round(np.asarray(x, float), 6).tolist()}")

    def line(self) -> str:
        """The summary's validation line: points and worst difference (and the original's own float32 error,
        when it is above the tolerance)."""
        noise = (f" (the original's own float32 error here: {self.float32_noise:.3g})"
                 if self.float32_noise > self.tolerance else "")
        r = self.float64_recheck
        if r:
            noise += (f"; float32 rounding: the {r['points']} point{'s' if r['points'] != 1 else ''} over the "
                      f"tolerance differ{'s' if r['points'] == 1 else ''} by at most "
                      f"{r['max_abs_diff']:.3g} in float64" if self.ok else
                      f"; {r['max_abs_diff']:.3g} in float64 too")
            if self.ok and "weight_rounding" in r:
                noise += (f", within {NOISE_FACTOR:g}x the original's own float32 error at each (the reduction is "
                          "exact in float64; the written file's weights are float32)")
        return f"  validation: {self.samples} points, max |diff| {self.max_abs_diff:.3g}{noise}"

    def to_json(self) -> dict:
        return {"samples": self.samples, "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
                "rounding_relative": ROUNDING_RELATIVE, "ok": self.ok,
                "by_source": {k: {"samples": n, "max_abs_diff": d} for k, (n, d) in self.by_source.items()},
                "worst_input": self.worst_input, "float32_noise": self.float32_noise,
                "float64_recheck": self.float64_recheck, "failing_input": self.failing_input,
                "failing_diff": self.failing_diff}


def validation_points(box: Box, n: int, rng: np.random.Generator, witnesses: np.ndarray | None = None,
                      vertices: int = 1024) -> dict:
    """Named point sets: uniform random, vertices (all when at most `vertices`, else that many at random,
    in every run), the centre, solver witnesses."""
    pts = {"random": box.sample(n, rng), "vertices": box.vertices(vertices, rng), "center": box.center[None]}
    if witnesses is not None and len(witnesses):
        pts["witnesses"] = np.clip(witnesses, box.lo, box.hi)
    return {k: v for k, v in pts.items() if len(v)}


def ascent_points(f, g, box: Box, starts: np.ndarray, restarts: int = 32, steps: int = 40) -> np.ndarray:
    """Points where |f - g| is large: signed-gradient ascent (the falsifier's) on max_j |f_j - g_j| from the
    `restarts` starting points where it is largest; f and g are Networks evaluated in float64."""
    from ..prove.falsify import _ascend, _scores
    if not len(starts):
        return np.empty((0, box.dim))
    if len(starts) > 1024:        # score a fixed subset: on conv nets a float64 pass costs more than ONNX Runtime's
        starts = starts[np.random.default_rng(0).choice(len(starts), 1024, replace=False)]
    eps = np.ones(f.n_outputs)
    best = starts[np.argsort(-_scores(f, g, starts, "linf", eps))[:restarts]]
    return _ascend(f, g, box, best, "linf", eps, steps)


def compare_models(a: OnnxRunner, b: OnnxRunner, box: Box, n: int = 10000, seed: int = 0,
                   witnesses: np.ndarray | None = None, tolerance: float = 1e-4, networks=None) -> ValidationReport:
    """Worst absolute output difference of two models over sampled points of the region; with
    `networks=(f, g)` (the two models as Networks) also at the points a gradient ascent on |f - g| finds."""
    rng = np.random.default_rng(seed)
    points = validation_points(box, n, rng, witnesses)
    if networks is not None:
        points["ascent"] = ascent_points(*networks, box, np.vstack(list(points.values())))
    return compare_on_points(a, b, points, tolerance, box, exact=None if networks is None else networks[0].forward,
                             intended=None if networks is None else networks[1].forward)


NOISE_FACTOR = 3.0     # multiples of the original's own float32 error allowed as rounding (see ValidationReport)
NOISE_POINTS = 512     # points that error is measured on


def compare_on_points(a: OnnxRunner, b: OnnxRunner, points: dict, tolerance: float = 1e-4,
                      box: Box | None = None, exact=None, intended=None) -> ValidationReport:
    """Worst absolute output difference of two models over named point sets {source: (n, dim) array}.  With
    the region `box`, each point is first moved to the nearest float32 point inside it (`floats_in_box`): a
    point such as 0.1 on the boundary is float32(0.1) > 0.1 in onnxruntime, outside the region, where the
    models need not agree.  exact: the original's float64 function (flat points -> outputs), to measure the
    float32 error of model `a` itself; intended: the float64 function model `b` was written from (before its
    weights were stored in float32), for the float64 recheck (`recheck_float64`)."""
    runs = {}
    for name, x in points.items():
        if box is not None and len(x):
            x, inside = floats_in_box(np.atleast_2d(x), box)
            x = x[inside].astype(np.float64)
        if not len(x):
            continue
        ya, yb = a(x), b(x)
        bad = ~np.all(np.isfinite(ya), axis=1)
        if bad.any():
            raise RegionError(f"the original model's outputs are not finite in float32 at {int(bad.sum())} of "
                              f"{len(x)} points of the region (e.g. input {np.asarray(x[bad][0]).tolist()[:8]}...): "
                              "its values overflow there; give a smaller region")
        runs[name] = (x, ya, yb)
    noise = np.zeros(1)
    if exact is not None and runs:
        # on at most NOISE_POINTS of them (a float64 pass of a conv net over 10 000 points is slow and large)
        X = np.vstack([x for x, _, _ in runs.values()])
        Ya = np.vstack([ya for _, ya, _ in runs.values()])
        pick = np.random.default_rng(0).permutation(len(X))[:NOISE_POINTS]
        noise = np.max([np.abs(Ya[p] - exact(X[p])).max(axis=0)        # (chunks: a float64 pass keeps every
                        for p in np.array_split(pick, max(1, len(pick) // 64))], axis=0)   # tensor)
        # an exact function that is not finite somewhere allows nothing (a NaN allowance passed every point)
        noise = np.nan_to_num(noise, nan=0.0, posinf=0.0)
    by_source, worst, worst_x, total, excess, failing = {}, 0.0, None, 0, -np.inf, []
    fail_x, fail_d = None, 0.0
    for name, (x, ya, yb) in runs.items():
        # a NaN output (e.g. corrupted weights) counts as an infinite difference, never as a match
        d = np.nan_to_num(np.abs(ya - yb), nan=np.inf)
        size = np.nan_to_num(np.maximum(np.abs(ya), np.abs(yb)), nan=0.0, posinf=0.0)
        over = (d - ROUNDING_RELATIVE * size - NOISE_FACTOR * noise).max(axis=1)
        j = int(np.argmax(over))
        if over[j] > excess:
            excess, fail_x, fail_d = float(over[j]), x[j], float(d[j].max())
        failing += [(float(o), xi, yi) for o, xi, yi in zip(over, x, ya) if o > tolerance]
        d = d.max(axis=1)
        i = int(np.argmax(d))
        by_source[name] = (len(x), float(d[i]))
        total += len(x)
        if d[i] >= worst:
            worst, worst_x = float(d[i]), x[i]
    return ValidationReport(total, worst, [] if worst_x is None else worst_x.tolist(), by_source, tolerance, excess,
                            float(noise.max()), recheck_float64(a, b, failing, tolerance, intended),
                            [] if fail_x is None or excess <= tolerance else fail_x.tolist(), fail_d)


def recheck_float64(a: OnnxRunner, b: OnnxRunner, failing: list, tolerance: float, intended=None) -> dict:
    """The float32 failures [(excess, point, a's float32 outputs there)] rerun in float64: the RECHECK_POINTS / 2
    worst and as many others at random (all when fewer); {} when nothing failed, or when a model cannot run in
    float64.  Given `intended` (b's float64 function before its weights were stored in float32): where that
    function equals the original's in float64 (the reduction is right), a difference of the two files within
    NOISE_FACTOR x the original's own float32 error at that very point is float32 storage of b's folded weights
    (a bias of -6.7e8 moves by 32), which changes b no more than float32 evaluation changes the original there
    (`weight_rounding`: the largest such difference excused)."""
    if not failing:
        return {}
    failing.sort(key=lambda t: -t[0])
    half = RECHECK_POINTS // 2
    rest = failing[half:]
    pick = failing[:half] + [rest[i] for i in np.random.default_rng(0).permutation(len(rest))[:half]]
    X = np.array([xi for _, xi, _ in pick])
    try:
        ya, yb = a.float64(X), b.float64(X)
    except Exception:       # an op the reference evaluator lacks: the float32 verdict stands
        return {}
    d = np.nan_to_num(np.abs(ya - yb), nan=np.inf)
    size = np.nan_to_num(np.maximum(np.abs(ya), np.abs(yb)), nan=0.0, posinf=0.0)
    plain = d - ROUNDING_RELATIVE_64 * size
    out = {"points": len(pick), "of": len(failing), "max_abs_diff": float(d.max()), "excess": float(plain.max())}
    if intended is not None and out["excess"] > tolerance:
        yi = np.asarray(intended(X), np.float64)
        right = np.all(np.nan_to_num(np.abs(yi - ya), nan=np.inf) - ROUNDING_RELATIVE_64 * size <= tolerance, axis=1)
        own = np.nan_to_num(np.abs(np.array([y for _, _, y in pick]) - ya), nan=0.0, posinf=0.0)   # (no NaN excuse)
        stored = np.where(right[:, None], plain - NOISE_FACTOR * own, plain)
        if stored.max() <= tolerance:
            out["excess"], out["weight_rounding"] = float(stored.max()), float(d.max())
    return out
