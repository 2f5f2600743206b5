"""The main job: model + region -> proved phases -> smaller ONNX model, validated against the original."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .errors import InputFileError, ValidationError
from .network import Network
from .onnx_io import load_onnx, network_to_onnx, save_onnx_atomic
from .reduce import reduce_network
from .region import Box
from .stability import StabilityOptions, StabilityResult, prove_stability
from .validate import OnnxRunner, ValidationReport, compare_models


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
             validation_samples: int = 10000, tolerance: float = 1e-4) -> SimplifyResult:
    """Prove neuron phases of the model on the region, reduce, export, validate; write output_path if given.

    Raises ValidationError (after writing nothing) if the simplified model differs from the original by
    more than `tolerance` anywhere it was sampled: that would be a bug, never an accepted result.
    """
    options = options or StabilityOptions()
    t_start = time.perf_counter()
    seconds = {}
    if output_path is not None and Path(output_path).resolve() == Path(model_path).resolve():
        raise InputFileError(f"refusing to overwrite the input file {model_path}; choose another output path")
    t0 = time.perf_counter()
    net = load_onnx(model_path)
    region.check_dim(net.n_inputs)
    seconds["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stab = prove_stability(net, region, options)
    seconds["prove"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dead, active = stab.phase_masks(net)
    small = reduce_network(net, dead, active)
    model = network_to_onnx(small)
    seconds["reduce_export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    val = compare_models(OnnxRunner(str(model_path)), OnnxRunner(model), region, n=validation_samples,
                         seed=options.seed + 1, witnesses=stab.witnesses, tolerance=tolerance)
    seconds["validate"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start

    result = SimplifyResult(str(model_path), sha256_of(model_path), region, region_source, net, small, model,
                            stab, val, options, seconds)
    if not val.ok:
        raise ValidationError(
            f"BUG: the simplified model differs from the original by {val.max_abs_diff:.3g} "
            f"(tolerance {tolerance:g}) at input {val.worst_input}; nothing was written. Please report this.")
    if output_path is not None:
        save_onnx_atomic(model, output_path, inputs_not_to_overwrite=[model_path])
        result.output_path = str(output_path)
    return result
