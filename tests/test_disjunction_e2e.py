"""End to end on ACAS Xu 1_1: a spec whose input region is a nested disjunction (the audit's case).

The old reader kept only the first disjunct, so `simplify` wrote a model that differed from the original
by 0.37 on the second one, and `check` of the two said EQUIVALENT.  Now `simplify` works on the hull of
all three boxes, and `check` decides every box: it must find the model that is exact only on the first
disjunct NOT equivalent, with a counterexample inside one of the other boxes.
"""

from __future__ import annotations

import json

import numpy as np

from conftest import acas_path, needs_bench
from equiv.cli import main
from equiv.spec.region import Box, load_regions
from equiv.artifacts.validate import OnnxRunner

# prop_3 with X_1 free, plus the audit's nested disjunction on X_1 and X_3
SPEC = """
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const X_3 Real)
(declare-const X_4 Real)
(declare-const Y_0 Real)
(assert (<= X_0 -0.298552812))
(assert (>= X_0 -0.303531156))
(assert (<= X_2 0.5))
(assert (>= X_2 0.493380324))
(assert (<= X_3 0.5))
(assert (>= X_3 0.3))
(assert (<= X_4 0.5))
(assert (>= X_4 0.3))
(assert (or (and (>= X_1 -0.5) (<= X_1 -0.3))
            (and (>= X_1 0.3) (<= X_1 0.5) (or (<= X_3 0.4) (>= X_3 0.4)))))
(assert (<= Y_0 0.0))
"""


@needs_bench
def test_nested_disjunction_simplify_and_check(tmp_path, capsys):
    spec = tmp_path / "nested.vnnlib"
    spec.write_text(SPEC)
    boxes, _ = load_regions(spec=spec)
    assert len(boxes) == 3
    model = acas_path(1, 1)

    # simplify on the spec: the written model is exact on every box of the union
    out, rep = tmp_path / "s.onnx", tmp_path / "r.json"
    assert main(["simplify", str(model), "--spec", str(spec), "-o", str(out), "--report", str(rep),
                 "--no-progress"]) == 0
    report = json.loads(rep.read_text())
    assert "hull of 3 input boxes" in report["region"]["source"]
    ref, small = OnnxRunner(str(model)), OnnxRunner(str(out))
    rng = np.random.default_rng(0)
    for b in boxes:
        x = np.vstack([b.sample(2000, rng), b.corners()])
        assert np.abs(ref(x) - small(x)).max() <= 1e-4

    # a model simplified on the first disjunct only (what the old reader produced)
    first = tmp_path / "first.onnx"
    box0 = ",".join(f"{float(lo)!r}:{float(hi)!r}" for lo, hi in zip(boxes[0].lo, boxes[0].hi))
    assert main(["simplify", str(model), "--box", box0, "-o", str(first), "--no-progress"]) == 0
    capsys.readouterr()
    code = main(["check", str(model), str(first), "--spec", str(spec), "--epsilon", "0.01", "--json",
                 "--no-progress"])
    res = json.loads(capsys.readouterr().out)
    assert code == 1 and res["verdict"] == "not_equivalent"
    x = np.array(res["counterexample"]["input"])
    assert any(Box(b.lo, b.hi).contains(x[None])[0] for b in boxes[1:])       # a real point of the region
    assert np.abs(ref(x[None]) - OnnxRunner(str(first))(x[None])).max() > 0.01
    assert len(res["region"]["boxes"]) == 3

    # and the exact model is proved equivalent on all three boxes
    code = main(["check", str(model), str(out), "--spec", str(spec), "--epsilon", "0.01", "--json", "--no-progress"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["verdict"] == "equivalent", res["notes"]
    assert res["stats"]["input_boxes"] == res["stats"]["input_boxes_checked"] == 3
    assert sum(res["stats"]["pieces"].values()) == res["pieces_total"] == res["stats"]["pieces"]["equivalent"]
