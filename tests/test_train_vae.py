"""train_vae.py: a short real run learns to reconstruct, calibrates the latent scale and saves a loadable VAE."""

import json

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
