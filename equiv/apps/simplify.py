"""The main job: model + region -> proved phases -> smaller ONNX model, validated against the original."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..artifacts.files import OutputGuard, save_onnx_atomic
from ..ir.chain_export import network_to_onnx
from ..errors import ValidationError
from ..ir.network import Network
from ..ir.chain_io import load_onnx
from ..transform.reduce import reduce_network
from ..spec.region import Box
from ..prove.carried import attach_claims
from ..prove.stability import StabilityOptions, StabilityResult, prove_stability
from ..artifacts.validate import OnnxRunner, ValidationReport, compare_models


@dataclass
class SimplifyResult:
    """Everything a simplify run produced; `report.build_report` turns it into the JSON report."""

    model_path: str
    model_sha256: str
    region: Box
    region_source: str
    original: Network
    simplified: Network
    onnx_model: onnx.ModelProto
    stability: StabilityResult
    validation: ValidationReport
    options: StabilityOptions
    seconds: dict = field(default_factory=dict)
    output_path: str | None = None


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def simplify(model_path: str | Path, region: Box, options: StabilityOptions | None = None, *,
             output_path: str | Path | None = None, region_source: str = "box",
             validation_samples: int = 10000, tolerance: float = 1e-4, runner=None) -> SimplifyResult:
    """Prove neuron phases of the model on the region, reduce, export, validate; write output_path if given.

    Raises ValidationError (after writing nothing) if the simplified model differs from the original by
    more than `tolerance` anywhere it was sampled: that would be a bug, never an accepted result.
    runner: a `distributed.Runner` (executor and journal) for the solver queries; None: this process.
    """
    options = options or StabilityOptions()
    t_start = time.perf_counter()
    seconds = {}
    if output_path is not None:      # refuse a bad output path before the work, not after
        OutputGuard([model_path]).claim(output_path, "simplified model")
    t0 = time.perf_counter()
    net = load_onnx(model_path)
    region.check_dim(net.n_inputs)
    seconds["load"] = time.perf_counter() - t0

    stab, small, model, val = simplify_network(net, OnnxRunner(str(model_path)), region, options, seconds=seconds,
                                               validation_samples=validation_samples, tolerance=tolerance,
                                               runner=runner)
    seconds["total"] = time.perf_counter() - t_start
    sha = sha256_of(model_path)
    # the phases travel with the model, so `equiv check` can re-prove them instead of searching
    attach_claims(model, sha, *stab.phase_masks(net), region)
    result = SimplifyResult(str(model_path), sha, region, region_source, net, small, model,
                            stab, val, options, seconds)
    if output_path is not None:
        save_onnx_atomic(model, output_path)
        result.output_path = str(output_path)
    return result


def simplify_network(net: Network, reference: OnnxRunner, region: Box, options: StabilityOptions, *,
                     validation_samples: int = 10000, tolerance: float = 1e-4, seconds: dict | None = None,
                     known=None, seen_points=None, what: str = "the simplified model", runner=None):
    """The in-memory core of `simplify` for an already-loaded network: (stability, smaller Network, ONNX,
    validation against `reference`).  known / seen_points are passed to `prove_stability`.

    Raises ValidationError when the smaller model differs from the reference by more than `tolerance`.
    """
    seconds = {} if seconds is None else seconds
    t0 = time.perf_counter()
    stab, small = prove_and_reduce(net, region, options, known=known, seen_points=seen_points, runner=runner)
    seconds["prove"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = network_to_onnx(small)
    seconds["reduce_export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    val = validate_model(reference, model, region, stab.witnesses, validation_samples, options.seed + 1, tolerance, what,
                         networks=(net, small))
    seconds["validate"] = time.perf_counter() - t0
    return stab, small, model, val


def prove_and_reduce(net: Network, region: Box, options: StabilityOptions, *, known=None,
                     seen_points=None, runner=None) -> tuple[StabilityResult, Network]:
    """Proved phases of every neuron on the region and the smaller network they give (no export)."""
    stab = prove_stability(net, region, options, known=known, seen_points=seen_points, runner=runner)
    dead, active = stab.phase_masks(net)
    return stab, reduce_network(net, dead, active)


def validate_model(reference: OnnxRunner, model: onnx.ModelProto, region: Box, witnesses, samples: int, seed: int,
                   tolerance: float, what: str = "the simplified model", networks=None) -> ValidationReport:
    """Compare `model` with the reference on random points, vertices, centre and witnesses of the region,
    and (given `networks=(original, simplified)`) the points of a gradient ascent on their difference;
    a difference above tolerance is a bug: ValidationError, and the caller writes nothing."""
    val = compare_models(reference, OnnxRunner(model), region, n=samples, seed=seed, witnesses=witnesses,
                         tolerance=tolerance, networks=networks)
    if not val.ok:
        raise ValidationError(
            f"BUG: {what} {val.failure()}; nothing was written. Please report this.")
    return val
