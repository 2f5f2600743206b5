"""Shared fixtures and helpers for the equiv test suite.

Real benchmark networks live in ``../shared/benchmarks`` (relative to the repository root); every test
that needs them uses the ``needs_bench`` marker (or a fixture that depends on it) and skips cleanly
when the folder is absent.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# Hypothesis draws the same examples on every run (a CI verdict must not depend on luck); set
# HYPOTHESIS_PROFILE=explore to draw new random examples while developing.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

from equiv.ir.network import Dense, Network

ROOT = Path(__file__).resolve().parents[1]
BENCH = (ROOT / ".." / "shared" / "benchmarks").resolve()
ACAS = BENCH / "acasxu"
MNIST = BENCH / "mnist_fc"
MODELS = ROOT / "models"

needs_bench = pytest.mark.skipif(not (ACAS.is_dir() and MNIST.is_dir()),
                                 reason=f"benchmark networks not found at {BENCH}")


def acas_path(a: int, b: int) -> Path:
    return ACAS / f"ACASXU_run2a_{a}_{b}_batch_2000.onnx"


def bench_onnx_files() -> list[Path]:
    """All benchmark ONNX files (empty when the benchmarks are absent: parametrized tests then skip)."""
    if not BENCH.is_dir():
        return []
    return sorted(ACAS.glob("*.onnx")) + sorted(MNIST.glob("*.onnx"))


@pytest.fixture(scope="session")
def bench() -> Path:
    """The benchmark folder; skips the test when it is absent."""
    if not (ACAS.is_dir() and MNIST.is_dir()):
        pytest.skip(f"benchmark networks not found at {BENCH}")
    return BENCH


_NET_CACHE: dict = {}


def load_cached(path: Path) -> Network:
    """Load an ONNX network once per session (tests must not mutate the returned network)."""
    from equiv.ir.chain_io import load_onnx

    key = str(path)
    if key not in _NET_CACHE:
        _NET_CACHE[key] = load_onnx(path)
    return _NET_CACHE[key]


@pytest.fixture(scope="session")
def acas_1_1(bench) -> Network:
    return load_cached(acas_path(1, 1))


@pytest.fixture(scope="session")
def prop3_box(bench):
    from equiv.spec.region import load_region

    return load_region(spec=ACAS / "prop_3.vnnlib")[0]


@pytest.fixture(scope="session")
def prop4_box(bench):
    from equiv.spec.region import load_region

    return load_region(spec=ACAS / "prop_4.vnnlib")[0]


@pytest.fixture(scope="session")
def mnist_256x2(bench) -> Network:
    return load_cached(MNIST / "mnist-net_256x2.onnx")


@pytest.fixture(scope="session")
def mnist_box(bench):
    from equiv.spec.region import load_region

    return load_region(spec=MNIST / "prop_0_0.03.vnnlib")[0]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def tiny_net(layers: list[tuple[list, list]], masks=None) -> Network:
    """A Network from [(W, b), ...] given as nested lists."""
    return Network.from_layers([Dense(np.array(W, dtype=float), np.array(b, dtype=float)) for W, b in layers],
                               masks)


def samples_with_corners(box, n: int, rng: np.random.Generator) -> np.ndarray:
    """n uniform points of the box plus all its corners (when there are few) and its centre."""
    return np.vstack([box.sample(n, rng), box.corners(limit=1024), box.center[None]])


def assert_contains(bounds, pre_and_out: list[np.ndarray], tol: float = 0.0, what: str = "bounds"):
    """Every sampled value of every layer (hidden pre-activations then the output) lies in the bounds."""
    assert len(pre_and_out) == len(bounds.lo) == len(bounds.hi)
    for k, (z, lo, hi) in enumerate(zip(pre_and_out, bounds.lo, bounds.hi)):
        below = z < lo - tol
        above = z > hi + tol
        assert not below.any(), (f"{what}: layer {k + 1}: {below.sum()} sampled values below the lower bound "
                                 f"(worst by {np.max(lo - z):.3g})")
        assert not above.any(), (f"{what}: layer {k + 1}: {above.sum()} sampled values above the upper bound "
                                 f"(worst by {np.max(z - hi):.3g})")


def layer_values(net: Network, x: np.ndarray) -> list[np.ndarray]:
    """The pre-activations of every dense layer (hidden layers and output) at points x."""
    out, pre = net.forward(x, return_pre=True)
    return list(pre) + [out]


# ---- hypothesis: small random ReLU networks over random boxes ---------------------------------------

try:
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    st = None


def random_problem(seed: int, n_in: int, widths: list[int], n_out: int, linear_channels: bool):
    """A random network (some linear channels if asked) and a random box, reproducible from the seed."""
    from equiv.spec.region import Box

    r = np.random.default_rng(seed)
    sizes = [n_in] + list(widths) + [n_out]
    dense = [Dense(r.normal(size=(b, a)), r.normal(scale=0.5, size=b)) for a, b in zip(sizes, sizes[1:])]
    masks = [(r.random(w) > 0.25) if linear_channels else np.ones(w, bool) for w in widths]
    lo = r.uniform(-2.0, 1.0, size=n_in)
    hi = lo + r.uniform(0.05, 2.0, size=n_in)
    return Network.from_layers(dense, masks), Box(lo, hi)


if st is not None:
    @st.composite
    def small_problems(draw, max_layers: int = 3, max_width: int = 6, linear_channels: bool = True):
        """(net, box): 2-3 inputs, 1-max_layers hidden layers of 2-max_width neurons, 1-2 outputs."""
        n_in = draw(st.integers(2, 3))
        widths = draw(st.lists(st.integers(2, max_width), min_size=1, max_size=max_layers))
        n_out = draw(st.integers(1, 2))
        seed = draw(st.integers(0, 2 ** 32 - 1))
        return random_problem(seed, n_in, widths, n_out, linear_channels)


# ---- brute force ---------------------------------------------------------------------------------

def exact_max(net: Network, box, k: int, w: np.ndarray, b: float) -> float:
    """max over the box of w . z_k + b (z_k: pre-activation of dense layer k, 0-based), by enumerating the
    phase of every ReLU of layers < k and solving an LP over the input for each pattern (2^#ReLUs LPs)."""
    from scipy.optimize import linprog

    dense, masks = net.dense, net.masks
    relus = [(j, i) for j in range(k) for i in np.flatnonzero(masks[j])]
    best = -np.inf
    for pattern in itertools.product((0, 1), repeat=len(relus)):
        on = dict(zip(relus, pattern))
        A, c = np.eye(box.dim), np.zeros(box.dim)        # h_j = A x + c on this pattern
        A_ub, b_ub = [], []
        for j in range(k):
            Z, z = dense[j].W @ A, dense[j].W @ c + dense[j].b
            for i in np.flatnonzero(masks[j]):
                if on[(j, i)]:
                    A_ub.append(-Z[i].copy())            # z_i >= 0
                    b_ub.append(z[i])
                else:
                    A_ub.append(Z[i].copy())             # z_i <= 0, and h_i = 0
                    b_ub.append(-z[i])
                    Z[i], z[i] = 0.0, 0.0
            A, c = Z, z
        obj, off = w @ dense[k].W @ A, w @ (dense[k].W @ c + dense[k].b) + b
        res = linprog(-obj, A_ub=np.array(A_ub) if A_ub else None, b_ub=np.array(b_ub) if b_ub else None,
                      bounds=list(zip(box.lo, box.hi)), method="highs")
        if res.status == 0:
            best = max(best, -res.fun + off)
    return best


# ---- graph IR: the convolutional / residual networks (../shared/benchmarks/cifar) -----------------

CIFAR = BENCH / "cifar"

needs_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason=f"cifar benchmark networks not found at {CIFAR}")

# network stem -> the VNN-LIB region the published CROWN/interval reference counts were measured on
# (cifar/README.md), with those counts of stable ReLUs
CIFAR_REFERENCE = {
    "resnet_2b": ("resnet_2b-img386-eps2_255.vnnlib", {"interval": 3091, "crown": 5284}),
    "cifar_deep_kw": ("cifar_deep_kw-img386-eps0.024183006535947717.vnnlib", {"interval": 5250, "crown": 5821}),
    "cifar_wide_kw": ("cifar_wide_kw-img19-eps0.007973856209150327.vnnlib", {"interval": 5553, "crown": 5715}),
    "cifar10_small": ("networkcifar10_small_index1189_eps0.012_target1_orig0.vnnlib", {"interval": 1102}),
    "Convnet_avgpool": ("avgpool_prop_0_0.02.vnnlib", {"interval": 21085, "crown": 21085}),
}

_GRAPH_CACHE: dict = {}


def load_graph_cached(path: Path):
    """Import an ONNX file as a graph IR once per session (checked against onnxruntime at import; tests
    must not mutate the returned graph)."""
    from equiv.ir import load_graph

    key = str(path)
    if key not in _GRAPH_CACHE:
        _GRAPH_CACHE[key] = load_graph(path)
    return _GRAPH_CACHE[key]


def load_box(spec: Path):
    """The first box of a VNN-LIB file."""
    from equiv.spec.region import load_region

    return load_region(spec=spec)[0]


def lp_optima(model, objectives) -> np.ndarray:
    """max c.v + off over a LinearModel's LP relaxation for each (c, off), by HiGHS with feasibility tolerances
    of 1e-10 (its default 1e-7 lets the optimum overshoot by about that): the reference for ADMM's bounds."""
    from scipy.optimize import linprog
    A = model.A.tocsr()
    eq = model.row_lo == model.row_hi
    up, lo = ~eq & np.isfinite(model.row_hi), ~eq & np.isfinite(model.row_lo)
    A_ub = np.vstack([A[up].toarray(), -A[lo].toarray()])
    b_ub = np.concatenate([model.row_hi[up], -model.row_lo[lo]])
    out = []
    for c, off in objectives:
        r = linprog(-np.asarray(c), A_ub=A_ub if len(b_ub) else None, b_ub=b_ub if len(b_ub) else None,
                    A_eq=A[eq].toarray() if eq.any() else None, b_eq=model.row_lo[eq] if eq.any() else None,
                    bounds=list(zip(model.col_lo, model.col_hi)), method="highs",
                    options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
        assert r.status == 0, r.message
        out.append(-r.fun + off)
    return np.array(out)


def sigterm_once_journalled(cmd: list, journal: Path, lines: int, env=None, timeout: float = 300.0):
    """Run the CLI command `cmd`, SIGTERM it once `journal` holds `lines` lines (the header included); returns
    (exit code, stderr).  Fails if the run ends before that."""
    return sigterm_when(cmd, lambda: journal.exists() and journal.read_bytes().count(b"\n") >= lines, env, timeout)


def sigterm_when(cmd: list, ready, env=None, timeout: float = 300.0):
    """Run the CLI command `cmd`, SIGTERM it once `ready()` is true; returns (exit code, stderr).  Fails if the
    run ends before that."""
    import signal
    import subprocess
    import time
    p = subprocess.Popen([str(c) for c in cmd], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if p.poll() is not None or ready():
                break
            time.sleep(0.1)
        assert p.poll() is None, "the run ended before it could be killed"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, err


@pytest.fixture(scope="module")
def cluster():
    """A real Dask LocalCluster on 127.0.0.1: two worker threads in this process (quick to start)."""
    from equiv.distributed.executor import DaskExecutor
    ex = DaskExecutor(workers=2, processes=False)
    yield ex
    ex.close()
