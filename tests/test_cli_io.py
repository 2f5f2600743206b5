"""What the CLI promises about its streams and codes: stdout holds only what was asked for (`--json` always
parses, even when HiGHS runs), broken pipes end quietly, internal errors exit 4, each --help lists its own
exit codes, and a --box value may start with a minus sign."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from conftest import ACAS, MODELS, acas_path, needs_bench
from equiv.cli import CODES, build_parser, main

DIGITS = MODELS / "digits_mlp.onnx"
DIGITS_SPEC = MODELS / "digits_mlp_ball.vnnlib"


def equiv_cmd(*args, **kw) -> subprocess.CompletedProcess:
    """Run the real `equiv` command line in a fresh Python process, as a user would."""
    return subprocess.run([sys.executable, "-m", "equiv.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


def test_every_subcommand_json_parses_with_solvers_running(tmp_path):
    """HiGHS prints a banner on stdout when a process first uses it: none of it may reach --json output."""
    from equiv.spec.region import load_region
    np.save(tmp_path / "c.npy", load_region(spec=DIGITS_SPEC)[0].center)
    ball = ["--center", tmp_path / "c.npy", "--radius", "0.1", "--clip", "0:1"]    # LPs and MILPs run on it
    runs = {
        "bounds-lp": equiv_cmd("bounds", DIGITS, *ball, "--method", "lp", "--json"),
        "simplify-milp": equiv_cmd("simplify", DIGITS, *ball, "-o", tmp_path / "s.onnx", "--json",
                                   "--no-progress", "--split-boxes", "0"),
    }
    runs["check"] = equiv_cmd("check", DIGITS, tmp_path / "s.onnx", *ball, "--epsilon", "1e-3",
                              "--json", "--no-progress")
    runs["slice"] = equiv_cmd("slice", DIGITS, "--spec", DIGITS_SPEC, "-o", tmp_path / "fam", "--max-slices", "2",
                              "--json", "--no-progress", "--validation-samples", "200", "--dispatch-samples", "500")
    runs["slice-verify"] = equiv_cmd("slice", "--verify", tmp_path / "fam", "--json", "--samples", "500")
    for name, r in runs.items():
        assert r.returncode == 0, (name, r.stderr[-2000:])
        data = json.loads(r.stdout)                  # the whole of stdout is one JSON document
        assert isinstance(data, dict) and data, name
        assert "Running HiGHS" not in r.stdout
    assert json.loads(runs["simplify-milp"].stdout)["queries"]["lp"] + \
        json.loads(runs["simplify-milp"].stdout)["queries"]["milp"] > 0, "the solvers must actually have run"


def test_broken_pipe_exits_quietly_with_the_verdict(tmp_path):
    cmd = (f"{sys.executable} -m equiv.cli check {DIGITS} {DIGITS} --spec {DIGITS_SPEC} --epsilon 0.01 "
           f"--no-progress | head -c 10; exit ${{PIPESTATUS[0]}}")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr            # the verdict (equivalent), not a BrokenPipe crash
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr
    assert r.stdout == "equiv chec"


def test_internal_error_exits_4_with_one_line(monkeypatch, capsys):
    """An unexpected exception (here injected into the bounds engine) is exit 4, never a verdict's code."""
    import equiv.bounds.engine as engine

    def broken(*a, **k):
        raise ZeroDivisionError("injected fault")
    monkeypatch.setattr(engine, "deeppoly_graph", broken)
    assert main(["bounds", str(DIGITS), "--spec", str(DIGITS_SPEC)]) == 4
    err = capsys.readouterr().err
    assert "internal error" in err and "injected fault" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["bounds", str(DIGITS), "--spec", str(DIGITS_SPEC), "--debug"]) == 4
    assert "Traceback" in capsys.readouterr().err


def test_each_help_lists_only_its_own_exit_codes():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name, sp in sub.items():
        text = sp.format_help()
        assert "exit codes:" in text
        for code, meaning in CODES[name]:
            assert f"  {code:<4}{meaning[:30]}" in " ".join(text.split("\n  ")) or meaning[:30] in text
        others = {m[:30] for n, rows in CODES.items() if n != name for _, m in rows} - {m[:30] for _, m in CODES[name]}
        assert not any(m in text for m in others), name
        assert "4   internal error" in text and "2   bad input" in text


def test_box_value_may_start_with_minus(tmp_path, capsys):
    lo_hi = ",".join(["-0.1:0.1"] * 64)
    code = main(["simplify", str(DIGITS), "--box", lo_hi, "-o", str(tmp_path / "s.onnx"), "--json",
                 "--no-progress", "--method", "deeppoly"])
    assert code == 0, capsys.readouterr().err
    r = json.loads(capsys.readouterr().out)
    assert r["region"]["lo"][0] == -0.1 and r["region"]["hi"][0] == 0.1


@needs_bench
def test_bounds_method_is_honoured(capsys):
    counts = {}
    for method in ("interval", "deeppoly"):
        assert main(["bounds", str(acas_path(1, 1)), "--spec", str(ACAS / "prop_3.vnnlib"), "--method", method,
                     "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        assert r["method"] == method
        counts[method] = r["counts"]["stable"]
    assert counts["interval"] < counts["deeppoly"]      # interval alone is strictly looser on ACAS 1_1 prop_3
    assert main(["bounds", str(acas_path(1, 1)), "--spec", str(ACAS / "prop_3.vnnlib"), "--method", "interval"]) == 0
    assert "interval bounds" in capsys.readouterr().out


def test_sigterm_exits_143_and_leaves_nothing(tmp_path):
    """A run terminated mid-way leaves no output and no temporary file."""
    import signal
    import time
    p = subprocess.Popen([sys.executable, "-m", "equiv.cli", "slice", str(DIGITS), "--spec", str(DIGITS_SPEC), "-o",
                          str(tmp_path / "fam"), "--max-slices", "64", "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4.0)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_sigterm_inside_a_finaliser_is_handled_after_it():
    """A SIGTERM whose handler runs inside a __del__ (a tqdm bar being collected, seen once under load) must not
    be lost: Python would print and drop the exception raised there, and the run would exit 0 with its output.
    Inside a finaliser the handler has the signal sent again shortly, and outside it raises as usual."""
    import signal
    import time
    from equiv.cli import _on_sigterm, _Terminated
    got = []

    def handler(signum, frame):
        try:
            _on_sigterm(signum, frame)
        except _Terminated:
            got.append("terminated")

    class Finalised:
        def __del__(self):
            got.append("del")
            signal.raise_signal(signal.SIGTERM)       # arrives while the finaliser runs
            for _ in range(3):
                got.append("del goes on")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        obj = Finalised()
        del obj
        for _ in range(200):              # (sent again from a timer thread after 10 ms)
            if "terminated" in got:
                break
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert got == ["del"] + ["del goes on"] * 3 + ["terminated"]


def test_bench_default_benchmarks_folder_is_next_to_the_repository():
    """`equiv bench` without --benchmarks reads <repo>/../shared/benchmarks (a layout move once broke it)."""
    from conftest import BENCH
    from equiv.bench.core import DEFAULT_BENCHMARKS
    assert DEFAULT_BENCHMARKS.resolve() == BENCH
