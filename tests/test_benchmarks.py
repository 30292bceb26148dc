"""The benchmark scripts run (at tiny sizes on CPU), so the numbers in BENCHMARKS.md stay reproducible."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_memory_lean_benchmark_runs_tiny(capsys):
    argv = ["--steps", "4", "--log_every", "2", "--num_samples", "8", "--step_size", "tiny", "--resolution", "32",
            "--timing_steps", "1", "--device", "cpu"]  # fmt: skip
    result = _load("bench_memory_lean").main(argv)
    arms = result["convergence"]
    assert [row["arm"] for row in arms] == ["default", "--memory_lean", "plain bf16 AdamW"]
    assert all(len(row["losses"]) == 4 and row["val_loss"] > 0 for row in arms)
    assert arms[0]["moved"] > 0.99 and arms[1]["moved"] > arms[2]["moved"]
    assert [row["mode"] for row in result["step_cost"]] == ["default", "--memory_lean"]
    assert "| final validation loss |" in capsys.readouterr().out


def test_gpu_session_script_runs_every_part_tiny_on_cpu(tmp_path):
    """The one prepared script for a lent GPU: at tiny size on CPU every part must run and leave its table."""
    environment = {**os.environ, "SIZE": "tiny", "DEVICE": "cpu", "OUT": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_session.sh")], env=environment, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == ["training_high", "memory_lean", "inference", "training_low"]
    assert all(": exit 0 " in line for line in summary)
    assert "| 64² |" in (tmp_path / "inference.md").read_text()
    assert "| --memory_lean |" in (tmp_path / "memory_lean.md").read_text()
    assert "naive UNet-only loop" in (tmp_path / "training_high.md").read_text()


def test_vae_ceiling_scores_each_folder_and_joins_the_model_scores(tmp_path, tiny_shadow_dir, capsys):
    import json

    import torch
    from data_factory import make_benchmark_folder, make_custom_dataset

    import evaluate_shadow

    vae_ceiling = _load("vae_ceiling")
    data = make_custom_dataset(tmp_path / "test-things", n=4, size=64)
    evaluate_shadow.main(["--model", str(tiny_shadow_dir), "--dataset_type", "custom", "--data_dir", str(data),
                          "--num_seeds", "1", "--output_dir", str(tmp_path / "eval" / "test-things")])  # fmt: skip
    argv = ["--vae", str(tiny_shadow_dir), "--data_dirs", str(data), "--eval_root", str(tmp_path / "eval"),
            "--limit", "3", "--eval_batch_size", "2", "--output_json", str(tmp_path / "ceiling.json"),
            "--reference_dirs", str(data)]  # fmt: skip
    (row,) = vae_ceiling.main(argv)
    assert row["label"] == "test-things" and row["resolution"] == 64 and row["latent"] == "8x8" and row["images"] == 3
    assert 0.0 <= row["vae_iou"]["mean"] <= 1.0 and 0.0 < row["grid_iou"]["mean"] <= 1.0
    # against itself as the clean reference: the targets are exact, and the VAE's round trip scores the same
    assert row["target_vs_reference_iou"]["mean"] == 1.0
    assert row["vae_vs_reference_iou"] == row["vae_iou"]
    with pytest.raises(ValueError, match="one folder per `--data_dirs`"):
        vae_ceiling.main(
            ["--vae", str(tiny_shadow_dir), "--data_dirs", str(data), str(data), "--reference_dirs", str(data)]
        )
    metrics = (tmp_path / "eval" / "test-things" / "metrics.json").read_text()
    assert row["model"]["iou"] == json.loads(metrics)["summary"]["all"]["iou"]["mean"]
    assert "| test-things | 64 | 8x8 | 3 |" in capsys.readouterr().out
    # two folders: a pooled row over both (the model's records together), and a control row left out of it
    other = make_custom_dataset(tmp_path / "test-others", n=2, size=64, seed=1)
    evaluate_shadow.main(["--model", str(tiny_shadow_dir), "--dataset_type", "custom", "--data_dir", str(other),
                          "--num_seeds", "1", "--output_dir", str(tmp_path / "eval" / "test-others")])  # fmt: skip
    rows = vae_ceiling.main(["--vae", str(tiny_shadow_dir), "--data_dirs", str(data), str(other), "--control_dirs",
                             str(other), "--eval_root", str(tmp_path / "eval")])  # fmt: skip
    things, others, pooled, control = rows
    assert pooled["label"] == "pooled" and pooled["images"] == 6 and control["label"] == "control: test-others"
    expected = (things["vae_iou"]["mean"] * 4 + others["vae_iou"]["mean"] * 2) / 6
    assert pooled["vae_iou"]["mean"] == pytest.approx(expected)
    per_image = [json.loads(line)["iou"] for folder in ("test-things", "test-others")
                 for line in (tmp_path / "eval" / folder / "records.jsonl").read_text().splitlines()]  # fmt: skip
    assert pooled["model"]["iou"] == pytest.approx(sum(per_image) / len(per_image))
    assert "| pooled | 64 | 8x8 | 6 |" in capsys.readouterr().out
    # a benchmark folder of three tracks: the model's score is over all its images, not its first track's
    tracks = make_benchmark_folder(tmp_path / "tracks-things", n_per_track=2, size=64)
    evaluate_shadow.main(["--model", str(tiny_shadow_dir), "--dataset_type", "benchmark", "--data_dir", str(tracks),
                          "--num_seeds", "1", "--output_dir", str(tmp_path / "eval" / "tracks-things")])  # fmt: skip
    (track_row,) = vae_ceiling.main(["--vae", str(tiny_shadow_dir), "--data_dirs", str(tracks), "--eval_root",
                                     str(tmp_path / "eval")])  # fmt: skip
    records = (tmp_path / "eval" / "tracks-things" / "records.jsonl").read_text().splitlines()
    per_image = [json.loads(line)["iou"] for line in records]
    assert len(per_image) == 6 and track_row["model"]["iou"] == pytest.approx(sum(per_image) / 6)
    # latents optimised to reproduce the maps decode closer to them than the encoder's own latents
    (inverted,) = vae_ceiling.main(["--vae", str(tiny_shadow_dir), "--data_dirs", str(data), "--limit", "2",
                                    "--invert_steps", "15"])  # fmt: skip
    assert inverted["images"] == 2 and "inverted_iou" in inverted
    vae = vae_ceiling.load_vae(str(tiny_shadow_dir))
    truth = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.5
    mask = torch.zeros(2, 1, 64, 64)

    def loss(decoded):
        return float((decoded - truth).abs().mean() + (decoded - truth).square().mean())

    with torch.no_grad():
        encoded = loss(vae_ceiling.vae_round_trip(vae, truth, mask))
    assert loss(vae_ceiling.inverted_round_trip(vae, truth, mask, steps=15)) < encoded
    # a map that is constant over the latent grid passes the grid unchanged; the object's pixels are cleared
    flat, mask = torch.full((1, 1, 16, 16), 0.4), torch.zeros(1, 1, 16, 16)
    mask[..., :4, :4] = 1.0
    expected = flat * (1 - mask)
    assert torch.allclose(vae_ceiling.grid_round_trip(flat, mask), expected)


def test_family_sheet_pairs_the_renderer_and_the_model_per_family(tmp_path, tiny_shadow_dir, capsys):
    import json

    import numpy as np
    from data_factory import make_custom_dataset
    from PIL import Image

    family_sheet = _load("family_sheet")
    folders = []
    for family in ("pole", "ring"):
        data = make_custom_dataset(tmp_path / f"test-{family}", n=6, size=64)
        metadata = json.loads((data / "metadata.json").read_text())
        (data / "metadata.json").write_text(json.dumps({k: {**v, "family": family} for k, v in metadata.items()}))
        folders.append(str(data))
    out = tmp_path / "sheet.png"
    family_sheet.main(["--model", str(tiny_shadow_dir), "--data_dirs", *folders, "--samples_per_family", "2",
                       "--cell", "64", "--out", str(out)])  # fmt: skip
    with Image.open(out) as sheet:  # 120 px of labels + 2 objects x (renderer, model) cells; 22 px header + 2 rows
        assert sheet.size == (120 + 4 * 64, 22 + 2 * 64)
        pixels = np.asarray(sheet.convert("L"), dtype=np.float32)
    renderer_cell = pixels[22 + 2 : 22 + 62, 120 + 2 : 120 + 62]
    assert renderer_cell.std() > 1.0  # a picture, not a blank cell
    assert "2 families x 2 objects" in capsys.readouterr().out
    # one sample per object (the factory's objects come in pairs): sample_000 and sample_002
    assert [key for key, _ in family_sheet.one_sample_per_object(Path(folders[0]), 2)] == ["sample_000", "sample_002"]
    with pytest.raises(ValueError, match="has no metadata.json"):
        family_sheet.one_sample_per_object(tmp_path, 2)


def test_inference_levers_start_from_the_evaluation_and_score_each_lever_against_it(tmp_path, tiny_shadow_dir):
    import json

    import numpy as np
    from data_factory import make_custom_dataset

    import evaluate_shadow

    levers = _load("inference_levers")
    data = make_custom_dataset(tmp_path / "test-things", n=3, size=64)
    evaluate_shadow.main(["--model", str(tiny_shadow_dir), "--dataset_type", "custom", "--data_dir", str(data),
                          "--num_seeds", "2", "--resolution", "64", "--output_dir", str(tmp_path / "eval")])  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "eval" / "records.jsonl").read_text().splitlines()]
    out = tmp_path / "levers.json"
    results = levers.main(["--model", str(tiny_shadow_dir), "--data_dirs", str(data), "--resolution", "64",
                           "--num_seeds", "2", "--gains", "1", "1.5", "--eval_batch_size", "2",
                           "--output_json", str(out)])  # fmt: skip
    rows = results["folders"][str(data)]
    # the baseline is evaluate_shadow.py's own prediction (same tensors, same noise seeds), image by image
    assert rows["one step"]["count"] == len(records) == 6
    assert rows["one step"]["iou"] == pytest.approx(np.mean([r["iou"] for r in records]), abs=1e-6)
    assert rows["gain 1"]["difference"] == 0.0 and rows["gain 1"]["better"] == 0.0
    # the oracle's grid holds gain 1, so it never scores below the plain map; the others are real, paired scores
    assert rows["best gain per image (oracle)"]["difference"] >= 0.0
    assert {"mirror alone", "mirror average", "two draws", "gain 1.5"} <= set(rows)
    assert json.loads(out.read_text())["folders"][str(data)]["one step"] == rows["one step"]
    maps = np.full((1, 4, 4), 0.6)
    assert levers.with_gain(maps, 2.0).max() == 1.0 and levers.with_gain(maps, 0.5).max() == pytest.approx(0.3)
    assert levers.paired([0.5, 0.7], [0.4, 0.8])["better"] == 0.5


def test_compare_evals_pairs_two_evaluations_image_by_image(tmp_path, tiny_shadow_dir):
    import json

    import numpy as np
    from data_factory import make_custom_dataset

    import evaluate_shadow

    compare_evals = _load("compare_evals")
    folders = {"test-a": make_custom_dataset(tmp_path / "test-a", n=3, size=64),
               "test-b": make_custom_dataset(tmp_path / "test-b", n=2, size=64, seed=1)}  # fmt: skip
    for side, seed in (("old", 0), ("new", 5)):  # one tiny model, two seeds: two sets of scores on the same images
        for name, data in folders.items():
            evaluate_shadow.main(["--model", str(tiny_shadow_dir), "--dataset_type", "custom", "--data_dir", str(data),
                                  "--num_seeds", "2", "--seed", str(seed), "--output_dir", str(tmp_path / side / name)])  # fmt: skip
    result = compare_evals.main(["--baseline_root", str(tmp_path / "old"), "--candidate_root", str(tmp_path / "new"),
                                 "--folders", "test-a", "test-b", "--output_json", str(tmp_path / "c.json")])  # fmt: skip

    def per_image(side):
        scores = {}
        for name in folders:
            for line in (tmp_path / side / name / "records.jsonl").read_text().splitlines():
                record = json.loads(line)
                scores.setdefault((name, record["id"]), []).append(record["iou"])
        return {key: np.mean(values) for key, values in scores.items()}

    old, new = per_image("old"), per_image("new")
    differences = np.array([new[key] - old[key] for key in old])
    assert result["paired"]["images"] == 5 and np.abs(differences).max() > 0  # the two sides do differ
    assert result["paired"]["mean"] == pytest.approx(differences.mean())
    assert result["paired"]["standard_error"] == pytest.approx(differences.std(ddof=1) / np.sqrt(5))
    assert result["folders"]["test-b"]["baseline"] == pytest.approx(
        np.mean([v for k, v in old.items() if k[0] == "test-b"])
    )
    assert result["pooled"]["candidate"]["iou"] == pytest.approx(np.mean(list(new.values())))
    assert json.loads((tmp_path / "c.json").read_text())["paired"] == result["paired"]
    with pytest.raises(SystemExit, match="no evaluate_shadow.py records.jsonl under .* for: test-c"):
        compare_evals.main(["--baseline_root", str(tmp_path / "old"), "--candidate_root", str(tmp_path / "new"),
                            "--folders", "test-a", "test-c"])  # fmt: skip


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("bench_multi_light", ["composition", "--data", "{tmp}"], "has no metadata.json: give a folder rendered by"),
        ("bench_multi_light", ["sheet", "--data", "{custom}", "--model", "{tmp}"], "holds no light-set sample"),
        ("bench_multi_light", ["irradiance", "--data", "{tmp}"], "holds no <light>.npz"),
        (
            "family_sheet",
            ["--model", "{tmp}/nothing", "--data_dirs", "{custom}", "--out", "{tmp}/s.png"],
            "--pretrained_model_name_or_path {tmp}/nothing is not a folder",
        ),
        (
            "inference_levers",
            ["--model", "{tmp}/nothing", "--data_dirs", "{custom}"],
            "--pretrained_model_name_or_path {tmp}/nothing is not a folder",
        ),
    ],  # fmt: skip
)
def test_a_benchmark_given_the_wrong_folder_says_which_flag_in_one_line(tmp_path, monkeypatch, script, args, message):
    """A wrong --data or --model was a FileNotFoundError / diffusers OSError traceback, or (irradiance) an empty
    table with NaN. The script runs as `__main__` (its own error wrapper included), in this interpreter."""
    import runpy

    from data_factory import make_custom_dataset

    custom = make_custom_dataset(tmp_path / "custom", n=2, size=32)
    fill = {"tmp": str(tmp_path), "custom": str(custom)}
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *(a.format(**fill) for a in args)])
    with pytest.raises(SystemExit) as raised:  # sys.exit(message): Python prints it and exits with status 1
        runpy.run_path(str(BENCHMARKS / f"{script}.py"), run_name="__main__")
    assert isinstance(raised.value.code, str), raised.value.code
    assert raised.value.code.startswith(f"{script}.py: error: ") and message.format(**fill) in raised.value.code


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("bench_inference", ["--resolutions", "0"], "`--resolutions` must be a positive multiple of 8"),
        ("bench_inference", ["--device", "gpu"], "`--device` 'gpu' is not a device"),
        ("bench_inference", ["--size", "tiny", "--repeats", "0"], "`--repeats` must be >= 1, got 0"),
        ("bench_training", ["--device", "cuda:99"], "`--device` cuda:99: this machine has"),
        ("bench_training", ["--size", "tiny", "--steps", "0"], "`--steps` must be >= 1, got 0"),
        ("bench_memory_lean", ["--steps", "0"], "nothing to measure"),
        ("bench_render", ["--resolutions", "-3"], "`--resolutions` must be a multiple of 8 (>= 8), got -3"),
        ("bench_render", ["--spp", "0"], "`--spp` must be >= 1, got 0"),
        ("code_shape", ["/no/such.py"], "/no/such.py is not a file"),
        ("inference_levers", ["--model", "m", "--data_dirs", "d", "--num_seeds", "0"], "`--num_seeds` must be >= 1"),
        ("inference_levers", ["--model", "m", "--data_dirs", "d", "--gains", "-1"], "`--gains` must be > 0"),
    ],
)
def test_a_benchmark_refuses_bad_arguments_before_it_runs(monkeypatch, capsys, script, argv, message):
    """A CPU-only machine asked for cuda, a zero size or count: torch's AssertionError or a conv RuntimeError from
    deep inside the run, before; now argparse's usage and one line."""
    module = _load(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    with pytest.raises(SystemExit) as raised:
        module.main(argv) if script not in ("bench_render", "code_shape") else module.main()
    assert raised.value.code == 2 and message in capsys.readouterr().err
