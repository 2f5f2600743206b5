"""`equiv bench --suite scale`: the scaling methods of issue 12 against their full-cost counterparts.

Block summaries (BBPoly): DeepPoly with and without summaries on mnist 256x6 (prop_0_0.03) and ResNet-2B
(img386), and on random deep chains (where the depth makes summaries pay): median time of 3 runs, stable
ReLUs, and their share of full DeepPoly's.  Then the deep MNIST chains' solver stages (`scale_chains`) and
ResNet-2B's whole simplify (`scale_resnet`).  Results in results/scale.md and .json, with the machine.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from ..artifacts.files import write_json_atomic, write_text_atomic
from ..bounds.blocks import find_blocks
from ..bounds.engine import deeppoly_graph
from ..ir import load_graph
from ..ir.chain_graph import network_graph
from ..ir.network import Dense, Network
from ..spec.region import Box, load_region
from .core import machine

# (network, spec, --blocks modes compared with none)
REAL = [("mnist_fc/mnist-net_256x6.onnx", "mnist_fc/prop_0_0.03.vnnlib", ["auto", 2, 3]),
        ("cifar/resnet_2b.onnx", "cifar/resnet_2b-img386-eps2_255.vnnlib", ["auto", "residual"])]
DEEP = [(24, 256), (48, 128)]     # random deep chains: ReLU layers, width
REPEATS = 3


def deep_chain(layers: int, width: int, seed: int = 0) -> tuple:
    """A random chain of `layers` ReLU layers (He-scaled weights, 64 inputs, 10 outputs) and a small box."""
    r = np.random.default_rng(seed)
    sizes = [64] + [width] * layers + [10]
    dense = [Dense(r.normal(size=(b, a)) * np.sqrt(2 / a) * 0.9, r.normal(scale=0.05, size=b))
             for a, b in zip(sizes, sizes[1:])]
    c = r.uniform(-1, 1, 64)
    return network_graph(Network.from_layers(dense, [np.ones(width, bool)] * layers)), Box(c - 0.02, c + 0.02)


def measure(g, box, mode) -> dict:
    """Median time of REPEATS DeepPoly runs with --blocks mode (after one untimed run: the first run of a
    network pays for caches and allocation, which made "auto" look 1.44x faster on ResNet-2B with no block
    cut), its stable count and the blocks cut."""
    deeppoly_graph(g, box, blocks=mode)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        b = deeppoly_graph(g, box, blocks=mode)
        times.append(time.perf_counter() - t0)
    return {"blocks": str(mode), "cut": len(find_blocks(g, mode)), "seconds": round(statistics.median(times), 4),
            "stable": b.counts(g)["stable"]}


def block_rows(root: Path) -> list[dict]:
    cases = []
    for net, spec, modes in REAL:
        if (root / net).is_file():
            cases.append((net, spec, load_graph(root / net), load_region(spec=str(root / spec))[0], modes))
    for layers, width in DEEP:
        g, box = deep_chain(layers, width)
        cases.append((f"random chain {layers}x{width}", "box radius 0.02", g, box, ["auto", 3, 6]))
    rows = []
    for net, spec, g, box, modes in cases:
        base = measure(g, box, "none")
        rows.append({"network": net, "region": spec, "relus": g.n_relus, **base, "speedup": 1.0, "share": 1.0})
        for mode in modes:
            m = measure(g, box, mode)
            rows.append({"network": net, "region": spec, "relus": g.n_relus, **m,
                         "speedup": round(base["seconds"] / m["seconds"], 2),
                         "share": round(m["stable"] / max(base["stable"], 1), 4)})
    return rows


def run_scale_bench(root: Path, out: Path) -> dict:
    from .scale_chains import chain_lines, chain_rows
    from .scale_resnet import resnet_lines, resnet_rows
    data = {"machine": machine(), "blocks": block_rows(root), "chains": chain_rows(root), "resnet": resnet_rows(root)}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(data, out / "scale.json")
    lines = ["# Scale (issue 12)", "", f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores "
             f"(shared with other jobs: times vary between runs).", "",
             "## Block summaries (BBPoly) vs full DeepPoly", "",
             f"DeepPoly of every ReLU input and output; time = median of {REPEATS} runs; share = stable / full "
             "DeepPoly's stable.  `equiv bounds MODEL --spec SPEC --method deeppoly --blocks MODE`.", "",
             "| network | region | --blocks | blocks cut | time (s) | speed-up | stable | share |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["blocks"]:
        lines.append(f"| {r['network']} | {r['region']} | {r['blocks']} | {r['cut']} | {r['seconds']:.3f} | "
                     f"{r['speedup']:.2f}x | {r['stable']} / {r['relus']} | {100 * r['share']:.1f} % |")
    lines += chain_lines(data["chains"])
    lines += resnet_lines(data["resnet"])
    write_text_atomic(out / "scale.md", "\n".join(lines) + "\n")
    return data
