"""train_vae.py: a short real run learns to reconstruct, calibrates the latent scale and saves a loadable VAE."""

import json

import pytest
import torch
from data_factory import make_custom_dataset
from diffusers import AutoencoderKL

import train_vae


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


def test_decoder_only_needs_a_vae_to_start_from(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_vae.parse_args(["--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--decoder_only"])
    assert "--pretrained_vae_model_name_or_path" in capsys.readouterr().err
