"""The compress report (every candidate with its sizes, verdict, proven bound and time), its summary line,
and the Pareto plot of parameters against the proven bound."""

from __future__ import annotations

from ... import __version__
from .search import CompressResult


def build_report(res: CompressResult, model: str, model_sha256: str, region: dict, output: str | None) -> dict:
    o = res.original
    best = res.best
    return {
        "equiv_version": __version__, "model": model, "model_sha256": model_sha256, "region": region,
        "target": {"norm": res.target.norm, "epsilon": res.target.epsilon, "size": res.target.size,
                   "metric": res.target.metric},
        "original": o.to_json(),
        "best": None if best is None else {**best.to_json(), "fraction_of_original":
                                           res.metric(best.size) / max(1, res.metric(o))},
        "output": output, "validation": res.validation,
        "candidates": [r.to_json() for r in res.records],
        "seconds": round(res.seconds, 2), "notes": res.notes,
    }


def summary(res: CompressResult, output: str | None) -> str:
    """One line for people (and one per candidate above it)."""
    m = res.target.metric
    what = f"linf <= {res.target.epsilon:g}" if res.target.norm == "linf" else "same top-1 class"
    lines = [f"equiv compress: {len(res.records)} candidates certified against the original ({what})"]
    for r in res.records:
        bound = "-" if r.proven_bound is None else f"{r.proven_bound:.4g}"
        lines.append(f"  {r.verdict:<15} {getattr(r.size, m):>8} {m}  proven {bound:>9}  {r.seconds:6.1f} s  {r.name}")
    if res.best is None:
        lines.append(f"equiv compress: nothing proved smaller; no model written ({res.seconds:.1f} s)")
    else:
        b = getattr(res.best.size, m)
        o = getattr(res.original, m)
        lines.append(f"equiv compress: {o} -> {b} {m} ({100 * b / max(1, o):.1f}%), proved {what}, "
                     f"{res.best.name} -> {output} ({res.seconds:.1f} s)")
    return "\n".join(lines)


def pareto_figure(res: CompressResult, title: str = ""):
    """Matplotlib figure: every candidate's metric against its proven bound (proved ones filled, the Pareto
    front of the proved ones joined, the chosen model ringed, epsilon dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = res.target.metric
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    o = getattr(res.original, m)
    ax.axvline(o, color="grey", lw=0.8)
    ax.text(o, 0.98, " original", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="grey")
    floor = 1e-9          # a log axis: an exact (0) bound is drawn at the floor
    proved = [(getattr(r.size, m), max(r.proven_bound, floor)) for r in res.records
              if r.verdict == "equivalent" and r.proven_bound is not None]
    other = [(getattr(r.size, m), max(r.proven_bound, floor)) for r in res.records
             if r.verdict != "equivalent" and r.proven_bound is not None]
    if other:
        ax.scatter(*zip(*other), marker="x", color="tab:red", label="not proved (proven bound shown)")
    if proved:
        ax.scatter(*zip(*proved), color="tab:green", label="proved", zorder=3)
        front, lowest = [], float("inf")
        for x, y in sorted(proved):
            if y < lowest:
                front.append((x, y))
                lowest = y
        ax.step(*zip(*front), where="post", color="tab:green", lw=1)
    if res.best is not None and res.best.proven_bound is not None:
        ax.scatter([getattr(res.best.size, m)], [max(res.best.proven_bound, floor)], s=160, facecolors="none",
                   edgecolors="black", label="returned", zorder=4)
    if res.target.norm == "linf" and res.target.epsilon:
        ax.axhline(res.target.epsilon, ls="--", color="black", lw=0.8, label=f"epsilon {res.target.epsilon:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{m} (log)")
    ax.set_ylabel("proven bound on max |original - candidate|")
    ax.set_title(title or "equiv compress: size against proven difference", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
