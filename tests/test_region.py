"""Input regions: VNN-LIB parsing (boxes and disjunctions), --box strings, L-infinity balls, Box helpers."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ACAS, MNIST, MODELS, needs_bench
from equiv.errors import RegionError
from equiv.spec.region import Box, ball, box_from_string, boxes_from_vnnlib, hull, load_region, load_regions


def write_vnnlib(tmp_path, n: int, body: str, name: str = "spec.vnnlib"):
    decl = "".join(f"(declare-const X_{i} Real)\n" for i in range(n))
    path = tmp_path / name
    path.write_text(decl + "(declare-const Y_0 Real)\n" + body)
    return path


# ---- real VNN-LIB files ------------------------------------------------------------------------

@needs_bench
def test_acasxu_prop3_values():
    box, desc = load_region(spec=ACAS / "prop_3.vnnlib")
    np.testing.assert_array_equal(box.lo, [-0.303531156, -0.009549297, 0.493380324, 0.3, 0.3])
    np.testing.assert_array_equal(box.hi, [-0.298552812, 0.009549297, 0.5, 0.5, 0.5])
    assert box.dim == 5
    assert "prop_3.vnnlib" in desc and "hull" not in desc


@needs_bench
def test_acasxu_prop6_disjunction_and_hull():
    boxes = boxes_from_vnnlib(ACAS / "prop_6.vnnlib")
    assert len(boxes) == 2
    common_lo = [-0.129289109, None, -0.499999896, -0.5, -0.5]
    common_hi = [0.700434925, None, -0.499204121, 0.5, 0.5]
    for b in boxes:
        for i in (0, 2, 3, 4):
            assert b.lo[i] == common_lo[i] and b.hi[i] == common_hi[i]
    assert (boxes[0].lo[1], boxes[0].hi[1]) == (0.11140846, 0.499999896)
    assert (boxes[1].lo[1], boxes[1].hi[1]) == (-0.499999896, -0.11140846)
    box, desc = load_region(spec=ACAS / "prop_6.vnnlib")
    assert "hull of 2" in desc
    np.testing.assert_array_equal(box.lo, [-0.129289109, -0.499999896, -0.499999896, -0.5, -0.5])
    np.testing.assert_array_equal(box.hi, [0.700434925, 0.499999896, -0.499204121, 0.5, 0.5])
    np.testing.assert_array_equal(hull(boxes).lo, box.lo)


@needs_bench
@pytest.mark.parametrize("k", range(1, 11))
def test_all_acasxu_props_parse(k):
    box, _ = load_region(spec=ACAS / f"prop_{k}.vnnlib")
    assert box.dim == 5
    assert np.all(box.lo <= box.hi)
    assert np.all(box.lo >= -0.51) and np.all(box.hi <= 0.71)   # the normalised ACAS Xu input ranges


@needs_bench
def test_mnist_prop_784_dims():
    box, _ = load_region(spec=MNIST / "prop_0_0.03.vnnlib")
    assert box.dim == 784
    assert box.lo[0] == 0.0 and box.hi[0] == 0.029999999329447746
    assert box.lo[300] == 0.9268627762794495 and box.hi[300] == 0.9868627190589905
    assert np.all(box.lo >= 0) and np.all(box.hi <= 1)
    w = box.hi - box.lo
    assert np.all(w <= 0.06 + 1e-7) and np.all(w >= 0.03 - 1e-7)   # radius 0.03, clipped to [0, 1]


def test_demo_ball_vnnlib_matches_ball():
    box, _ = load_region(spec=MODELS / "digits_mlp_ball.vnnlib")
    assert box.dim == 64
    c = np.load(MODELS / "digits_mlp_center.npy")
    ref = ball(c, 0.02, clip=(0.0, 1.0))
    np.testing.assert_allclose(box.lo, ref.lo, atol=1e-6)
    np.testing.assert_allclose(box.hi, ref.hi, atol=1e-6)
    b2, desc = load_region(center=MODELS / "digits_mlp_center.npy", radius=0.02, clip=(0.0, 1.0))
    np.testing.assert_array_equal(b2.lo, ref.lo)
    assert desc.startswith("ball:")


# ---- VNN-LIB syntax --------------------------------------------------------------------------

def test_vnnlib_forms_and_comments(tmp_path):
    body = """
; (assert (<= X_0 -100))   a commented-out constraint must be ignored
(assert (<= X_0 1.5))
(assert (>= X_0 -2e-1))
(assert (>= 3 X_1))            ; number first: X_1 <= 3
(assert (<= -4 X_1))           ; X_1 >= -4
(assert (and (<= X_2 0.25) (>= X_2 0.25)))
(assert (<= X_0 2.0))          ; the tighter of two bounds wins
(assert (<= Y_0 0.0))          ; output constraints are ignored
"""
    (box,) = boxes_from_vnnlib(write_vnnlib(tmp_path, 3, body))
    np.testing.assert_array_equal(box.lo, [-0.2, -4.0, 0.25])
    np.testing.assert_array_equal(box.hi, [1.5, 3.0, 0.25])


def test_vnnlib_missing_bound(tmp_path):
    path = write_vnnlib(tmp_path, 3, "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n"
                                     "(assert (>= X_1 0))\n(assert (<= X_2 1))\n")
    with pytest.raises(RegionError, match="X_2"):
        load_region(spec=path)


def test_vnnlib_lo_above_hi(tmp_path):
    path = write_vnnlib(tmp_path, 1, "(assert (<= X_0 0))\n(assert (>= X_0 1))\n")
    with pytest.raises(RegionError, match="input region is empty"):
        boxes_from_vnnlib(path)


def test_vnnlib_other_errors(tmp_path):
    with pytest.raises(RegionError, match="not found"):
        boxes_from_vnnlib(tmp_path / "missing.vnnlib")
    no_x = tmp_path / "nox.vnnlib"
    no_x.write_text("(declare-const Y_0 Real)\n(assert (<= Y_0 1))\n")
    with pytest.raises(RegionError, match="no input variables"):
        boxes_from_vnnlib(no_x)
    with pytest.raises(RegionError, match="X_5"):
        boxes_from_vnnlib(write_vnnlib(tmp_path, 2, "(assert (<= X_5 1))\n", "undeclared.vnnlib"))
    with pytest.raises(RegionError, match="relational.vnnlib:4: .*couples several inputs.*boxes"):
        boxes_from_vnnlib(write_vnnlib(tmp_path, 2, "(assert (<= X_0 X_1))\n", "relational.vnnlib"))


def test_vnnlib_disjunction_shares_common_bounds(tmp_path):
    body = """(assert (<= X_1 1))
(assert (>= X_1 0))
(assert (or (and (<= X_0 1) (>= X_0 0)) (and (<= X_0 5) (>= X_0 4)) (and (<= X_0 -1) (>= X_0 -2))))
"""
    boxes = boxes_from_vnnlib(write_vnnlib(tmp_path, 2, body))
    assert [(b.lo[0], b.hi[0]) for b in boxes] == [(0, 1), (4, 5), (-2, -1)]
    assert all((b.lo[1], b.hi[1]) == (0, 1) for b in boxes)
    box, _ = load_region(spec=tmp_path / "spec.vnnlib")
    np.testing.assert_array_equal(box.lo, [-2, 0])
    np.testing.assert_array_equal(box.hi, [5, 1])


# ---- Box -----------------------------------------------------------------------------------------

def test_box_errors():
    with pytest.raises(RegionError, match="empty box"):
        Box(np.array([0.0, 1.0]), np.array([1.0, 0.5]))
    with pytest.raises(RegionError, match="finite"):
        Box(np.array([0.0, -np.inf]), np.array([1.0, 1.0]))
    with pytest.raises(RegionError, match="finite"):
        Box(np.array([0.0]), np.array([np.nan]))
    with pytest.raises(RegionError, match="lengths"):
        Box(np.zeros(2), np.ones(3))


def test_check_dim():
    box = Box(np.zeros(3), np.ones(3))
    assert box.check_dim(3) is box
    with pytest.raises(RegionError, match="3 dimensions but the network has 5 inputs"):
        box.check_dim(5)


def test_box_from_string():
    box = box_from_string(" 0:1 , -2.5:3e-1,4:4")
    np.testing.assert_array_equal(box.lo, [0, -2.5, 4])
    np.testing.assert_array_equal(box.hi, [1, 0.3, 4])
    assert load_region(box="0:1,2:3")[0].dim == 2


@pytest.mark.parametrize("spec", ["0:1,2", "0:1;2:3", "a:b", "0:1:2", "0:1,"])
def test_box_from_string_malformed(spec):
    with pytest.raises(RegionError, match="not of the form lo:hi"):
        box_from_string(spec)


@pytest.mark.parametrize("spec", ["", "  "])
def test_box_from_string_empty(spec):
    with pytest.raises(RegionError, match="--box is empty.*lo:hi"):
        box_from_string(spec)


@pytest.mark.parametrize("spec, what", [("0:inf", "entry 0 .*finite"), ("-inf:0", "entry 0 .*finite"),
                                        ("0:1,nan:1", "entry 1 .*finite"), ("0:NaN", "finite"),
                                        ("1:0", "entry 0 .*lower bound 1.0 is above upper bound 0.0")])
def test_box_from_string_bad_values(spec, what):
    with pytest.raises(RegionError, match=what):
        box_from_string(spec)


def test_ball_and_clip():
    b = ball(np.array([0.0, 0.5, 0.99]), 0.1)
    np.testing.assert_allclose(b.lo, [-0.1, 0.4, 0.89])
    np.testing.assert_allclose(b.hi, [0.1, 0.6, 1.09])
    c = ball(np.array([[0.0, 0.5], [0.99, 1.0]]), 0.1, clip=(0.0, 1.0))   # centre is flattened
    np.testing.assert_allclose(c.lo, [0.0, 0.4, 0.89, 0.9])
    np.testing.assert_allclose(c.hi, [0.1, 0.6, 1.0, 1.0])
    z = ball(np.array([0.3]), 0.0)
    assert z.lo[0] == z.hi[0] == 0.3


@pytest.mark.parametrize("radius", [-0.1, np.inf, np.nan])
def test_ball_bad_radius(radius):
    with pytest.raises(RegionError, match="radius"):
        ball(np.zeros(2), radius)


def test_ball_infinite_centre():
    with pytest.raises(RegionError, match="finite"):
        ball(np.array([0.0, np.inf]), 0.1)


def test_load_region_needs_exactly_one_source(tmp_path):
    with pytest.raises(RegionError, match="exactly one"):
        load_region()
    with pytest.raises(RegionError, match="exactly one"):
        load_region(spec=tmp_path / "a.vnnlib", box="0:1")
    np.save(tmp_path / "c.npy", np.zeros(3))
    with pytest.raises(RegionError, match="radius"):
        load_region(center=tmp_path / "c.npy")
    with pytest.raises(RegionError, match="radius"):
        load_region(center=tmp_path / "c.npy", radius=-1)
    (tmp_path / "junk.npy").write_text("not numpy")
    with pytest.raises(RegionError, match="cannot read"):
        load_region(center=tmp_path / "junk.npy", radius=0.1)


def test_bisect_tiles_parent(rng):
    box = Box(np.array([-1.0, 0.0, 2.0]), np.array([1.0, 3.0, 2.5]))
    for d in range(3):
        a, b = box.bisect(d)
        mid = (box.lo[d] + box.hi[d]) / 2
        assert a.hi[d] == b.lo[d] == mid
        np.testing.assert_array_equal(a.lo, box.lo)
        np.testing.assert_array_equal(b.hi, box.hi)
        others = np.arange(3) != d
        np.testing.assert_array_equal(a.hi[others], box.hi[others])
        np.testing.assert_array_equal(b.lo[others], box.lo[others])
        np.testing.assert_allclose(np.prod(a.hi - a.lo) + np.prod(b.hi - b.lo), np.prod(box.hi - box.lo))
        pts = box.sample(2000, rng)
        assert np.all(a.contains(pts) | b.contains(pts))
        assert np.all(box.contains(a.sample(100, rng))) and np.all(box.contains(b.sample(100, rng)))


def test_corners():
    box = Box(np.array([0.0, 1.0, -1.0]), np.array([1.0, 1.0, 2.0]))   # dim 1 is degenerate
    c = box.corners()
    assert c.shape == (4, 3)
    assert len({tuple(p) for p in c}) == 4
    assert np.all(c[:, 1] == 1.0)
    assert set(c[:, 0]) == {0.0, 1.0} and set(c[:, 2]) == {-1.0, 2.0}
    assert np.all(box.contains(c))
    big = Box(np.zeros(11), np.ones(11))
    assert big.corners(limit=2048).shape == (2048, 11)
    assert big.corners(limit=1024).shape == (0, 11)


def test_sample_contains_center_radius_json(rng):
    box = Box(np.array([-1.0, 2.0]), np.array([3.0, 2.0]))
    pts = box.sample(500, rng)
    assert pts.shape == (500, 2) and np.all(box.contains(pts))
    np.testing.assert_array_equal(box.center, [1.0, 2.0])
    np.testing.assert_array_equal(box.radius, [2.0, 0.0])
    assert not box.contains(np.array([3.1, 2.0]))[0]
    assert box.contains(np.array([3.1, 2.0]), tol=0.2)[0]
    assert box.to_json() == {"lo": [-1.0, 2.0], "hi": [3.0, 2.0]}


# ---- load_regions and option checks ------------------------------------------------------------

def test_load_regions_every_box(tmp_path):
    body = "(assert (<= X_1 1))\n(assert (>= X_1 0))\n(assert (or (and (<= X_0 1) (>= X_0 0)) (and (<= X_0 5) (>= X_0 4))))\n"
    path = write_vnnlib(tmp_path, 2, body)
    boxes, desc = load_regions(spec=path)
    assert [(b.lo.tolist(), b.hi.tolist()) for b in boxes] == [([0, 0], [1, 1]), ([4, 0], [5, 1])]
    assert desc == f"vnnlib:{path} (union of 2 input boxes)"
    box, desc = load_region(spec=path)
    assert desc == f"vnnlib:{path} (hull of 2 input boxes)"
    np.testing.assert_array_equal(box.lo, [0, 0])
    np.testing.assert_array_equal(box.hi, [5, 1])
    boxes, desc = load_regions(box="0:1,2:3")
    assert len(boxes) == 1 and desc == "box" and boxes[0].hi.tolist() == [1, 3]
    np.save(tmp_path / "c.npy", np.array([0.5, 0.99]))
    boxes, desc = load_regions(center=tmp_path / "c.npy", radius=0.1, clip=(0.0, 1.0))
    assert len(boxes) == 1 and desc.startswith("ball:")
    np.testing.assert_allclose(boxes[0].hi, [0.6, 1.0])


def test_clip_and_radius_only_for_balls(tmp_path):
    path = write_vnnlib(tmp_path, 1, "(assert (<= X_0 1))\n(assert (>= X_0 0))\n")
    for load in (load_region, load_regions):
        with pytest.raises(RegionError, match="--clip applies only to --center/--radius balls"):
            load(spec=path, clip=(0.0, 1.0))
        with pytest.raises(RegionError, match="--clip applies only to --center/--radius balls"):
            load(box="0:1", clip=(0.0, 1.0))
        with pytest.raises(RegionError, match="--radius applies only to --center balls"):
            load(box="0:1", radius=0.1)
