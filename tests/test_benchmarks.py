"""The benchmark scripts run (at tiny sizes on CPU), so the numbers in BENCHMARKS.md stay reproducible."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inference_benchmark_runs_tiny(capsys):
    rows = _load("bench_inference").main(["--size", "tiny", "--resolutions", "64", "--repeats", "1", "--device", "cpu"])
    assert len(rows) == 1 and rows[0][0] == 64 and rows[0][1] > 0 and rows[0][2] > 0
    assert "| 64² |" in capsys.readouterr().out
