"""train_vae.py: a short real run learns to reconstruct, calibrates the latent scale and saves a loadable VAE."""

import json
import shutil

import pytest
import torch
from data_factory import make_custom_dataset
from diffusers import AutoencoderKL

import train_vae
from dataset_loading import create_dataloaders
from pipeline_shadow import ShadowPipeline, decode_shadow, encode_latents, shadow_to_vae_input


def test_short_run_learns_and_saves_a_calibrated_vae(tmp_path):
    data = make_custom_dataset(tmp_path / "data", n=8, size=32)
    output = train_vae.main(
        ["--data_dir", str(data), "--resolution", "32", "--output_dir", str(tmp_path / "vae"),
         "--max_train_steps", "60", "--batch_size", "4", "--learning_rate", "2e-3", "--crop_size", "24"]
    )  # fmt: skip
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["steps"] == 60
    assert summary["last_10_reconstruction"] < 0.6 * summary["first_10_reconstruction"]
    vae = AutoencoderKL.from_pretrained(output)
    assert vae.config.scaling_factor == summary["scaling_factor"] != 0.13025
    assert len(vae.config.block_out_channels) == 4  # downsamples by 8, like SDXL's VAE
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean
    assert latents.shape == (1, 4, 4, 4)


def test_decoder_only_fine_tune_keeps_the_latent_space(tmp_path):
    data = make_custom_dataset(tmp_path / "data", n=8, size=32)
    common = ["--data_dir", str(data), "--resolution", "32", "--batch_size", "4", "--learning_rate", "2e-3"]
    base = train_vae.main([*common, "--output_dir", str(tmp_path / "vae"), "--max_train_steps", "20"])
    tuned = train_vae.main(
        [*common, "--output_dir", str(tmp_path / "tuned"), "--max_train_steps", "30", "--decoder_only",
         "--pretrained_vae_model_name_or_path", str(base)]
    )  # fmt: skip
    before, after = AutoencoderKL.from_pretrained(base), AutoencoderKL.from_pretrained(tuned)
    assert after.config.scaling_factor == before.config.scaling_factor
    for name in ("encoder", "quant_conv"):
        for (key, old), new in zip(
            getattr(before, name).state_dict().items(), getattr(after, name).state_dict().values()
        ):
            assert torch.equal(old, new), f"{name}.{key} changed"
    changed = [not torch.equal(a, b) for a, b in zip(before.decoder.parameters(), after.decoder.parameters())]
    assert all(changed)
    summary = json.loads((tuned / "training_summary.json").read_text())
    assert summary["last_10_reconstruction"] < summary["first_10_reconstruction"]


def test_encoder_only_fine_tune_teaches_a_new_encoder_to_feed_the_frozen_decoder(tmp_path):
    data = make_custom_dataset(tmp_path / "data", n=8, size=32)
    common = ["--data_dir", str(data), "--resolution", "32", "--batch_size", "4", "--learning_rate", "2e-3"]
    trained = AutoencoderKL.from_pretrained(
        train_vae.main([*common, "--output_dir", str(tmp_path / "vae"), "--max_train_steps", "60"])
    )
    # a trained decoder behind a re-initialised encoder: its latents mean nothing to the decoder yet
    torch.manual_seed(1)
    fresh = AutoencoderKL.from_config(trained.config)
    trained.encoder.load_state_dict(fresh.encoder.state_dict())
    trained.quant_conv.load_state_dict(fresh.quant_conv.state_dict())
    trained.save_pretrained(tmp_path / "start")
    tuned = {
        weight: train_vae.main(
            [
                *common,
                "--output_dir",
                str(tmp_path / f"enc{weight}"),
                "--max_train_steps",
                "40",
                "--encoder_only",
                "--pretrained_vae_model_name_or_path",
                str(tmp_path / "start"),
                "--object_latent_weight",
                weight,
            ]
        )  # fmt: skip
        for weight in ("0", "10")
    }
    start = AutoencoderKL.from_pretrained(tmp_path / "start")
    after = {weight: AutoencoderKL.from_pretrained(folder) for weight, folder in tuned.items()}
    for vae in after.values():
        assert vae.config.scaling_factor == start.config.scaling_factor
        for name in ("decoder", "post_quant_conv"):
            pairs = zip(getattr(start, name).parameters(), getattr(vae, name).parameters())
            assert all(torch.equal(a, b) for a, b in pairs), f"{name} changed"

    loader, _ = create_dataloaders("custom", data, batch_size=8, num_workers=0, image_size=32, val_fraction=0)
    batch = next(iter(loader))
    shadows, objects = shadow_to_vae_input(batch["shadow_map"]), batch["object_image"]
    with torch.no_grad():
        # the shadow maps come back through the SAME decoder, from the new encoder's latents
        errors = {name: float((decode_shadow(v, encode_latents(v, shadows)) - batch["shadow_map"]).abs().mean())
                  for name, v in (("start", start), *after.items())}  # fmt: skip
        # the object latents stay near the starting encoder's only when held there
        kept = encode_latents(start, objects)
        drift = {w: float((encode_latents(v, objects) - kept).pow(2).mean()) for w, v in after.items()}
    assert errors["0"] < 0.2 * errors["start"] and errors["10"] < 0.2 * errors["start"]
    assert drift["10"] < 0.2 * drift["0"]
    summary = json.loads((tuned["10"] / "training_summary.json").read_text())
    assert summary["args"]["encoder_only"] and summary["last_10_reconstruction"] < summary["first_10_reconstruction"]


def test_decoder_only_needs_a_vae_to_start_from(tmp_path, capsys):
    base = ["--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]
    for flags in (["--decoder_only"], ["--encoder_only"]):
        with pytest.raises(SystemExit):
            train_vae.parse_args([*base, *flags])
        assert "--pretrained_vae_model_name_or_path" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_vae.parse_args([*base, "--encoder_only", "--decoder_only", "--pretrained_vae_model_name_or_path", "v"])
    assert "give one of them" in capsys.readouterr().err


def test_decoder_learns_to_map_a_models_predictions_to_the_true_maps(tmp_path, tiny_shadow_dir):
    data = make_custom_dataset(tmp_path / "data", n=8, size=32)
    tuned = train_vae.main(
        ["--data_dir", str(data), "--resolution", "32", "--batch_size", "4", "--learning_rate", "2e-3",
         "--output_dir", str(tmp_path / "tuned"), "--max_train_steps", "40", "--decoder_only",
         "--pretrained_vae_model_name_or_path", str(tiny_shadow_dir / "vae"), "--prediction_model", str(tiny_shadow_dir)]
    )  # fmt: skip
    summary = json.loads((tuned / "training_summary.json").read_text())
    assert summary["last_10_reconstruction"] < 0.5 * summary["first_10_reconstruction"]
    before, after = AutoencoderKL.from_pretrained(tiny_shadow_dir / "vae"), AutoencoderKL.from_pretrained(tuned)
    assert all(torch.equal(a, b) for a, b in zip(before.encoder.parameters(), after.encoder.parameters()))

    # The tuned decoder, put into the model, brings its one-step maps closer to the truth than the original one.
    loader, _ = create_dataloaders("custom", data, batch_size=8, num_workers=0, image_size=32, val_fraction=0)
    batch = next(iter(loader))
    pipe = ShadowPipeline.from_pretrained(tiny_shadow_dir)
    latents = train_vae.one_step_latents(pipe, batch, torch.Generator().manual_seed(5))
    with torch.no_grad():
        errors = [float((decode_shadow(v, latents) - batch["shadow_map"]).abs().mean()) for v in (before, after)]
    assert errors[1] < 0.5 * errors[0]


def test_prediction_model_must_share_the_encoder(tmp_path, tiny_shadow_dir):
    data = make_custom_dataset(tmp_path / "data", n=8, size=32)
    other = train_vae.main(
        ["--data_dir", str(data), "--resolution", "32", "--output_dir", str(tmp_path / "other"), "--max_train_steps", "2"]
    )  # fmt: skip
    with pytest.raises(ValueError, match="encodes with another VAE encoder"):
        train_vae.main(
            ["--data_dir", str(data), "--resolution", "32", "--output_dir", str(tmp_path / "o"), "--decoder_only",
             "--pretrained_vae_model_name_or_path", str(other), "--prediction_model", str(tiny_shadow_dir)]
        )  # fmt: skip
    with pytest.raises(SystemExit):
        train_vae.parse_args(["--data_dir", str(data), "--output_dir", "o", "--prediction_model", str(tiny_shadow_dir)])


def test_soft_iou_loss_is_the_metric_and_weighs_a_faint_thin_shadow_by_its_share_of_the_shadow():
    from evaluate_shadow import soft_iou

    def as_vae_image(shadow):  # [B,H,W] in [0, 1] -> 3-channel [-1, 1], as the VAE sees shadow maps
        return (shadow * 2 - 1)[:, None].expand(-1, 3, -1, -1)

    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 16, 16, generator=generator), torch.rand(2, 16, 16, generator=generator)
    expected = 1 - soft_iou(a.numpy(), b.numpy()).mean()
    assert train_vae.soft_iou_loss(as_vae_image(a), as_vae_image(b)).item() == pytest.approx(expected, abs=1e-5)
    empty = torch.zeros(1, 16, 16)
    assert train_vae.soft_iou_loss(as_vae_image(empty), as_vae_image(empty)).item() == 0.0
    # a faint one-pixel line lost entirely: a per-pixel loss barely sees it, the soft-IoU term costs it in full
    line = torch.zeros(1, 64, 64)
    line[:, :, 30] = 0.2
    nothing = as_vae_image(torch.zeros(1, 64, 64))
    pixel = train_vae.reconstruction_loss(nothing, as_vae_image(line)).item()
    with_iou = train_vae.reconstruction_loss(nothing, as_vae_image(line), 0, 0.05).item()
    assert pixel < 0.01 and with_iou - pixel == pytest.approx(0.05)
    # gradients flow to the reconstruction
    guess = as_vae_image(torch.full((1, 64, 64), 0.1)).clone().requires_grad_(True)
    train_vae.soft_iou_loss(guess, as_vae_image(line)).backward()
    assert guess.grad is not None and guess.grad.abs().sum() > 0


def test_shadow_iou_weight_trains_and_is_recorded(tmp_path):
    data = make_custom_dataset(tmp_path / "data", n=8, size=32)
    output = train_vae.main(
        ["--data_dir", str(data), "--resolution", "32", "--output_dir", str(tmp_path / "vae"), "--max_train_steps",
         "30", "--batch_size", "4", "--learning_rate", "2e-3", "--shadow_iou_weight", "0.1"]
    )  # fmt: skip
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["last_10_reconstruction"] < summary["first_10_reconstruction"]
    assert summary["args"]["shadow_iou_weight"] == 0.1


def test_bad_flags_and_a_missing_vae_are_named(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("")
    base = ["--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]
    for extra, message in (
        (["--resolution", "0"], "--resolution must be a positive multiple of 8"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number"),
        (["--kl_weight", "-1"], "--kl_weight must be >= 0"),
        (["--object_latent_weight", "-1"], "--object_latent_weight must be >= 0"),
        (["--batch_size", "0"], "--train_batch_size (--batch_size) must be >= 1"),
        (["--output_dir", str(a_file)], "exists and is not a folder"),
        (["--checkpointing_steps", "-1"], "--checkpointing_steps must be >= 0"),
        (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit must be >= 1"),
    ):
        with pytest.raises(SystemExit):
            train_vae.parse_args([*base, *extra])
        assert message in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="--pretrained_vae_model_name_or_path .*no-vae is not a folder"):
        train_vae.main([*base, "--pretrained_vae_model_name_or_path", str(tmp_path / "no-vae")])


def _weights(folder):
    return AutoencoderKL.from_pretrained(folder).state_dict()


def test_a_stopped_run_resumes_exactly_from_its_checkpoints(tmp_path):
    """A run with checkpoints every 2 steps (3 batches an epoch, so checkpoint-2 is mid-epoch and checkpoint-4 in the
    second epoch), against the same command resumed from each checkpoint as if it had been killed there: the same
    final weights, bit for bit, and the same loss history (random crops, flips and the shuffle replayed)."""
    data = make_custom_dataset(tmp_path / "data", n=8, size=32)

    def run(output, *extra):
        return train_vae.main(
            ["--data_dir", str(data), "--resolution", "32", "--output_dir", str(output), "--max_train_steps", "5",
             "--batch_size", "2", "--learning_rate", "2e-3", "--crop_size", "24", "--checkpointing_steps", "2", *extra]
        )  # fmt: skip

    whole = run(tmp_path / "whole")
    assert sorted(p.name for p in whole.iterdir() if p.name.startswith(("checkpoint-", "latest", "."))) == [
        "checkpoint-2", "checkpoint-4", "latest"
    ]  # fmt: skip
    assert (whole / "latest").resolve() == (whole / "checkpoint-4").resolve()
    expected = _weights(whole)
    history = json.loads((whole / "training_summary.json").read_text())["last_10_reconstruction"]
    for stopped_at in ("checkpoint-2", "checkpoint-4"):
        resumed_dir = tmp_path / f"from-{stopped_at}"
        resumed_dir.mkdir()
        shutil.copytree(whole / stopped_at, resumed_dir / stopped_at)
        (resumed_dir / ".checkpoint-6.tmp").mkdir()  # what a kill while saving leaves: removed, never resumed from
        resumed = run(resumed_dir, "--resume_from_checkpoint", "latest")
        assert not (resumed_dir / ".checkpoint-6.tmp").exists()
        assert all(torch.equal(expected[name], value) for name, value in _weights(resumed).items()), stopped_at
        summary = json.loads((resumed / "training_summary.json").read_text())
        assert summary["steps"] == 5 and summary["last_10_reconstruction"] == history


def test_resuming_with_other_flags_is_refused_naming_them(tmp_path, caplog):
    data = make_custom_dataset(tmp_path / "data", n=8, size=32)
    common = ["--data_dir", str(data), "--resolution", "32", "--output_dir", str(tmp_path / "vae"), "--batch_size",
              "2", "--checkpointing_steps", "2", "--max_train_steps", "2"]  # fmt: skip
    train_vae.main(common)
    with pytest.raises(ValueError, match=r"--learning_rate 0\.001 -> 0\.0005.*start a new run"):
        train_vae.main([*common, "--learning_rate", "5e-4", "--resume_from_checkpoint", "latest"])
    with pytest.raises(ValueError, match="no-such-checkpoint.*does not exist"):
        train_vae.main([*common, "--resume_from_checkpoint", "no-such-checkpoint"])
    with caplog.at_level("WARNING", logger="train_vae"):  # a fresh start over an earlier run's checkpoints says so
        train_vae.main(common)
    assert "holds checkpoint-2 of an earlier run" in caplog.text and "--resume_from_checkpoint latest" in caplog.text
