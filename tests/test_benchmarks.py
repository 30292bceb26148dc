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
    argv = ["--size", "tiny", "--resolutions", "64", "--repeats", "1", "--device", "cpu", "--fast",
            "--compile_mode", "default", "--compile_backend", "eager"]  # fmt: skip
    (row,) = _load("bench_inference").main(argv)
    assert row["resolution"] == 64 and min(row["naive_ms"], row["pipeline_ms"], row["slider_ms"]) > 0
    assert row["fast_max_diff"] < 1e-5  # the compiled path computes the same maps
    assert "| 64² |" in capsys.readouterr().out


def test_training_benchmark_runs_tiny(capsys):
    rows = _load("bench_training").main(
        ["--size", "tiny", "--resolution", "64", "--batch_size", "2", "--steps", "2", "--device", "cpu"]
    )
    assert [row["variant"] for row in rows][:2] == ["naive UNet-only loop", "script, cached latents"]
    assert all(row["s_per_step"] > 0 and row["tflops"] > 0 for row in rows)
    assert "VAE share of the image-batch step" in capsys.readouterr().out
