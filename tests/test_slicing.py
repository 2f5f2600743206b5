"""Slicing: exact tiling of random bisections, the dispatcher against the original (tiny nets and a real
ACAS Xu family), `--verify` catching tampering, the CLI's exit codes and its output-folder refusal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from conftest import ACAS, acas_path, random_problem
from equiv.bounds import deeppoly_bounds
from equiv.cli import main
from equiv.transform.dispatch import build_dispatcher, network_io
from equiv.ir.network import Dense, Network
from equiv.artifacts.files import save_onnx_atomic
from equiv.ir.chain_io import network_to_onnx
from equiv.spec.region import Box, load_region
from equiv.apps.simplify import prove_and_reduce
from equiv.apps.slicing import (MANIFEST, Piece, SliceOptions, build_tree, check_tiling, check_tree, face_points,
                           fewest_unstable_dim, slice_model, splittable_dims, widest_dim, write_family)
from equiv.prove.stability import StabilityOptions, prove_stability
from equiv.artifacts.validate import OnnxRunner

FAST = ["--no-progress", "--validation-samples", "500", "--dispatch-samples", "3000"]


def random_tree(region: Box, splits) -> Piece:
    """A bisection tree from (u, dim) choices: split leaf number int(u * #leaves) along dim (if possible)."""
    root = Piece(region)
    leaves = [root]
    for u, d in splits:
        leaf = leaves[int(u * len(leaves))]
        d = d % region.dim
        if d in splittable_dims(leaf.box):
            leaf.split(d)
            leaves = [c for p in leaves for c in (p.children or [p])]
    for s, p in enumerate(root.leaves()):
        p.slice_id = s
    return root


def boxes_of(tree: Piece):
    leaves = tree.leaves()
    return np.array([p.box.lo for p in leaves]), np.array([p.box.hi for p in leaves])


def slices_json(tree: Piece) -> list[dict]:
    return [{"id": p.slice_id, "lo": p.box.lo.tolist(), "hi": p.box.hi.tolist()} for p in tree.leaves()]


def quadrants() -> tuple[Box, np.ndarray, np.ndarray]:
    region = Box(np.zeros(2), np.ones(2))
    tree = random_tree(region, [(0.0, 0), (0.0, 1), (0.9, 1)])
    lo, hi = boxes_of(tree)
    assert len(lo) == 4
    return region, lo, hi


# ---- tiling ----------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 4), seed=st.integers(0, 2 ** 32 - 1), flat=st.booleans(),
       splits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 3)), max_size=40))
def test_random_bisections_tile_the_region_exactly(n, seed, flat, splits):
    r = np.random.default_rng(seed)
    lo = r.uniform(-3, 3, n)
    hi = lo + r.uniform(1e-3, 5, n)
    if flat and n > 1:
        hi[0] = lo[0]                      # a degenerate input (fixed value) must not break the check
    region = Box(lo, hi)
    tree = random_tree(region, splits)
    L, H = boxes_of(tree)
    assert check_tiling(region.lo, region.hi, L, H) == []
    assert check_tree(json.loads(json.dumps(tree.to_json())), slices_json(tree)) == []
    # every random point lies in some piece; every point of a split face lies in both halves
    x = region.sample(300, r)
    inside = np.array([(x >= a) & (x <= b) for a, b in zip(L, H)]).all(axis=2)
    assert inside.any(axis=0).all()
    stack = [tree]
    while stack:
        p = stack.pop()
        if p.children:
            a, b = p.children
            assert a.box.hi[p.dim] == b.box.lo[p.dim] == p.mid
            f = face_points([p.box], 5, r)
            f = f[f[:, p.dim] == p.box.lo[p.dim]]
            f[:, p.dim] = p.mid
            assert a.box.contains(f).all() and b.box.contains(f).all()
            stack += p.children


def test_check_tiling_accepts_a_tiling_and_rejects_gap_overlap_outside():
    region, lo, hi = quadrants()
    assert check_tiling(region.lo, region.hi, lo, hi) == []

    gap = hi.copy()
    gap[0, 0] = np.nextafter(gap[0, 0], 0)          # a gap one ulp wide is still a gap
    assert any("gap" in p for p in check_tiling(region.lo, region.hi, lo, gap))

    over = hi.copy()
    over[0, 0] = 0.75                                # slice 0 now reaches into its neighbour
    assert any("overlap" in p for p in check_tiling(region.lo, region.hi, lo, over))

    out = lo.copy()
    out[1, 1] = -0.1
    assert any("not inside the region" in p for p in check_tiling(region.lo, region.hi, out, hi))

    missing = check_tiling(region.lo, region.hi, lo[1:], hi[1:])
    assert missing and "gap" in missing[0]
    dup = check_tiling(region.lo, region.hi, np.vstack([lo, lo[:1]]), np.vstack([hi, hi[:1]]))
    assert any("overlap" in p for p in dup)

    flat = hi.copy()
    flat[2, 0] = lo[2, 0]
    assert any("no volume" in p for p in check_tiling(region.lo, region.hi, lo, flat))
    bad = lo.copy()
    bad[3, 0] = 2.0
    assert any("lo > hi" in p for p in check_tiling(region.lo, region.hi, bad, hi))


def test_check_tree_rejects_a_leaf_that_is_not_its_slice():
    region = Box(np.zeros(2), np.ones(2))
    tree = random_tree(region, [(0.0, 0), (0.0, 1)])
    t, s = tree.to_json(), slices_json(tree)
    assert check_tree(t, s) == []
    s[1]["hi"][0] = 0.4
    assert any("differs from its tree leaf" in p for p in check_tree(t, s))
    t2 = json.loads(json.dumps(tree.to_json()))
    t2["mid"] = 0.3                                  # the children no longer bisect the root at mid
    assert any("not bisected" in p for p in check_tree(t2, slices_json(tree)))


# ---- strategies ------------------------------------------------------------------------------------

def ramp_net(n_hidden: int = 8) -> Network:
    """Hidden neurons z_i = x0 - c_i (all unstable on x0 in [-1, 1], independent of x1)."""
    c = np.linspace(-0.9, 0.9, n_hidden)
    W1 = np.column_stack([np.ones(n_hidden), np.zeros(n_hidden)])
    return Network.from_layers([Dense(W1, -c), Dense(np.ones((1, n_hidden)), np.zeros(1))])


def test_unstable_strategy_picks_the_dimension_that_matters_and_width_the_widest():
    net = ramp_net()
    region = Box(np.array([-1.0, -5.0]), np.array([1.0, 5.0]))
    dims = splittable_dims(region)
    # bisecting x1 leaves all 8 neurons unstable in both halves; bisecting x0 stabilises half of them in each
    assert fewest_unstable_dim(net, region, region, deeppoly_bounds(net, region), dims) == 0
    wide = Box(np.array([-1.0, -5.0]), np.array([0.0, 5.0]))
    assert widest_dim(wide, region, dims) == 1      # x1 is still its full width, x0 only half
    assert list(splittable_dims(Box(np.array([0.0, 1.0]), np.array([0.0, np.nextafter(1.0, 2)])))) == []


def test_build_tree_stops_at_the_target_or_the_budget():
    net = ramp_net(16)
    region = Box(np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
    tree = build_tree(net, region, StabilityOptions(), SliceOptions(max_slices=64, target_relus=2))
    leaves = tree.leaves()
    assert 1 < len(leaves) < 64 and all(p.relus <= 2 for p in leaves)
    assert all(p.dim == 0 for p in _internal(tree))  # x1 never matters
    small = build_tree(net, region, StabilityOptions(), SliceOptions(max_slices=3))
    assert len(small.leaves()) == 3


def _internal(tree: Piece):
    return [p for p in [tree] + [q for c in tree.children for q in _internal(c)] if p.children]


# ---- the dispatcher --------------------------------------------------------------------------------

def test_dispatcher_matches_the_original_on_a_tiny_net():
    net, _ = random_problem(3, 2, [6, 6], 2, False)
    region = Box(np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
    tree = random_tree(region, [(0.0, 0), (0.0, 1), (0.9, 1), (0.2, 0)])
    leaves = tree.leaves()
    nets = [prove_and_reduce(net, p.box, StabilityOptions())[1] for p in leaves]
    assert sum(n.n_relus for n in nets) < len(nets) * net.n_relus   # the pieces are simplified
    model = build_dispatcher(region, [p.box for p in leaves], [network_to_onnx(n) for n in nets], network_io(net))
    onnx.checker.check_model(model)
    ref = network_to_onnx(net)
    assert [i.name for i in model.graph.input] == [i.name for i in ref.graph.input]
    assert [o.name for o in model.graph.output] == [o.name for o in ref.graph.output]
    run = OnnxRunner(model)
    rng = np.random.default_rng(0)
    x = np.vstack([region.sample(5000, rng), face_points([p.box for p in leaves], 50, rng),
                   np.vstack([p.box.corners() for p in leaves])])
    np.testing.assert_allclose(run(x), net.forward(x), atol=1e-5)
    # batches of any size give the same rows as one big batch
    np.testing.assert_array_equal(run(x[:1]), run(x)[:1])
    np.testing.assert_array_equal(run(x[:7]), run(x)[:7])


def test_dispatcher_takes_the_first_slice_on_a_shared_face_and_clips_outside():
    const = lambda v: Network.from_layers([Dense(np.zeros((1, 1)), np.array([v]))])  # noqa: E731
    region = Box(np.array([0.0]), np.array([2.0]))
    left, right = region.bisect(0)
    run = OnnxRunner(build_dispatcher(region, [left, right], [network_to_onnx(const(v)) for v in (10.0, 20.0)],
                                      network_io(const(0.0))))
    y = run(np.array([[0.5], [1.0], [1.5], [-5.0], [7.0]])).ravel()
    assert y.tolist() == [10.0, 10.0, 20.0, 10.0, 20.0]


def kink_across_a_split(path, V: float = 1e9) -> None:
    """y = x0 + V relu(relu(x0 - p) - t - |x1 - 0.5|) on x0 in [0, 0.2] (p the float32 below 0.1, t = 7e-9): the
    inner neuron is dead for every real x0 <= 0.1, but at the float32 x0 = float32(0.1) > 0.1 it is not."""
    from onnx import TensorProto, helper
    p, t = np.nextafter(np.float32(0.1), np.float32(0)), np.float32(7e-9)
    arrays = {"W1": np.array([[1, 0, 0, 1], [0, 1, -1, 0]]), "b1": np.array([-p, -0.5, 0.5, 0]),
              "W2": np.array([[1, 0], [-1, 0], [-1, 0], [0, 1]]), "b2": np.array([-t, 0]),
              "W3": np.array([[V], [1.0]]), "b3": np.zeros(1)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["z1"]), helper.make_node("Relu", ["z1"], ["h1"]),
             helper.make_node("Gemm", ["h1", "W2", "b2"], ["z2"]), helper.make_node("Relu", ["z2"], ["h2"]),
             helper.make_node("Gemm", ["h2", "W3", "b3"], ["y"])]
    g = helper.make_graph(nodes, "kink", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                          [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def test_the_dispatcher_sends_a_float32_input_to_a_slice_proved_on_it(tmp_path, capsys):
    """The split at x0 = 0.1 is no float32: float32(0.1) lies above it, in the second slice's box.  Its box
    constants rounded to nearest sent that input to the first slice, which was proved (dead neuron) only for
    x0 <= 0.1, and answered 0.1 where the original says 0.55 (unbounded in V).  Rounded inward, it is routed
    to the second slice, and `--verify --certify` still passes."""
    kink_across_a_split(tmp_path / "kink.onnx")
    fam = tmp_path / "fam"
    assert main(["slice", str(tmp_path / "kink.onnx"), "--box", "0:0.2,0:1.2", "-o", str(fam), "--max-slices", "2",
                 "--strategy", "width", "--no-progress"]) == 0
    m = json.loads((fam / MANIFEST).read_text())
    assert [s["hi"][0] for s in m["slices"]] == [0.1, 0.2]
    x = np.array([[np.float32(0.1), 0.5], [np.nextafter(np.float32(0.1), np.float32(0)), 0.5]], np.float32)
    want, got = OnnxRunner(str(tmp_path / "kink.onnx"))(x), OnnxRunner(str(fam / "dispatch.onnx"))(x)
    assert abs(float(want[0, 0]) - 0.55) < 0.01 and np.array_equal(got, want)
    capsys.readouterr()
    assert main(["slice", "--verify", str(fam), "--certify", "--no-progress"]) == 0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6), st.integers(0, 2 ** 31 - 1))
def test_routing_limits_admit_exactly_the_float32_points_of_each_box(cuts, seed):
    """Whatever the split points, a float32 input of the region passes slice s's float32 test exactly when it
    lies in slice s's real box (so the first slice passed was proved on it), and every one passes some slice."""
    from equiv.transform.dispatch import routing_limits
    region = Box(np.array([0.1, -0.3]), np.array([0.7, 0.9]))
    boxes = [region]
    for c in cuts:                      # split the last box at a random real point of its first input
        b = boxes.pop()
        mid = b.lo[0] + c * (b.hi[0] - b.lo[0])
        if not b.lo[0] < mid < b.hi[0]:
            boxes.append(b)
            continue
        boxes += [Box(b.lo, np.array([mid, b.hi[1]])), Box(np.array([mid, b.lo[1]]), b.hi)]
    rlo, rhi, lo32, hi32 = routing_limits(region, boxes)
    rng = np.random.default_rng(seed)
    x = np.vstack([region.sample(500, rng), np.array([[b.hi[0], 0.0] for b in boxes]),
                   np.array([[b.lo[0], 0.0] for b in boxes])]).astype(np.float32)
    for v in (x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))):
        v = np.clip(v, rlo, rhi)                                # what the dispatcher does first
        assert np.all(region.contains(v.astype(np.float64)))
        passes = np.all((v[:, None] >= lo32) & (v[:, None] <= hi32), axis=2)
        inside = np.array([b.contains(v.astype(np.float64)) for b in boxes]).T
        assert np.array_equal(passes, inside) and passes.any(axis=1).all()


# ---- a real ACAS Xu family -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def acas_family(bench, tmp_path_factory):
    box, source = load_region(spec=ACAS / "prop_1.vnnlib")
    fam = slice_model(acas_path(1, 1), box, StabilityOptions(),
                      SliceOptions(max_slices=8, validation_samples=2000, dispatch_samples=20000), region_source=source)
    out = tmp_path_factory.mktemp("acas") / "family"
    return fam, out, write_family(fam, out), box


def test_acas_family_is_small_and_its_dispatcher_matches_the_original(acas_family):
    fam, out, m, box = acas_family
    s = m["summary"]
    assert s["slices"] == len(m["slices"]) == 8 and s["relus_original"] == 300
    assert s["relus_max"] <= fam.tree.relus and s["relus_mean"] < fam.tree.relus   # smaller than one network
    assert {"model", "model_sha256", "region", "slices", "tree", "dispatch", "summary", "options"} <= m.keys()
    assert m["dispatch"] == "dispatch.onnx" and (out / "slices.png").is_file()
    for e in m["slices"]:
        assert {"lo", "hi", "file", "sha256", "relus", "params", "depth", "phases", "proved_by", "validation"} <= e.keys()
        assert e["validation"]["max_abs_diff"] <= 1e-4 and e["phases"]["unknown"] == 0
    assert fam.dispatch_validation.samples > 20000 and fam.dispatch_validation.ok
    original = OnnxRunner(str(acas_path(1, 1)))
    dispatcher = OnnxRunner(str(out / "dispatch.onnx"))
    rng = np.random.default_rng(99)
    boxes = [Box(np.array(e["lo"]), np.array(e["hi"])) for e in m["slices"]]
    x = np.vstack([box.sample(20000, rng), face_points(boxes, 20, rng)])
    assert np.abs(original(x) - dispatcher(x)).max() <= 1e-4
    # each slice file alone equals the original on its own box
    for e, b in zip(m["slices"][:3], boxes):
        xs = b.sample(2000, rng)
        assert np.abs(original(xs) - OnnxRunner(str(out / e["file"]))(xs)).max() <= 1e-4


def _copy(acas_family, tmp_path):
    dst = tmp_path / "family"
    shutil.copytree(acas_family[1], dst)
    return dst


def _verify(folder, capsys, *extra) -> tuple[int, str]:
    code = main(["slice", "--verify", str(folder), "--samples", "4000", *extra])
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def test_verify_passes_on_an_untouched_family(acas_family, tmp_path, capsys):
    folder = _copy(acas_family, tmp_path)
    code, text = _verify(folder, capsys, "--spec", str(ACAS / "prop_1.vnnlib"))
    assert code == 0, text
    assert "family verified" in text and "FAIL" not in text and "equals the region given" in text
    # the verdict says what it covers (a hunt: a manifest with a loosened tolerance verified without a word)
    assert "family verified (on the region given, tolerance 0.0001 from the manifest, slices sampled" in text
    code, text = _verify(folder, capsys, "--spec", str(ACAS / "prop_3.vnnlib"))   # not the family's region
    assert code == 1 and "FAIL  region" in text
    # a region of another size is bad input (exit 2), not a failed family (a hunt: it said FAIL, exit 1)
    code, text = _verify(folder, capsys, "--box", "0:1,0:1")
    assert code == 2 and "the region given has 2 inputs; the family's region has 5" in text


def test_verify_catches_a_moved_split_point(acas_family, tmp_path, capsys):
    """A split moved off the midpoint, with the tree and both slice boxes moved alike, tiles the region and
    passed every check, yet a slice is then used where it was never proved (a hunt, stop 47: 0.089 off at
    tolerance 1e-4).  equiv always splits at the float64 midpoint, so any other split point is refused."""
    folder = _copy(acas_family, tmp_path)
    m = json.loads((folder / MANIFEST).read_text())
    root = m["tree"]
    d, mid = root["split_dim"], root["mid"]
    moved = mid + (root["hi"][d] - root["lo"][d]) * 1e-4

    def move(node, side):
        if "children" in node:
            for c in node["children"]:
                move(c, side)
        if side == 0 and node["hi"][d] == mid:
            node["hi"][d] = moved
        if side == 1 and node["lo"][d] == mid:
            node["lo"][d] = moved
    move(root["children"][0], 0)
    move(root["children"][1], 1)
    root["mid"] = moved
    for sl in m["slices"]:
        sl["hi"][d] = moved if sl["hi"][d] == mid else sl["hi"][d]
        sl["lo"][d] = moved if sl["lo"][d] == mid else sl["lo"][d]
    (folder / MANIFEST).write_text(json.dumps(m))
    code, text = _verify(folder, capsys)
    assert code == 1 and "FAIL  tree" in text and "not at its midpoint" in text


def test_verify_catches_an_edited_box(acas_family, tmp_path, capsys):
    folder = _copy(acas_family, tmp_path)
    m = json.loads((folder / MANIFEST).read_text())
    lo, hi = np.array(m["slices"][2]["lo"]), np.array(m["slices"][2]["hi"])
    d = int(np.argmax(hi - lo))
    m["slices"][2]["hi"][d] = float(lo[d] + (hi[d] - lo[d]) * 0.9)     # leaves a gap
    (folder / MANIFEST).write_text(json.dumps(m))
    code, text = _verify(folder, capsys)
    assert code == 1
    assert "FAIL  tiling" in text and "gap" in text and "differs from its tree leaf" in text


def _shift_output_bias(path, delta: float):
    """The slice file at path with its output bias moved by delta (written in place); returns path."""
    model = onnx.load(str(path))
    init = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT][-1]   # output bias
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + delta, init.name))
    save_onnx_atomic(model, path)
    return path


def test_verify_catches_changed_slice_weights(acas_family, tmp_path, capsys):
    folder = _copy(acas_family, tmp_path)
    _shift_output_bias(folder / "slice_003.onnx", 0.01)
    code, text = _verify(folder, capsys)
    assert code == 1
    assert "slice 3: slice_003.onnx was changed" in text
    assert "slice 3: differs from the original" in text and "FAIL  dispatcher vs original" not in text
    assert "FAIL  dispatcher build" in text         # the dispatcher routes to the old slice 3, not this file


def test_verify_proves_the_dispatcher_is_the_routing_of_the_slices(acas_family, tmp_path, capsys):
    """Sampling cannot see a dispatcher edited on a sliver of the region (here one routing limit moved by one
    float32 step, the manifest's sha256 updated): rebuilding it from the slice files and boxes does."""
    from equiv.apps.simplify import sha256_of
    folder = _copy(acas_family, tmp_path)
    code, text = _verify(folder, capsys)
    assert code == 0 and "ok    dispatcher build" in text
    path = folder / "dispatch.onnx"
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if i.name == "d_hi")
    hi = numpy_helper.to_array(init).copy()
    hi[0, 0] = np.nextafter(hi[0, 0], np.float32(np.inf))
    init.CopyFrom(numpy_helper.from_array(hi, "d_hi"))
    save_onnx_atomic(model, path)
    m = json.loads((folder / MANIFEST).read_text())
    m["dispatch_sha256"] = sha256_of(path)
    (folder / MANIFEST).write_text(json.dumps(m))
    code, text = _verify(folder, capsys)
    assert code == 1 and "FAIL  dispatcher build" in text and "ok    dispatcher vs original" in text


def test_verify_uses_the_tolerance_given_not_the_manifests(acas_family, tmp_path, capsys):
    """A manifest whose tolerance was raised to 1000 does not set the bar when the user gives --tolerance."""
    from equiv.apps.simplify import sha256_of
    folder = _copy(acas_family, tmp_path)
    path = _shift_output_bias(folder / "slice_003.onnx", 0.01)
    m = json.loads((folder / MANIFEST).read_text())
    m["slices"][3]["sha256"] = sha256_of(path)
    m["options"]["slicing"]["tolerance"] = 1000.0
    (folder / MANIFEST).write_text(json.dumps(m))
    code, text = _verify(folder, capsys)
    assert "ok    slices vs original" in text and "(tolerance 1000)" in text
    assert code == 1 and "FAIL  dispatcher build" in text     # the dispatcher still routes to the old slice 3
    code, text = _verify(folder, capsys, "--tolerance", "1e-4")
    assert code == 1 and "FAIL  slices vs original" in text and "slice 3: differs" in text


def test_verify_exit_code_tells_unknown_certificates_from_failures():
    """--verify --certify: certificates neither proved nor refuted exit 3 (as when making the family), any
    failed check 1."""
    from equiv.apps.slicing.verify import Check, VerifyReport
    rep = VerifyReport("f", [Check("tiling", True, "ok"), Check("certificates", False, "slice 2: ...", unknown=True)])
    assert rep.exit_code == 3 and "UNKN  certificates" in rep.format() and rep.to_json()["exit_code"] == 3
    rep.checks.append(Check("files", False, "slice 1 changed"))
    assert rep.exit_code == 1 and "VERIFICATION FAILED" in rep.format()
    assert VerifyReport("f", [Check("tiling", True, "ok")]).exit_code == 0


def test_verify_catches_a_missing_and_a_swapped_slice_file(acas_family, tmp_path, capsys):
    folder = _copy(acas_family, tmp_path)
    (folder / "slice_005.onnx").unlink()
    code, text = _verify(folder, capsys)
    assert code == 1 and "slice 5: slice_005.onnx is missing" in text

    folder2 = _copy(acas_family, tmp_path / "two")
    a, b = folder2 / "slice_000.onnx", folder2 / "slice_001.onnx"
    a.rename(folder2 / "tmp.onnx")
    b.rename(a)
    (folder2 / "tmp.onnx").rename(b)
    code, text = _verify(folder2, capsys)
    assert code == 1 and "slice 0: slice_000.onnx was changed" in text and "slice 1: slice_001.onnx was changed" in text

    folder3 = _copy(acas_family, tmp_path / "three")
    shutil.copy(folder3 / "slice_000.onnx", folder3 / "slice_999.onnx")
    code, text = _verify(folder3, capsys)
    assert code == 1 and "slice_999.onnx in the folder is no slice of the manifest" in text


def test_verify_catches_another_model_and_a_changed_dispatcher(acas_family, tmp_path, capsys):
    folder = _copy(acas_family, tmp_path)
    code, text = _verify(folder, capsys, "--model", str(acas_path(1, 2)))
    assert code == 1 and "FAIL  original model" in text
    shutil.copy(folder / "slice_000.onnx", folder / "dispatch.onnx")
    code, text = _verify(folder, capsys)
    assert code == 1 and "dispatcher dispatch.onnx was changed" in text and "FAIL  dispatcher vs original" in text


def test_verify_bad_input_exits_2(tmp_path, capsys):
    assert main(["slice", "--verify", str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["slice", "--verify", str(tmp_path / "empty")]) == 2
    assert "manifest.json" in capsys.readouterr().err


# ---- the CLI on a tiny model -----------------------------------------------------------------------

@pytest.fixture
def tiny_model(tmp_path):
    net, _ = random_problem(11, 2, [8, 8], 2, False)
    path = tmp_path / "tiny.onnx"
    save_onnx_atomic(network_to_onnx(net), path)
    return path


def test_cli_slice_writes_a_family_that_verifies_and_refuses_to_overwrite_it(tiny_model, tmp_path, capsys):
    out = tmp_path / "fam"
    args = ["slice", str(tiny_model), "--box=-1:1,-1:1", "-o", str(out), "--max-slices", "6", *FAST]
    assert main(args + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 1 < summary["slices"] <= 6 and summary["relus_original"] == 16
    assert summary["dispatch_max_abs_diff"] <= 1e-4 and summary["relus_max"] <= 16
    files = sorted(p.name for p in out.iterdir())
    assert {"manifest.json", "dispatch.onnx", "slices.png", "slice_000.onnx"} <= set(files)
    assert main(["slice", "--verify", str(out), "--samples", "3000"]) == 0
    before = (out / MANIFEST).read_bytes()
    assert main(args) == 2                                   # already holds a family
    assert "already holds a family made by equiv" in capsys.readouterr().err
    assert (out / MANIFEST).read_bytes() == before
    assert main(args + ["--force", "--strategy", "width"]) == 0
    assert json.loads((out / MANIFEST).read_text())["summary"]["strategy"] == "width"


def test_verify_refuses_malformed_manifests_and_finds_the_model_by_its_sha256(tiny_model, tmp_path, capsys,
                                                                              monkeypatch):
    """Found by a hunt: malformed manifest fields crashed --verify (exit 4), and a relative model path was read
    from the working directory first, so a good family failed against another file of that name there."""
    import copy
    out = tmp_path / "fam"
    assert main(["slice", str(tiny_model), "--box=-1:1,-1:1", "-o", str(out), "--max-slices", "3", *FAST]) == 0
    good = json.loads((out / MANIFEST).read_text())
    other, _ = random_problem(12, 2, [8, 8], 2, False)
    (tmp_path / "cwd").mkdir()
    save_onnx_atomic(network_to_onnx(other), tmp_path / "cwd" / "tiny.onnx")
    m = copy.deepcopy(good)
    m["model"] = "tiny.onnx"                       # relative: names the other file from tmp_path/cwd
    (out / MANIFEST).write_text(json.dumps(m))
    monkeypatch.chdir(tmp_path / "cwd")
    capsys.readouterr()
    assert main(["slice", "--verify", str(out), "--samples", "2000"]) == 0
    assert str(tiny_model) in capsys.readouterr().out
    edits = [lambda m: m["slices"][0].__setitem__("id", [0]), lambda m: m.__setitem__("model", 7),
             lambda m: m["options"].__setitem__("slicing", None), lambda m: m["slices"][0].__setitem__("lo", [0.0]),
             lambda m: m.__setitem__("pipeline", "foo"), lambda m: m["options"]["slicing"].__setitem__("tolerance", -1),
             lambda m: m["region"].__setitem__("hi", "wide")]
    for edit in edits:
        m = copy.deepcopy(good)
        edit(m)
        (out / MANIFEST).write_text(json.dumps(m))
        assert main(["slice", "--verify", str(out), "--samples", "2000"]) == 2
        assert "is malformed" in capsys.readouterr().err
    (out / MANIFEST).write_text("[" * 100000 + "]" * 100000)          # nested beyond the JSON reader's depth
    assert main(["slice", "--verify", str(out)]) == 2


def test_slice_output_folder_is_rechecked_at_the_swap_and_keeps_its_mode(tiny_model, tmp_path, capsys,
                                                                         monkeypatch):
    """Found by a hunt: two runs into one new folder both succeeded, the later silently replacing the other's
    family; an existing empty 0700 folder came back 0755; `-o .` renamed the working directory away."""
    import os
    from equiv.apps import slicing as pkg
    out = tmp_path / "fam"
    out.mkdir(mode=0o700)
    args = ["slice", str(tiny_model), "--box=-1:1,-1:1", "-o", str(out), "--max-slices", "2", *FAST]
    assert main(args) == 0
    assert os.stat(out).st_mode & 0o777 == 0o700
    # another run fills the claimed (new) folder while this one works: not replaced, nothing written
    out2 = tmp_path / "race"
    real_write = pkg.write_family

    def other_run_first(fam, where, force=False):
        real_write(fam, where, force=force)                    # the other run's family lands first
        return real_write(fam, where, force=force)
    monkeypatch.setattr(pkg, "write_family", other_run_first)
    capsys.readouterr()
    assert main(["slice", str(tiny_model), "--box=-1:1,-1:1", "-o", str(out2), "--max-slices", "2", *FAST]) == 2
    assert "filled while this run worked" in capsys.readouterr().err
    monkeypatch.setattr(pkg, "write_family", real_write)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".race.")]       # no staging folder left
    # the working directory (or a folder holding it) is refused
    monkeypatch.chdir(out2)
    assert main(["slice", str(tiny_model), "--box=-1:1,-1:1", "-o", ".", "--max-slices", "2", "--force", *FAST]) == 2
    assert "working directory" in capsys.readouterr().err


def test_cli_slice_bad_input_exits_2(tiny_model, tmp_path, capsys):
    assert main(["slice", str(tiny_model), "--box=-1:1", "-o", str(tmp_path / "a"), *FAST]) == 2   # wrong dimension
    assert main(["slice", str(tiny_model), "--box=-1:1,-1:1", *FAST]) == 2                        # no -o
    assert main(["slice", str(tmp_path / "missing.onnx"), "--box=-1:1,-1:1", "-o", str(tmp_path / "b")]) == 2
    with pytest.raises(SystemExit) as exc:          # argparse refuses a non-positive budget
        main(["slice", str(tiny_model), "--box=-1:1,-1:1", "-o", str(tmp_path / "c"), "--max-slices", "0"])
    assert exc.value.code == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    (tmp_path / "file").write_text("x")
    assert main(["slice", str(tiny_model), "--box=-1:1,-1:1", "-o", str(tmp_path / "file")]) == 2
    capsys.readouterr()


def test_a_wrong_slice_is_a_bug_and_nothing_is_written(tiny_model, tmp_path, monkeypatch, capsys):
    import equiv.apps.simplify as simplify_mod
    real = simplify_mod.reduce_network

    def broken(net, dead, active):
        small = real(net, dead, active)
        d = small.dense
        return small.with_layers(d[:-1] + [Dense(d[-1].W, d[-1].b + 0.5)], small.masks)

    monkeypatch.setattr(simplify_mod, "reduce_network", broken)
    out = tmp_path / "fam"
    assert main(["slice", str(tiny_model), "--box=-1:1,-1:1", "-o", str(out), "--max-slices", "3", *FAST]) == 1
    assert "BUG" in capsys.readouterr().err and not out.exists()


# ---- reuse of a parent's proofs ----------------------------------------------------------------------

def test_parent_bounds_and_witnesses_are_reused_soundly(acas_1_1, prop3_box):
    net = acas_1_1
    parent = prove_stability(net, prop3_box, StabilityOptions())
    child = prop3_box.bisect(int(np.argmax(prop3_box.hi - prop3_box.lo)))[0]
    opt = StabilityOptions(method="deeppoly")
    alone = prove_stability(net, child, opt)
    reused = prove_stability(net, child, opt, known=parent.bounds, seen_points=parent.witnesses)
    assert "inherited" not in alone.stage_counts
    assert reused.stage_counts["inherited"] > reused.stage_counts["deeppoly"] == alone.stage_counts["deeppoly"]
    assert "inherited" in reused.proved_by()
    assert child.contains(reused.witnesses).all()           # only the parent's points inside the child count
    # no proved phase is contradicted by a real point of the child
    _, pre = net.forward(np.vstack([child.sample(20000, np.random.default_rng(5)), child.corners()]), return_pre=True)
    for p in reused.neurons:
        z = pre[p.layer - 1][:, p.index]
        assert not (p.phase == "dead" and (z > 0).any()) and not (p.phase == "active" and (z < 0).any())


def test_bench_slicing_needs_the_benchmarks(tmp_path, capsys):
    assert main(["bench", "--suite", "slicing", "--benchmarks", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "benchmark folder not found" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_cli_slice_certify_records_a_proof_per_slice(bench, tmp_path, capsys):
    out = tmp_path / "fam"
    code = main(["slice", str(acas_path(1, 1)), "--spec", str(ACAS / "prop_3.vnnlib"), "-o", str(out),
                 "--max-slices", "2", "--certify", "--no-progress", "--validation-samples", "2000",
                 "--dispatch-samples", "5000"])
    assert code == 0
    m = json.loads((out / MANIFEST).read_text())
    assert len(m["slices"]) == 2
    for s in m["slices"]:
        c = s["certificate"]
        assert c["verdict"] == "equivalent" and c["max_diff_upper"] <= 1e-4 and c["counterexample"] is None
    assert any("--certify: 2 of 2" in n for n in m["notes"])
    # each slice records the phases it was reduced with (of this original, on its box)
    from equiv.prove.carried import model_sha256, read_claims
    for s in m["slices"]:
        claims, why = read_claims(onnx.load(str(out / s["file"])))
        assert why is None and claims.source_sha256 == model_sha256(acas_path(1, 1)) == m["model_sha256"]
        assert claims.region["sha256"] == Box(s["lo"], s["hi"]).sha256()
    # --verify --certify re-reads the slice files and proves each again
    code, text = _verify(out, capsys, "--certify")
    assert code == 0 and "ok    certificates: all 2 slices proved" in text, text


def test_cli_slice_certify_proves_mnist_slices_by_their_records(bench, tmp_path, capsys):
    """mnist 256x4 on prop_0 in two slices: each slice's recorded phases are re-proved on its box and the file is
    bounded against their reduction, in about a second a slice (the search from scratch left both unknown after its
    60 s, exit 3)."""
    mnist = bench / "mnist_fc"
    out = tmp_path / "fam"
    code = main(["slice", str(mnist / "mnist-net_256x4.onnx"), "--spec", str(mnist / "prop_0_0.03.vnnlib"), "-o",
                 str(out), "--max-slices", "2", "--certify", "--no-progress", "--validation-samples", "1000",
                 "--dispatch-samples", "2000"])
    assert code == 0
    m = json.loads((out / MANIFEST).read_text())
    for s in m["slices"]:
        c = s["certificate"]
        assert c["verdict"] == "equivalent" and c["max_diff_upper"] <= 1e-4
        assert any("simplification of A (sha256 recorded" in n for n in c["notes"])


def test_ancestor_bounds_hold_on_each_slice_and_need_a_tree_that_nests(acas_family):
    """`--certify`'s second try starts from the bounds a slice's ancestors tighten, root first: they contain
    the original's sampled pre-activations on the slice's box, are shared by siblings (one proof per
    ancestor), and are refused (None) when the manifest's tree has an ancestor box that does not hold the
    slice (a tree is read from a file)."""
    import copy
    from conftest import assert_contains, layer_values, samples_with_corners
    from equiv.apps.slicing.family import ancestor_bounds, tree_path
    fam, out, m, _ = acas_family
    tree, cache = m["tree"], {}
    paths = [tree_path(tree, i) for i in range(len(m["slices"]))]
    assert all(p and p[0] is tree for p in paths) and tree_path(tree, 99) is None
    rng = np.random.default_rng(0)
    for i in (0, 1, len(paths) - 1):
        box = Box(m["slices"][i]["lo"], m["slices"][i]["hi"])
        b = ancestor_bounds(fam.original, tree, i, box, "highs", 20.0, cache)
        assert len(b.lo) == len(fam.original.dense)
        assert_contains(b, layer_values(fam.original, samples_with_corners(box, 2000, rng)), what="ancestors")
    assert len(cache) == len({(tuple(n["lo"]), tuple(n["hi"])) for i in (0, 1, len(paths) - 1) for n in paths[i]})
    bad = copy.deepcopy(tree)
    node = tree_path(bad, 0)[-1]
    node["hi"] = list(m["slices"][0]["lo"])        # a parent box that is the slice's lowest corner
    box0 = Box(m["slices"][0]["lo"], m["slices"][0]["hi"])
    assert ancestor_bounds(fam.original, bad, 0, box0, "highs", 20.0, {}) is None
