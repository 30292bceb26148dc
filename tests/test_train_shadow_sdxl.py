"""train_shadow_sdxl.py: arguments, checkpoint bookkeeping, the NaN guard, exact resume, `accelerate launch` with one
and two processes, and an overfit litmus: real training of the tiny SDXL-format model, no mocks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from data_factory import make_custom_dataset
from safetensors.torch import load_file
from training_fixtures import (  # noqa: F401 (autouse fixture)
    fresh_accelerate_state,
    make_checkpoints,
    reset_accelerate,
    tiny_run_argv,
)

import train_shadow_sdxl as train
from pipeline_shadow import ShadowPipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "train_shadow_sdxl.py"
GUIDE_COMMAND_512 = (
    "--dataset_type custom --data_dir DATA --image_size 512 --batch_size 8 --mixed_precision --gradient_checkpointing "
    "--max_iterations 5000 --save_every 500 --eval_every 500 --log_every 50"
)
GUIDE_COMMAND_1024 = (
    "--dataset_type custom --data_dir DATA --image_size 1024 --batch_size 2 --mixed_precision --gradient_checkpointing "
    "--gradient_accumulation 4 --max_iterations 5000 --save_every 500 --eval_every 500 --log_every 50"
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """8 samples at 64 px, two per object: the default split holds out 2 (one object) for validation."""
    return make_custom_dataset(tmp_path_factory.mktemp("data"), n=8, size=64)


def _argv(tiny_sdxl_dir, data_dir, output_dir, *extra) -> list[str]:
    return [
        "--pretrained_model_name_or_path",
        str(tiny_sdxl_dir),
        "--dataset_type",
        "custom",
        "--data_dir",
        str(data_dir),
        "--output_dir",
        str(output_dir),
        "--resolution",
        "64",
        "--dataloader_num_workers",
        "0",
        "--report_to",
        "none",
        "--seed",
        "0",
        *map(str, extra),
    ]


def _unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _launch(*args, num_processes: int = 1, timeout: int = 240) -> subprocess.CompletedProcess:
    # Several CPU processes: accelerate's multi-process launcher (torchrun) + ACCELERATE_USE_CPU, which makes each
    # process join a gloo group (`--cpu` alone would start a single process).
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *(["--multi_gpu"] if num_processes > 1 else ["--cpu"]),
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(SCRIPT),
        *map(str, args),
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",  # see training_fixtures.fresh_accelerate_state
    }
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-6000:]}"
    return result


# ----- arguments: the guide's commands, aliases, defaults, and mistakes caught before any model loads ------------


def test_guide_commands_parse_to_diffusers_names():
    args = train.parse_args(GUIDE_COMMAND_512.split())
    assert (args.train_data_dir, args.resolution, args.train_batch_size) == ("DATA", 512, 8)
    assert (args.max_train_steps, args.checkpointing_steps, args.validation_steps, args.logging_steps) == (
        5000,
        500,
        500,
        50,
    )
    assert args.mixed_precision == "bf16" and args.gradient_checkpointing  # a bare --mixed_precision means bf16
    args = train.parse_args(GUIDE_COMMAND_1024.split() + ["--resume_from", "checkpoints/latest", "--num_workers", "2"])
    assert (args.resolution, args.train_batch_size, args.gradient_accumulation_steps) == (1024, 2, 4)
    assert args.resume_from_checkpoint == "checkpoints/latest" and args.dataloader_num_workers == 2
    assert train.parse_args(["--mixed_precision", "fp16"]).mixed_precision == "fp16"


def test_defaults_follow_the_paper_recipe():
    args = train.parse_args([])
    assert args.output_dir == "shadow-sdxl-model" and args.mixed_precision is None  # a run name: the Hub repo name
    assert args.checkpoints_total_limit is None  # keep all, as in diffusers
    assert args.pretrained_model_name_or_path == "stabilityai/stable-diffusion-xl-base-1.0"
    assert (args.learning_rate, args.lr_scheduler, args.lr_warmup_steps) == (1e-5, "constant_with_warmup", 1000)
    assert (args.max_grad_norm, args.vae_precision, args.report_to) == (1.0, "fp32", "tensorboard")


def test_help_hides_the_test_hook(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--image_size" in out and "--resolution" in out and "debug_inject" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--timestep_sampling", "cosine"], "invalid choice: 'cosine'"),
        (["--mixed_precision", "fp8"], "invalid choice: 'fp8'"),
        (["--dataset_type", "folder"], "invalid choice: 'folder'"),
        (["--report_to", "mlflow"], "invalid choice: 'mlflow'"),
    ],
)
def test_unknown_choices_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resolution", "60"], r"`--resolution` must be a positive multiple of 8 and >= 32 .*, got 60"),
        (["--data_dir", None], r"needs `--data_dir` .*no data given"),
        (["--dataset_type", "benchmark"], "TEST set"),
        (["--data_dir", "EMPTY"], "objects"),  # dataset_loading's verification lists what is missing
        (["--data_dir", "BROKEN"], "sample_003"),  # an unreadable PNG is named before any model loads
        (["--output_dir", "UNDER_A_FILE"], "`--output_dir` .* is not writable"),
        (["--resume_from", "nowhere/checkpoint-7"], "does not exist"),
        (["--gradient_accumulation", "0"], "`--gradient_accumulation_steps` must be an integer >= 1"),
        (["--mask_channels", "8"], r"`--mask_channels`: .*square number of channels .*got 8"),
    ],
)
def test_mistakes_are_caught_before_any_model_loads(tmp_path, data_dir, extra, message):
    (tmp_path / "EMPTY").mkdir()
    broken = make_custom_dataset(tmp_path / "BROKEN", n=4, size=32)
    (broken / "shadows" / "sample_003.png").write_bytes(b"not a png")
    (tmp_path / "a_file").write_text("")
    replacements = {
        "EMPTY": str(tmp_path / "EMPTY"),
        "BROKEN": str(broken),
        "UNDER_A_FILE": str(tmp_path / "a_file" / "out"),
    }
    argv = _argv("org/not-a-model-that-could-load", data_dir, tmp_path / "out")
    for flag, value in zip(extra[::2], extra[1::2]):
        position = argv.index(flag) if flag in argv else None
        if value is None:
            del argv[position : position + 2]
            continue
        value = replacements.get(value, value)
        if position is None:
            argv += [flag, value]
        else:
            argv[position + 1] = value
    with pytest.raises(ValueError, match=message):
        train.main(argv)


@pytest.mark.parametrize(
    ("path", "distributed", "processes"),
    [("accelerate_config.yaml", "NO", 1), ("configs/multi_gpu.yaml", "MULTI_GPU", 4)],
)
def test_accelerate_configs_load(path, distributed, processes):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO_ROOT / path))
    assert (config.distributed_type.value, config.mixed_precision, config.num_processes) == (
        distributed,
        "bf16",
        processes,
    )


def test_command_line_mistake_is_one_line_and_exit_status_2(data_dir):
    command = [sys.executable, str(SCRIPT), "--data_dir", str(data_dir), "--image_size", "500"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "error: `--resolution` must be a positive multiple of 8 and >= 32" in result.stderr
        and "got 500." in result.stderr
    )


# ----- checkpoint bookkeeping -----------------------------------------------------------------------------------


def test_latest_link_rotation_and_resolution(tmp_path):
    for step in (1, 2, 3, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / train.TRAINING_STATE_FILE).write_text("{}")
    args = train.parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest"])
    assert train.resolve_resume_checkpoint(args) == (tmp_path / "checkpoint-4").resolve()  # no link: the newest

    train.update_latest_link(tmp_path, "checkpoint-2")
    train.update_latest_link(tmp_path, "checkpoint-3")  # replaced, not stacked
    link = tmp_path / "latest"
    assert link.is_symlink() and os.readlink(link) == "checkpoint-3"  # relative: the folder can move
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert train.resolve_resume_checkpoint(args) == (tmp_path / "checkpoint-3").resolve()
    args.resume_from_checkpoint = str(link)  # the guide's `--resume_from checkpoints/latest`
    assert train.resolve_resume_checkpoint(args) == (tmp_path / "checkpoint-3").resolve()
    args.resume_from_checkpoint = "checkpoint-2"  # relative to --output_dir
    assert train.resolve_resume_checkpoint(args) == (tmp_path / "checkpoint-2").resolve()

    removed = train.rotate_checkpoints(tmp_path, total_limit=2)
    assert sorted(p.name for p in removed) == ["checkpoint-1", "checkpoint-2"]
    # checkpoint-3 (where `latest` points) survives even though 4 is newer and the limit is 1.
    train.rotate_checkpoints(tmp_path, total_limit=1)
    assert [p.name for p in train.list_checkpoints(tmp_path)] == ["checkpoint-3"]
    assert train.rotate_checkpoints(tmp_path, total_limit=0) == []  # 0 keeps everything


def test_resume_latest_without_checkpoints_starts_fresh(tmp_path):
    args = train.parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest"])
    assert train.resolve_resume_checkpoint(args) is None


def test_resuming_with_another_split_seed_is_refused(tmp_path, data_dir, tiny_sdxl_dir):
    make_checkpoints(tiny_sdxl_dir, data_dir, tmp_path / "out")
    checkpoint = tmp_path / "out" / "checkpoint-2"
    (checkpoint / train.TRAINING_STATE_FILE).write_text(json.dumps({"global_step": 2, "seed": 0}))  # older: no key
    argv = ["--pretrained_model_name_or_path", "org/not-a-model-that-could-load", "--data_dir", str(data_dir)]
    argv += ["--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", "latest", "--seed", "5"]
    with pytest.raises(ValueError, match=r"`--split_seed 0`, this run has `--split_seed 3`.*Resume with"):
        train.main([*argv, "--split_seed", "3"])
    # a new --seed alone passes the check and goes on to load the (missing) model, which is named
    with pytest.raises(
        train.ConfigurationError,
        match=r"Cannot load --pretrained_model_name_or_path org/not-a-model-that-could-load as an SDXL",
    ):
        train.main(argv)


def test_single_step_training_validates_once_at_t_1(tiny_sdxl_dir, data_dir, tmp_path):
    """With --timestep_sampling single_step both validation losses are the same (t = 1) loss, computed once."""
    flags = ["--timestep_sampling", "single_step", "--max_train_steps", 2, "--validation_steps", 2]
    train.main(_argv(tiny_sdxl_dir, data_dir, tmp_path / "out", *flags))
    best = json.loads((tmp_path / "out" / "best" / "best.json").read_text())
    assert best["step"] == 2 and best["val_loss"] == best["val_loss_single_step"] > 0


def test_a_training_run_scans_its_data_once(tiny_sdxl_dir, data_dir, tmp_path, monkeypatch):
    """validate_args checks the data before any model loads and hands that dataset to the loaders: one scan."""
    import dataset_loading

    scanned, scan = [], dataset_loading._scan
    monkeypatch.setattr(dataset_loading, "_scan", lambda *args, **kwargs: scanned.append(args) or scan(*args, **kwargs))
    train.main(_argv(tiny_sdxl_dir, data_dir, tmp_path / "out", "--max_train_steps", 1))
    assert len(scanned) == 1 and scanned[0][0].data_dir == str(data_dir)


def test_rectified_flow_loss_is_the_velocity_mse():
    class Constant(torch.nn.Module):
        def forward(self, sample, timestep, light):
            assert sample.shape[1] == 9 and torch.allclose(timestep, torch.tensor([1000.0, 250.0]))
            return type("Out", (), {"sample": torch.full_like(sample[:, :4], 0.5)})()

    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([1.0, 0.25])
    loss = train.rectified_flow_loss(Constant(), torch.zeros(2, 4, 8, 8), torch.ones(2, 1, 8, 8), x0, None, t, noise)
    expected = ((0.5 - (noise - x0)) ** 2).mean(dim=(1, 2, 3))
    assert loss.dtype == torch.float32 and torch.allclose(loss, expected)


# ----- the real loop, in-process --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data_flags", [["--cache_latents"], ["--cache_latents", "--random_flip"], ["--random_flip"]], ids=str
)
def test_resume_continues_exactly(tiny_sdxl_dir, data_dir, tmp_path, data_flags):
    """6 steps straight == 3 steps + resume to 6: same weights, bit for bit. Accumulation over 2 micro-batches with
    3 batches per epoch puts the resume point mid-epoch, after an epoch-end step of a single micro-batch; the lr is
    still warming up across it, and validation runs in between. Flips, from images or cached latents, too."""
    common = [
        "--train_batch_size", 2, "--gradient_accumulation_steps", 2, "--learning_rate", 1e-3, "--lr_warmup_steps", 4,
        "--checkpointing_steps", 3, "--validation_steps", 2, "--num_validation_images", 1,
        "--timestep_sampling", "logit_normal", "--latent_cache_dir", tmp_path / "latents", *data_flags,
    ]  # fmt: skip
    straight = train.main(_argv(tiny_sdxl_dir, data_dir, tmp_path / "straight", *common, "--max_train_steps", 6))
    reset_accelerate()
    half = train.main(_argv(tiny_sdxl_dir, data_dir, tmp_path / "resumed", *common, "--max_train_steps", 3))
    assert half.global_step == 3 and (tmp_path / "resumed" / "latest").resolve().name == "checkpoint-3"
    reset_accelerate()
    resumed_argv = [*common, "--max_train_steps", 6, "--resume_from", tmp_path / "resumed" / "latest"]
    resumed = train.main(_argv(tiny_sdxl_dir, data_dir, tmp_path / "resumed", *resumed_argv))

    assert resumed.global_step == straight.global_step == 6
    assert resumed.losses == straight.losses[3:]  # same data order, noise and t: identical losses step by step
    _assert_same_weights(_unet_weights(tmp_path / "straight"), _unet_weights(tmp_path / "resumed"))
    straight_state = train.read_training_state(tmp_path / "straight" / "checkpoint-6")
    resumed_state = train.read_training_state(tmp_path / "resumed" / "checkpoint-6")
    assert straight_state == resumed_state  # includes the best validation loss and its step


def test_non_finite_loss_skips_the_step_and_is_logged(tiny_sdxl_dir, data_dir, tmp_path):
    output_dir = tmp_path / "out"
    extra = ["--max_train_steps", 3, "--checkpointing_steps", 1, "--checkpoints_total_limit", 0,
             "--learning_rate", 1e-3, "--lr_warmup_steps", 0, "--debug_inject_nan_at_step", 2]  # fmt: skip
    state = train.main(_argv(tiny_sdxl_dir, data_dir, output_dir, *extra))

    assert state.global_step == 3 and state.nan_steps_total == 1 and state.consecutive_nan_steps == 0
    assert np.isnan(state.losses[1]) and np.isfinite(state.losses[0]) and np.isfinite(state.losses[2])
    before, after = output_dir / "checkpoint-1", output_dir / "checkpoint-2"
    _assert_same_weights(_unet_weights(before), _unet_weights(after))  # the skipped step changed no weight
    optimizer_before = torch.load(before / "optimizer.bin", weights_only=False)
    optimizer_after = torch.load(after / "optimizer.bin", weights_only=False)
    for index, slot in optimizer_before["state"].items():  # nor the AdamW moments and step count
        for key, value in slot.items():
            assert torch.equal(value, optimizer_after["state"][index][key]), (index, key)
    lr_before = torch.load(before / "lr_scheduler.pt", weights_only=True)
    assert lr_before == torch.load(after / "lr_scheduler.pt", weights_only=True)  # nor the lr schedule
    assert any(
        not torch.equal(v, _unet_weights(output_dir / "checkpoint-3")[k]) for k, v in _unet_weights(after).items()
    )

    log = (output_dir / "training.log").read_text()
    line = next(line for line in log.splitlines() if "non-finite" in line)
    assert "step 2: non-finite loss" in line and "skipped" in line and "sample_0" in line


def test_persistent_non_finite_loss_stops_cleanly(tiny_sdxl_dir, data_dir, tmp_path):
    output_dir = tmp_path / "out"
    extra = ["--max_train_steps", 20, "--checkpointing_steps", 1, "--checkpoints_total_limit", 2,
             "--max_nan_steps", 3, "--debug_inject_nan_at_step", *range(2, 21)]  # fmt: skip
    with pytest.raises(train.NonFiniteLossError, match="3 optimizer steps in a row"):
        train.main(_argv(tiny_sdxl_dir, data_dir, output_dir, *extra))

    log = (output_dir / "training.log").read_text()
    assert "Stopping: 3 optimizer steps in a row" in log and "the last at step 4" in log
    assert not (output_dir / "model_index.json").exists()  # no final pipeline from a stopped run
    latest = (output_dir / "latest").resolve()
    assert latest.name == "checkpoint-3" and train.read_training_state(latest)["global_step"] == 3
    _assert_same_weights(_unet_weights(latest), _unet_weights(output_dir / "checkpoint-2"))


def test_continues_from_a_saved_shadow_pipeline(tiny_shadow_dir, data_dir, tmp_path):
    """--pretrained_model_name_or_path may be a trained shadow pipeline (saved at 64 px): training continues from its
    weights and the new training resolution is the one recorded in the result."""
    output_dir = tmp_path / "out"
    extra = ["--resolution", 32, "--max_train_steps", 2, "--learning_rate", 1e-3, "--lr_warmup_steps", 0]
    train.main(_argv(tiny_shadow_dir, data_dir, output_dir, *extra))

    assert "Continuing from the shadow pipeline" in (output_dir / "training.log").read_text()
    start, final = _unet_weights(tiny_shadow_dir), _unet_weights(output_dir)
    assert start.keys() == final.keys() and any(not torch.equal(start[k], final[k]) for k in start)
    assert ShadowPipeline.from_pretrained(output_dir).config.default_processing_resolution == 32


def test_litmus_overfits_in_the_single_step_regime(tiny_sdxl_dir, data_dir, tmp_path):
    """8 samples, t = 1 for every sample (the target noise - x0 is fully predictable from the input): the mean loss
    of the last 10 steps drops at least 10x below the first 10 within 120 steps (measured here: ~13x)."""
    extra = [
        "--max_train_steps", 120, "--train_batch_size", 4, "--val_fraction", 0, "--timestep_sampling", "single_step",
        "--learning_rate", 5e-3, "--lr_scheduler", "constant", "--lr_warmup_steps", 0, "--logging_steps", 10,
        "--checkpointing_steps", 1000, "--validation_steps", 1000,
        "--cache_latents", "--latent_cache_dir", tmp_path / "latents",
    ]  # fmt: skip
    state = train.main(_argv(tiny_sdxl_dir, data_dir, tmp_path / "out", *extra))
    first, last = np.mean(state.losses[:10]), np.mean(state.losses[-10:])
    assert state.global_step == 120 and np.isfinite(state.losses).all()
    assert last <= first / 10, f"first 10 steps: {first:.4f}, last 10: {last:.4f}"


# ----- accelerate launch ----------------------------------------------------------------------------------------


def test_guide_command_end_to_end_through_accelerate_launch(tiny_sdxl_dir, data_dir, tmp_path):
    """The guide's first command at 64 px and 4 steps (tensorboard on, as by default)."""
    output_dir = tmp_path / "checkpoints"
    guide = GUIDE_COMMAND_512.replace("--data_dir DATA", f"--data_dir {data_dir}")
    guide = guide.replace("--image_size 512", "--image_size 64").replace("--max_iterations 5000", "--max_iterations 4")
    guide = guide.replace("--save_every 500", "--save_every 1").replace("--eval_every 500", "--eval_every 2")
    guide = guide.replace("--log_every 50", "--log_every 2")
    _launch(
        *guide.split(),
        "--pretrained_model_name_or_path", tiny_sdxl_dir, "--output_dir", output_dir, "--num_workers", 0,
        "--checkpoints_total_limit", 2, "--seed", 0,
    )  # fmt: skip

    config = json.loads((output_dir / "training_config.json").read_text())
    assert (config["resolution"], config["train_batch_size"], config["mixed_precision"]) == (64, 8, "bf16")
    log = (output_dir / "training.log").read_text()
    assert "step 4: loss" in log and "step 2: validation loss" in log and "Saved the final pipeline" in log
    assert [p.name for p in train.list_checkpoints(output_dir)] == ["checkpoint-3", "checkpoint-4"]  # 1, 2 rotated
    assert os.readlink(output_dir / "latest") == "checkpoint-4"
    assert (output_dir / "checkpoint-4" / "unet" / "config.json").is_file()
    assert sorted(p.name for p in (output_dir / "validation").iterdir()) == ["step-2.png", "step-4.png"]
    assert list((output_dir / "logs").rglob("events.out.tfevents.*"))
    assert not [p for p in output_dir.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    best = json.loads((output_dir / "best" / "best.json").read_text())
    logged = {  # step -> the one-step (t = 1) validation loss, as logged
        int(m[0]): float(m[1]) for m in re.findall(r"step (\d+): validation loss [\d.]+ \(training t\), ([\d.]+)", log)
    }
    assert sorted(logged) == [2, 4] and best["best_by"] == "single_step"  # the default: the pipeline's regime
    assert best["step"] == min(logged, key=logged.get)
    assert best["val_loss_single_step"] == pytest.approx(logged[best["step"]], abs=1e-6) and best["val_loss"] > 0

    for folder in (output_dir / "best", output_dir):  # best/ and the final pipeline at the root
        pipe = ShadowPipeline.from_pretrained(folder)
        assert pipe.config.default_processing_resolution == 64 and pipe.default_resolution == 64
    object_image = PIL.Image.new("RGBA", (80, 48))  # W x H, not square
    object_image.paste((200, 60, 40, 255), (30, 10, 50, 40))
    latents = pipe.encode_object(object_image)
    assert latents.object_latents.shape[-2:] == (8, 8)  # processed at the recorded 64 px
    maps = pipe(object_latents=latents, theta=30, phi=45, size=4, output_type="pt").shadow_maps
    assert maps.shape == (1, 1, 48, 80) and torch.isfinite(maps).all()


def test_two_processes_write_each_checkpoint_once(tiny_sdxl_dir, data_dir, tmp_path):
    output_dir = tmp_path / "out"
    _launch(
        *_argv(tiny_sdxl_dir, data_dir, output_dir),
        "--train_batch_size", 2, "--max_train_steps", 2, "--checkpointing_steps", 1, "--validation_steps", 2,
        "--checkpoints_total_limit", 0, "--logging_steps", 1,
        num_processes=2,
    )  # fmt: skip

    assert json.loads((output_dir / "training_config.json").read_text())["num_processes"] == 2
    log = (output_dir / "training.log").read_text()
    for step in (1, 2):
        checkpoint = output_dir / f"checkpoint-{step}"
        assert log.count(f"Saved checkpoint {checkpoint}") == 1
        assert {"random_states_0.pkl", "random_states_1.pkl", "optimizer.bin"} <= {p.name for p in checkpoint.iterdir()}
        assert not (checkpoint / "model.safetensors").exists()  # the UNet is saved once, in unet/
    assert log.count("validation loss") == 1 and log.count("Saved the final pipeline") == 1
    assert os.readlink(output_dir / "latest") == "checkpoint-2"
    assert not [p for p in output_dir.iterdir() if p.name.startswith(".")]
    _assert_same_weights(_unet_weights(output_dir / "checkpoint-2"), _unet_weights(output_dir))


# ----- --shadow_iou_weight: the evaluation metric as a training term --------------------------------------------------


def test_decoded_shadow_iou_loss_is_the_soft_iou_of_the_decoded_maps_and_reaches_only_the_estimate(tiny_shadow_dir):
    import evaluate_shadow
    from pipeline_shadow import unscale_latents, vae_output_to_shadow

    vae = ShadowPipeline.from_pretrained(tiny_shadow_dir).vae.requires_grad_(False)
    true = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    same = train.decoded_shadow_iou_loss(vae, true.clone(), true)
    assert torch.allclose(same, torch.zeros(2), atol=1e-6)

    estimate = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    loss = train.decoded_shadow_iou_loss(vae, estimate, true)
    with torch.no_grad():
        maps = [vae_output_to_shadow(vae.decode(unscale_latents(vae, x)).sample) for x in (estimate, true)]
    expected = [1 - evaluate_shadow.soft_iou(p[0].numpy(), g[0].numpy()) for p, g in zip(*maps)]
    assert loss.shape == (2,) and np.allclose(loss.detach().numpy(), expected, atol=1e-5)
    loss.sum().backward()
    assert estimate.grad is not None and estimate.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())  # the frozen decoder only passes the gradient on


def _decoded_iou_distance(pipeline_dir, data_dir) -> float:
    """Mean decoded soft-IoU distance of the one-step estimates (t = 1, fixed noise) over the whole dataset, 32 px."""
    import dataset_loading

    pipe = ShadowPipeline.from_pretrained(pipeline_dir)
    loader, _ = dataset_loading.create_dataloaders(
        "custom", data_dir, batch_size=8, num_workers=0, image_size=64, val_fraction=0, shuffle=False
    )
    distances = []
    with torch.no_grad():
        for batch in loader:
            object_latents, mask_latent, shadow_latents = train.batch_latents(pipe.vae, batch, torch.device("cpu"))
            noise = torch.randn(shadow_latents.shape, generator=torch.Generator().manual_seed(0))
            t = torch.ones(len(noise))
            light = train.batch_light(batch, torch.device("cpu"))
            velocity, x_t = train.rectified_flow_velocity(
                pipe.unet, object_latents, mask_latent, shadow_latents, light, t, noise
            )
            estimate = train.rf_predict_x0(x_t, velocity, t)
            distances.append(train.decoded_shadow_iou_loss(pipe.vae, estimate, shadow_latents))
    return float(torch.cat(distances).mean())


def test_shadow_iou_weight_trains_the_decoded_maps_toward_the_true_ones(data_dir, tmp_path):
    """The same run (the embedded model, whose decoder draws shadows; same seed, data, steps) with and without the
    term: with it, the decoded one-step shadows of the training data end closer to the decoded true ones in soft IoU,
    the term it adds (measured here: 0.443 against 0.473 with the eighth embedded default, 0.446 against 0.474 with
    the seventh); the flag is recorded with the run. Compared early in training, at a small learning rate, where each
    run still follows its own gradient: later the velocity loss alone closes the same gap (both runs reach ~0.13 in 40
    steps at 1e-4) and which one ends lower is down to the trajectory, not the term."""
    embedded = Path(__file__).resolve().parents[1] / "models" / "shadow-small"
    common = ["--max_train_steps", 10, "--learning_rate", 2e-5, "--lr_warmup_steps", 0, "--val_fraction", 0,
              "--timestep_sampling", "single_step", "--checkpointing_steps", 100]  # fmt: skip
    train.main(_argv(embedded, data_dir, tmp_path / "plain", *common))
    reset_accelerate()
    train.main(_argv(embedded, data_dir, tmp_path / "iou", *common, "--shadow_iou_weight", 3.0))
    plain, weighted = (_decoded_iou_distance(tmp_path / name, data_dir) for name in ("plain", "iou"))
    assert weighted < plain - 0.015, (plain, weighted)
    config = json.loads((tmp_path / "iou" / "training_config.json").read_text())
    assert config["shadow_iou_weight"] == 3.0


def test_shadow_iou_samples_decodes_only_the_first_samples_of_the_micro_batch(tiny_shadow_dir):
    """training_loss = mean velocity MSE + weight x mean decoded soft-IoU distance of the first N samples, with the
    noise and t the generator draws; N = all by default."""
    import argparse

    pipe = ShadowPipeline.from_pretrained(tiny_shadow_dir)
    seeded = torch.Generator().manual_seed(3)
    batch = {
        "object_latents": torch.randn(3, 4, 4, 4, generator=seeded),
        "mask_latent": torch.rand(3, 1, 4, 4, generator=seeded),
        "shadow_latents": torch.randn(3, 4, 4, 4, generator=seeded),
        "light": torch.tensor([[30.0, 0.0, 2.0], [10.0, 90.0, 4.0], [45.0, 200.0, 8.0]]),
    }
    device = torch.device("cpu")

    args = argparse.Namespace(timestep_sampling="uniform", logit_mean=0.0, logit_std=1.0, timestep_shift=3.0)

    def loss(weight, samples):
        weighted = argparse.Namespace(**vars(args), shadow_iou_weight=weight, shadow_iou_samples=samples)
        with torch.no_grad():
            return train.training_loss(weighted, pipe.unet, pipe.vae, batch, torch.Generator().manual_seed(0), device)

    noise, t = train.sample_noise_and_t(args, (3, 4, 4, 4), torch.Generator().manual_seed(0), device)
    with torch.no_grad():
        velocity, x_t = train.rectified_flow_velocity(
            pipe.unet, batch["object_latents"], batch["mask_latent"], batch["shadow_latents"], batch["light"], t, noise
        )
        mse = train.velocity_mse(velocity, batch["shadow_latents"], noise).mean()
        iou = train.decoded_shadow_iou_loss(pipe.vae, train.rf_predict_x0(x_t, velocity, t), batch["shadow_latents"])
    assert torch.allclose(loss(0.0, None), mse)
    assert torch.allclose(loss(2.0, None), mse + 2.0 * iou.mean(), atol=1e-6)
    assert torch.allclose(loss(2.0, 1), mse + 2.0 * iou[0], atol=1e-6)
    assert not torch.allclose(iou[0], iou.mean())  # so the two cases above are told apart


# ----- inputs nobody had tried: each refused before any model loads (or, for a model that cannot load, when it
# loads), naming the flag and what is allowed ----------------------------------------------------------------------


def _check(data_dir, tmp_path, *extra, model="org/not-a-model-that-could-load"):
    argv = ["--pretrained_model_name_or_path", str(model), "--data_dir", str(data_dir)]
    return train.validate_args(train.parse_args([*argv, "--output_dir", str(tmp_path / "out"), *map(str, extra)]))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--adam_beta1", "2"], r"`--adam_beta1` must lie in \[0, 1\), got 2.0"),
        (["--adam_beta2", "-0.5"], r"`--adam_beta2` must lie in \[0, 1\)"),
        (["--adam_weight_decay", "-1"], r"`--adam_epsilon` and `--adam_weight_decay` must be >= 0"),
        (["--adam_epsilon=-1e-8"], r"`--adam_epsilon` and `--adam_weight_decay` must be >= 0"),
        (["--seed", "-1"], r"`--seed` must be an integer in \[0, 2\*\*32 - 1\], got -1"),
        (["--seed", str(2**32)], r"`--seed` must be an integer in \[0, 2\*\*32 - 1\]"),
        (["--lr_scheduler", "piecewise_constant"], "needs step rules, which this script does not take"),
        (["--lr_scheduler", "polynomial", "--lr_power", "-1"], r"`--lr_power` must be >= 0, got -1.0"),
        (["--lr_scheduler", "polynomial", "--learning_rate", "1e-8"], "decays to 1e-07: `--learning_rate` must be"),
        (["--lr_scheduler", "cosine_with_restarts", "--lr_num_cycles", "0"], "`--lr_num_cycles` must be an integer"),
    ],
)
def test_optimizer_schedule_and_seed_ranges_are_refused_before_any_model_loads(data_dir, tmp_path, extra, message):
    with pytest.raises(train.ConfigurationError, match=message):
        _check(data_dir, tmp_path, *extra)


def _write_config(path: Path, **config) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))


def test_a_local_model_folder_is_checked_from_its_config_files(data_dir, tmp_path, tiny_sdxl_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    inpainting = tmp_path / "inpainting"
    _write_config(inpainting / "unet" / "config.json", in_channels=9, out_channels=4)
    _write_config(inpainting / "vae" / "config.json", latent_channels=4)
    no_vae = tmp_path / "no_vae"
    _write_config(no_vae / "unet" / "config.json", in_channels=4, out_channels=4)
    wide_vae = tmp_path / "wide_vae"
    _write_config(wide_vae / "config.json", latent_channels=16)
    (tmp_path / "a_file").write_text("")
    cases = [
        (empty, [], r"has no readable unet/config.json: it is neither an SDXL base"),
        (data_dir, [], r"has no readable unet/config.json"),  # the dataset given as the model
        (tmp_path / "a_file", [], r"is not a folder \(an SDXL base or a saved shadow pipeline folder or a Hub id"),
        ("no-such-model-here", [], r"no-such-model-here is not a folder"),
        (inpainting, [], r"holds a UNet with 9 input and 4 output channels.*not an inpainting or refiner model"),
        (no_vae, [], r"no_vae/vae/config.json is missing or not valid JSON"),
        (tiny_sdxl_dir, ["--pretrained_vae_model_name_or_path", tmp_path / "nowhere"], r"nowhere is not a folder"),
        (tiny_sdxl_dir, ["--pretrained_vae_model_name_or_path", tiny_sdxl_dir], r"tiny-sdxl\d*/config.json is missing"),
        (tiny_sdxl_dir, ["--pretrained_vae_model_name_or_path", wide_vae], r"16 latent channels; the shadow model"),
    ]
    for model, extra, message in cases:
        with pytest.raises(train.ConfigurationError, match=message):
            _check(data_dir, tmp_path, *extra, model=model)


def test_a_model_whose_weights_do_not_load_names_the_flag_and_the_file(data_dir, tmp_path, tiny_sdxl_dir, capsys):
    broken = Path(shutil.copytree(tiny_sdxl_dir, tmp_path / "broken-sdxl"))
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    message = r"Cannot load --pretrained_model_name_or_path .*broken-sdxl as an SDXL base: Unable to load"
    with pytest.raises(train.ConfigurationError, match=message + r" weights from .*unet/diffusion_pytorch_model"):
        train.main(tiny_run_argv(broken, data_dir, tmp_path / "out", "--max_train_steps", 1))


@pytest.mark.parametrize(
    "what", ["the model", "the data", "an SDXL folder", "a project folder", "latest file", "best file"]
)
def test_an_output_dir_that_would_overwrite_what_is_not_a_runs_is_refused(data_dir, tmp_path, tiny_sdxl_dir, what):
    model = Path(shutil.copytree(tiny_sdxl_dir, tmp_path / "model"))
    out = tmp_path / "out"
    out.mkdir()
    extra, message = [], None
    if what == "the model":
        out, message = model, "is the `--pretrained_model_name_or_path` folder"
    elif what == "the data":
        out, message = data_dir, "is the `--data_dir` folder"
    elif what == "an SDXL folder":  # e.g. a second copy of the base: its unet/ and vae/ would be replaced
        out, message = (
            shutil.copytree(tiny_sdxl_dir, tmp_path / "other"),
            "holds model_index.json, unet, vae, scheduler",
        )
    elif what == "a project folder":
        (out / "README.md").write_text("# my project")
        message = "holds a README.md but is not a training run's folder"
    elif what == "latest file":  # would crash the run at its first checkpoint, after hours of training
        (out / "latest").write_text("checkpoint-500")
        message = "holds a `latest` that is not a symlink"
    else:
        (out / train.TRAINING_CONFIG_FILE).write_text("{}")
        (out / "best").write_text("")
        message = r"best is a file, where the run writes a folder"
    argv = ["--pretrained_model_name_or_path", str(model), "--data_dir", str(data_dir), "--output_dir", str(out)]
    with pytest.raises(train.ConfigurationError, match=message):
        train.validate_args(train.parse_args([*argv, *extra]))
    assert (model / "unet" / "config.json").is_file() and not (data_dir / "model_index.json").exists()


def test_a_latent_cache_dir_that_is_a_file_is_refused(data_dir, tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(train.ConfigurationError, match=r"--latent_cache_dir .*a_file exists and is not a folder"):
        _check(data_dir, tmp_path, "--cache_latents", "--latent_cache_dir", tmp_path / "a_file")
    # a folder that cannot be made: found before the models load, not by mkdir's traceback at the first encode
    with pytest.raises(
        train.ConfigurationError, match=r"--latent_cache_dir .*a_file/cache cannot be created: .*Not a directory"
    ):
        _check(data_dir, tmp_path, "--cache_latents", "--latent_cache_dir", tmp_path / "a_file" / "cache")


def test_resuming_with_a_model_of_another_shape_names_the_difference(tmp_path, data_dir, tiny_sdxl_dir):
    from random_sdxl import save_random_sdxl

    make_checkpoints(tiny_sdxl_dir, data_dir, tmp_path / "out", 1)
    small = save_random_sdxl(tmp_path / "small-sdxl", size="small")
    argv = tiny_run_argv(
        small, data_dir, tmp_path / "out", "--max_train_steps", 2, "--resume_from_checkpoint", "latest"
    )
    with pytest.raises(train.ConfigurationError) as error:
        train.main(argv)
    message = str(error.value)
    assert "checkpoint-1/unet holds a UNet of another shape than --pretrained_model_name_or_path" in message
    assert "block_out_channels: [32, 64, 64] there, [64, 128, 128] here" in message and len(message) < 600


@pytest.mark.parametrize("cached", [False, True])
def test_mask_channels_trains_a_detailed_mask_from_an_area_mask_pipeline(tiny_shadow_dir, data_dir, tmp_path, cached):
    """--mask_channels 16 on a 1-channel pipeline: the UNet is converted (conv_in's mask weight spread over 16
    channels), trained on 4 x 4 mask samples per latent cell (encoded, or read from a cache built for 16), saved with
    25 input channels; a resumed run keeps them, and one that forgets the flag is told to pass it."""
    output_dir = tmp_path / "out"
    extra = ["--max_train_steps", 2, "--mask_channels", 16, "--checkpointing_steps", 1, "--val_fraction", 0.25]
    if cached:
        extra += ["--cache_latents", "--random_flip", "--latent_cache_dir", tmp_path / "cache"]
    train.main(tiny_run_argv(tiny_shadow_dir, data_dir, output_dir, *extra))
    pipe = ShadowPipeline.from_pretrained(output_dir)
    assert pipe.unet.mask_channels == 16 and pipe.unet.unet.conv_in.weight.shape[1] == 24
    start = ShadowPipeline.from_pretrained(tiny_shadow_dir).unet.unet.conv_in.weight
    assert not torch.allclose(pipe.unet.unet.conv_in.weight[:, :4], start[:, :4])  # it trained
    if cached:
        manifests = [json.loads(m.read_text()) for m in (tmp_path / "cache").glob("*/manifest.json")]
        assert [m["key"].get("mask_channels") for m in manifests] == [16]
    reset_accelerate()
    resumed = tiny_run_argv(tiny_shadow_dir, data_dir, output_dir, *extra[4:], "--max_train_steps", 3,
                            "--resume_from_checkpoint", "latest")  # fmt: skip
    with pytest.raises(train.ConfigurationError, match=r"mask in 16 channels, this run's takes it in 1: .*16"):
        train.main(resumed)
    assert train.main([*resumed, "--mask_channels", "16"]).global_step == 3
    reset_accelerate()
    again = tiny_run_argv(output_dir, data_dir, tmp_path / "more", "--max_train_steps", 1, "--mask_channels", 64)
    with pytest.raises(train.ConfigurationError, match="takes its mask in 16 channels; `--mask_channels 64` can only"):
        train.main(again)


def test_loading_a_checkpoint_with_other_mask_channels_names_the_flag(tiny_shadow_dir, tmp_path):
    """The load-time guard for what validate_args cannot see (a Hub model, whose channels are known once loaded)."""
    area = ShadowPipeline.from_pretrained(tiny_shadow_dir).unet
    area.with_mask_channels(4).save_pretrained(tmp_path / "checkpoint-3" / "unet")
    args = train.parse_args(["--output_dir", str(tmp_path)])
    with pytest.raises(
        ValueError, match=r"mask in 4 channels, this run's takes it in 1: resume with `--mask_channels 4`"
    ):
        train.load_unet_state(area, tmp_path / "checkpoint-3", args)
