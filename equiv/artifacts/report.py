"""The JSON report of a simplify run and its short human summary."""

from __future__ import annotations

from .. import __version__
from ..apps.simplify import SimplifyResult


def build_report(r: SimplifyResult) -> dict:
    st = r.stability
    return {
        "equiv_version": __version__,
        "model": r.model_path,
        "model_sha256": r.model_sha256,
        "output": r.output_path,
        "region": {"source": r.region_source, **r.region.to_json()},
        "method": r.options.method,
        "backend": r.options.backend,
        "time_limit_per_query": r.options.time_limit,
        "relus_before": r.original.n_relus,
        "relus_after": r.simplified.n_relus,
        "params_before": r.original.n_params,
        "params_after": r.simplified.n_params,
        "depth_before": r.original.depth,
        "depth_after": r.simplified.depth,
        "hidden_widths_after": r.simplified.hidden_widths,
        "phases": {ph: st.count(ph) for ph in ("dead", "active", "unstable", "unknown")},
        "proved_by": st.proved_by(),
        "stable_after_stage": st.stage_counts,
        "unknown": st.count("unknown"),
        "queries": st.queries,
        "neurons": [p.to_json() for p in st.neurons],
        "validation": r.validation.to_json(),
        "seconds": {**{k: round(v, 4) for k, v in r.seconds.items()},
                    "stages": {k: round(v, 4) for k, v in st.stage_seconds.items()}},
        "notes": st.notes,
    }


def summary(r: SimplifyResult) -> str:
    st = r.stability
    proved = ", ".join(f"{k} {v}" for k, v in sorted(st.proved_by().items(), key=lambda kv: -kv[1]))
    return "\n".join([
        f"equiv simplify: {r.model_path}",
        f"  ReLUs   {r.original.n_relus:>8} -> {r.simplified.n_relus}",
        f"  params  {r.original.n_params:>8} -> {r.simplified.n_params}",
        f"  depth   {r.original.depth:>8} -> {r.simplified.depth}",
        f"  neurons dead {st.count('dead')}, active {st.count('active')}, unstable {st.count('unstable')}, "
        f"unknown {st.count('unknown')}",
        f"  proved by: {proved or 'nothing'}",
        r.validation.line(),
        f"  time {r.seconds.get('total', 0):.2f} s (prove {r.seconds.get('prove', 0):.2f} s)"
        + (f"  -> {r.output_path}" if r.output_path else ""),
    ])
