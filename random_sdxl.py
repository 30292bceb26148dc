# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Writes a randomly initialised SDXL-format model folder (model_index.json, unet/, vae/, scheduler/).

`--size tiny` keeps SDXL's block types WITH text cross-attention and text_time conditioning, only with far fewer
channels, so `ShadowPipeline.from_sdxl` exercises the real conversion offline in seconds. `--size small` is the
embedded demo model's starting point (pass `--vae` to use a trained small VAE). `--size full` builds the real SDXL
architecture (random weights, no download) for GPU memory and speed measurements.

    python random_sdxl.py --size tiny --output_dir /tmp/tiny-sdxl
"""

from __future__ import annotations

import pipeline_shadow  # noqa: F401  (first: it imports diffusers without the eager torchao import, see there)

# isort: split

import argparse
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

from generate_shadows import load_vae

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (plain numbers; nothing is downloaded).
SDXL_UNET_CONFIG = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

# stabilityai/stable-diffusion-xl-base-1.0 vae/config.json
SDXL_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SDXL_SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

# Same block types, far fewer channels: 32/64/64 channels, one transformer layer per attention block.
TINY_UNET_OVERRIDES = {
    "attention_head_dim": [2, 4, 4],
    "block_out_channels": [32, 64, 64],
    "cross_attention_dim": 32,
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,  # pooled text (32) + 6 time_ids x 8
    "layers_per_block": 1,
    "transformer_layers_per_block": [1, 1, 1],
    "sample_size": 16,  # x 8 = 128 px
}

# Four blocks, so it downsamples by 8 like SDXL's VAE.
TINY_VAE_OVERRIDES = {
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 128,
}


# The embedded demo model (README "The embedded default"): same block types, 64/128/128 channels, 6.5 M parameters
# after conversion, at 128 px (16x16 latents); its VAE has 32/64/64/64 channels.
SMALL_UNET_OVERRIDES = {**TINY_UNET_OVERRIDES, "attention_head_dim": [4, 8, 8], "block_out_channels": [64, 128, 128]}
SMALL_VAE_OVERRIDES = {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1, "norm_num_groups": 16}
SIZES = ("tiny", "small", "full")
_UNET_OVERRIDES = {"tiny": TINY_UNET_OVERRIDES, "small": SMALL_UNET_OVERRIDES, "full": {}}
_VAE_OVERRIDES = {"tiny": TINY_VAE_OVERRIDES, "small": {**SMALL_VAE_OVERRIDES, "sample_size": 128}, "full": {}}


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"`size` must be one of {', '.join(SIZES)}, got {size!r}.")


def unet_config(size: str = "tiny") -> dict:
    _check_size(size)
    return {**SDXL_UNET_CONFIG, **_UNET_OVERRIDES[size]}


def vae_config(size: str = "tiny") -> dict:
    _check_size(size)
    return {**SDXL_VAE_CONFIG, **_VAE_OVERRIDES[size]}


def random_unet(size: str = "tiny", seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config(unet_config(size))


def random_vae(size: str = "tiny", seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL.from_config(vae_config(size))


def load_sdxl_format_vae(name_or_path: str | Path) -> AutoencoderKL:
    """--vae: a trained AutoencoderKL folder (config.json + weights, e.g. train_vae.py's --output_dir), a pipeline
    folder with vae/ or a Hub id, with SDXL's 4 latent channels."""
    vae = load_vae(str(name_or_path), "--vae")
    if vae.config.latent_channels != SDXL_VAE_CONFIG["latent_channels"]:
        raise ValueError(
            f"--vae {name_or_path} has {vae.config.latent_channels} latent channels; an SDXL-format model needs "
            f"{SDXL_VAE_CONFIG['latent_channels']}."
        )
    return vae


def save_random_sdxl(output_dir: str | Path, size: str = "tiny", seed: int = 0, vae: str | Path | None = None) -> Path:
    """Writes the standard diffusers SDXL folder layout with random weights (text encoders are not written: the shadow
    model never loads them). `vae`: a trained AutoencoderKL folder to put in `vae/` instead of a random one."""
    _check_size(size)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} exists and is not a folder.")
    # The VAE first: a wrong --vae must not leave a half-written model folder behind.
    vae_model = load_sdxl_format_vae(vae) if vae else random_vae(size, seed + 1)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--output_dir {output_dir} cannot be created: {error}") from None
    random_unet(size, seed).save_pretrained(output_dir / "unet")
    vae_model.save_pretrained(output_dir / "vae")
    EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG).save_pretrained(output_dir / "scheduler")
    model_index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": "0.42.1",
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": [None, None],
        "text_encoder_2": [None, None],
        "tokenizer": [None, None],
        "tokenizer_2": [None, None],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (output_dir / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return output_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pretrained_vae_model_name_or_path",
        "--vae",
        dest="vae",
        default=None,
        help="A trained AutoencoderKL folder for vae/ (default: random).",
    )
    args = parser.parse_args(argv)
    try:
        path = save_random_sdxl(args.output_dir, args.size, args.seed, args.vae)
    except (ValueError, FileNotFoundError) as error:  # a bad --output_dir or --vae, named: no traceback
        parser.exit(2, f"random_sdxl.py: error: {error}\n")
    print(path)
    return path


if __name__ == "__main__":
    main()
