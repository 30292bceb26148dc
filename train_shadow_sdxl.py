#!/usr/bin/env python
# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Fine-tunes the SDXL UNet into a single-step shadow generator with rectified flow (arXiv 2412.11972, docs/design.md §3).

    accelerate launch train_shadow_sdxl.py --dataset_type custom --data_dir /path/to/samples \\
      --image_size 512 --batch_size 8 --mixed_precision --gradient_checkpointing \\
      --max_iterations 5000 --save_every 500 --eval_every 500 --log_every 50

The flag names follow diffusers' training examples (`--resolution`, `--train_batch_size`, ...); the names of the
project's training guide (`--image_size`, `--batch_size`, ...) are aliases. Everything lands in `--output_dir`
(default ./shadow-sdxl-model), laid out like diffusers' training examples (docs/design.md §8):

    model_index.json, unet/, vae/, scheduler/, pipeline_shadow.py, README.md (model card), validation.png
                           the FINAL pipeline at the root, written at the end of training: load the folder itself,
                           `ShadowPipeline.from_pretrained(output_dir)`; `--push_to_hub` uploads these files only
    training_config.json   every argument of the run, with the seed and precision actually used
    training.log           every log line (plain text)
    logs/                  tensorboard (or wandb with --report_to wandb)
    validation/step-N.png  object | single-step prediction | ground truth, --num_validation_images rows
    checkpoint-N/          accelerate state (unet/ in diffusers format, optimizer, lr scheduler, RNG, sampler)
                           + training_state.json (step, seed, best validation loss, NaN counters)
    latest -> checkpoint-N a symlink to the newest complete checkpoint, replaced atomically
    best/                  the full ShadowPipeline with the lowest validation loss so far

With `--use_lora` a checkpoint holds unet_lora/ (the adapter and the fully trained conv_in and light projection)
instead of unet/, and best/ and the final pipeline hold the merged weights plus the adapter in unet_lora/. With
`--use_ema` a checkpoint also holds unet_ema/ (the EMA weights and counters), and validation, best/ and the final
pipeline use the EMA weights.
With `--memory_lean` (full fine-tuning on a 24 GB card) the UNet is trained in bf16 with torchao's 8-bit AdamW and
stochastic rounding, and checkpoints, best/ and the final pipeline hold bf16 weights.

Resume with `--resume_from_checkpoint latest` (or a checkpoint path, or the `latest` link itself).
"""

from __future__ import annotations

import pipeline_shadow  # noqa: F401  (first: it imports diffusers without the eager torchao import, see there)

# isort: split

import argparse
import contextlib
import copy
import errno
import importlib
import inspect
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.PngImagePlugin
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    ProjectConfiguration,
    broadcast_object_list,
    gather_object,
    parse_flag_from_env,
)
from accelerate.utils import set_seed as accelerate_set_seed
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.optimization import SchedulerType, get_scheduler
from diffusers.optimization import get_polynomial_decay_schedule_with_warmup as get_scheduler_polynomial
from diffusers.training_utils import EMAModel
from diffusers.utils.torch_utils import is_compiled_module
from tqdm.auto import tqdm

import dataset_loading
import hub_card
from generate_shadows import is_local_model, named_load_errors, prepare_output_dir
from hub_card import (
    GRID_COLUMNS,
    GRID_INFO_KEY,
    public_args,
    push_final_pipeline,
    read_evaluation_metrics,
    save_model_card,
)
from pipeline_shadow import (
    LATENT_CHANNELS,
    LORA_ADAPTER_WEIGHTS,
    LORA_FULL_WEIGHTS,
    LORA_INFO,
    LORA_SUBFOLDER,
    MASK_CHANNELS,
    TIMESTEP_SAMPLING_CHOICES,
    ShadowPipeline,
    ShadowUNet,
    check_resolution,
    decode_shadow,
    encode_latents,
    find_pipeline_folders,
    input_mask_channels,
    load_lora_state,
    mask_samples_per_side,
    mask_to_latent,
    rf_interpolate,
    rf_model_timestep,
    rf_predict_x0,
    rf_velocity,
    sample_timesteps,
    shadow_to_vae_input,
    soft_iou_distance,
)

logger = get_logger(__name__, log_level="INFO")

DEFAULT_PRETRAINED_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DATASET_TYPES = dataset_loading.DATASET_TYPES  # the shared vocabulary; `benchmark` is refused here (a test set)
REPORT_TO_CHOICES = ("tensorboard", "wandb", "all", "none")
MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
VAE_PRECISION_CHOICES = ("fp32", "fp16", "bf16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
LATEST_LINK = "latest"
BEST_DIR = "best"
# What the final pipeline puts at the root of --output_dir (save_pretrained's files, the model card, the grid); the
# rest of the folder is training state and logs that --push_to_hub leaves out.
FINAL_PIPELINE_ENTRIES = ("model_index.json", "unet", "vae", "scheduler", "pipeline_shadow.py", LORA_SUBFOLDER)
MODEL_CARD_FILES = ("README.md", "validation.png")
DEFAULT_OUTPUT_DIR = "shadow-sdxl-model"  # also the default Hub repository name: a run's name, not "checkpoints"
TRAINING_STATE_FILE = "training_state.json"
# The lr schedule's state, written by this script with torch.save and read back with torch.load(weights_only=True):
# plain numbers only, never code. Checkpoints from before it hold the same dict in accelerate's custom_checkpoint_0.pkl,
# which accelerate itself would unpickle with weights_only=False; it is read here the safe way instead (docs/design.md §9).
SCHEDULER_STATE_FILE = "lr_scheduler.pt"
LEGACY_SCHEDULER_STATE_FILE = "custom_checkpoint_0.pkl"
CUSTOM_STATE_PATTERN = re.compile(r"^custom_checkpoint_\d+\.pkl$")
DEEPSPEED_STATE_DIR = "pytorch_model"  # accelerate's DeepSpeed checkpoint id; DeepSpeed unpickles what it holds
TRAINING_CONFIG_FILE = "training_config.json"
# --best_by -> the validation result that picks best/ (both are computed on the same samples and noise).
BEST_METRICS = {"single_step": "val_loss_single_step", "training_t": "val_loss"}
TRAINING_LOG_FILE = "training.log"
EMA_DIR = "unet_ema"  # in a checkpoint: the EMA weights (diffusion_pytorch_model.safetensors) and its counters
EMA_STATE_FILE = "ema_state.json"
HF_COLUMN_FLAGS = (*dataset_loading.HF_COLUMN_OPTIONS.values(), "object_id_column")
LOG_FORMAT = "%(asctime)s - %(levelname)s - %(name)s - %(message)s"


class ConfigurationError(ValueError):
    """A mistake in the arguments or the data, found before any model loads."""


class NonFiniteLossError(RuntimeError):
    """Raised when the loss or the gradients stay non-finite for `--max_nan_steps` optimizer steps in a row."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint or pipeline could not be written (e.g. the disk is full); the partial folder was removed."""


class BadSampleError(RuntimeError):
    """A training sample failed to load mid-run (without --skip_bad_samples): the run saved a checkpoint and stopped."""


# --------------------------------------------------------------------------------------------------------------------
# 1. Arguments
# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """diffusers' flag names first; the training guide's names are aliases of the same option."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--pretrained_model_name_or_path",
        default=DEFAULT_PRETRAINED_MODEL,
        help="An SDXL base in the diffusers layout (Hub id or folder), converted with ShadowPipeline.from_sdxl; or a "
        "saved shadow pipeline (e.g. a previous run's --output_dir or its best/) to continue training from.",
    )
    model.add_argument(
        "--pretrained_vae_model_name_or_path",
        default=None,
        help="Another SDXL VAE (e.g. madebyollin/sdxl-vae-fp16-fix, needed for --vae_precision fp16).",
    )
    model.add_argument(
        "--vae_precision",
        default="fp32",
        choices=VAE_PRECISION_CHOICES,
        help="dtype of the frozen VAE. The stock SDXL VAE overflows in fp16; keep fp32 unless the VAE is fp16-safe.",
    )
    model.add_argument(
        "--mask_channels",
        type=int,
        default=None,
        help="The object mask's channels in the UNet input: 1 = area-averaged to the latent grid (the paper's), k*k = "
        "k x k mask samples per latent cell (64 = every pixel of SDXL's 8 x 8 cell: poles and legs thinner than a "
        "cell). A model with 1 is converted exactly (ShadowUNet.with_mask_channels) and learns the detail in training. "
        "Default: the pretrained model's own (1 for an SDXL base).",
    )
    model.add_argument("--revision", default=None, help="Revision of the pretrained model on the Hub.")
    model.add_argument("--variant", default=None, help="Variant of the model files, e.g. fp16.")
    model.add_argument("--cache_dir", default=None, help="Where downloaded models and datasets are stored.")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_type", default="custom", choices=DATASET_TYPES, help="Where the samples come from.")
    data.add_argument(
        "--train_data_dir",
        "--data_dir",
        dest="train_data_dir",
        default=None,
        help="Folder with objects/, masks/, shadows/ and metadata.json (--dataset_type custom), or a local dataset "
        "for --dataset_type hf.",
    )
    data.add_argument("--dataset_name", default=None, help="A Hugging Face dataset id (--dataset_type hf).")
    data.add_argument(
        "--resolution",
        "--image_size",
        dest="resolution",
        type=int,
        default=1024,
        help="Training resolution (multiple of 8); recorded in the saved pipeline as its processing resolution.",
    )
    data.add_argument(
        "--val_fraction", type=float, default=0.1, help="Fraction of the samples held out for validation."
    )
    data.add_argument(
        "--split_seed",
        type=int,
        default=0,
        help="Seed of the validation split (by object), independent of --seed: a run continued or re-run with another "
        "--seed keeps the same validation objects out of training.",
    )
    data.add_argument(
        "--random_flip",
        action="store_true",
        help="Random horizontal flips, with phi mirrored to (180 - phi) mod 360 (docs/design.md §2).",
    )
    data.add_argument(
        "--cache_latents",
        action="store_true",
        help="Encode every sample once with the VAE before training (no VAE in the training step).",
    )
    data.add_argument(
        "--latent_cache_dir",
        default=None,
        help=f"Where --cache_latents stores the latents (default {dataset_loading.DEFAULT_LATENT_CACHE_DIR}).",
    )
    data.add_argument("--dataset_config_name", default=None, help="Config of the Hugging Face dataset.")
    for option in HF_COLUMN_FLAGS:
        data.add_argument(f"--{option}", default=None, help="Hugging Face dataset column (default: auto-detected).")
    data.add_argument(
        "--dataloader_num_workers",
        "--num_workers",
        dest="dataloader_num_workers",
        type=int,
        default=4,
        help="Data loading worker processes (0 = in the main process).",
    )

    training = parser.add_argument_group("training")
    training.add_argument(
        "--output_dir",
        default=DEFAULT_OUTPUT_DIR,
        help="The run folder: the final pipeline at its root (load the folder itself), checkpoint-N/, latest, best/, "
        "logs. Its own name is the default --hub_model_id.",
    )
    training.add_argument(
        "--seed", type=int, default=None, help="Seed for reproducible training (drawn and recorded if not given)."
    )
    training.add_argument(
        "--train_batch_size", "--batch_size", dest="train_batch_size", type=int, default=2, help="Batch per device."
    )
    training.add_argument("--num_train_epochs", type=int, default=100)
    training.add_argument(
        "--max_train_steps",
        "--max_iterations",
        dest="max_train_steps",
        type=int,
        default=None,
        help="Total optimizer steps; overrides --num_train_epochs.",
    )
    training.add_argument(
        "--gradient_accumulation_steps",
        "--gradient_accumulation",
        dest="gradient_accumulation_steps",
        type=int,
        default=1,
        help="Micro-batches per optimizer step.",
    )
    training.add_argument(
        "--gradient_checkpointing", action="store_true", help="Recompute activations in backward to save memory."
    )
    training.add_argument(
        "--timestep_sampling",
        default="uniform",
        choices=TIMESTEP_SAMPLING_CHOICES,
        help="Distribution of the flow time t in [0, 1] (t = 1 is pure noise, where single-step inference starts): "
        "uniform; logit_normal (SD3); shifted (biased toward t = 1); single_step (t = 1 only).",
    )
    training.add_argument(
        "--best_by",
        default="single_step",
        choices=tuple(BEST_METRICS),
        help="Which validation loss picks best/: single_step = at t = 1, the regime the pipeline runs in (default); "
        "training_t = at t drawn like --timestep_sampling. Both are logged.",
    )
    training.add_argument(
        "--shadow_iou_weight",
        type=float,
        default=0.0,
        help="Add this weight x (1 - soft IoU) between the decoded one-step estimate x0 = x_t - t v and the decoded "
        "true latent (through the frozen VAE decoder) to the velocity MSE: the metric of evaluate_shadow.py, which "
        "weighs a thin leg's or pole's shadow by its share of the shadow. Costs a decoder pass and its backward a "
        "step. 0 = off (the paper's loss).",
    )
    training.add_argument(
        "--shadow_iou_samples",
        type=int,
        default=None,
        help="Decode only the first N samples of each micro-batch for --shadow_iou_weight (default: all). The "
        "decoder pass is the dear part of such a step: at 128 px on a CPU, 7x the small UNet's.",
    )
    training.add_argument("--logit_mean", type=float, default=0.0, help="Mean for --timestep_sampling logit_normal.")
    training.add_argument("--logit_std", type=float, default=1.0, help="Std for --timestep_sampling logit_normal.")
    training.add_argument("--timestep_shift", type=float, default=3.0, help="Shift for --timestep_sampling shifted.")
    training.add_argument(
        "--mixed_precision",
        nargs="?",
        const="bf16",
        default=None,
        choices=MIXED_PRECISION_CHOICES,
        help="Autocast precision; a bare --mixed_precision means bf16 (fp16 where bf16 is unsupported). Default: the "
        "accelerate config. Weights and the loss stay fp32.",
    )
    training.add_argument("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere or newer GPUs.")
    training.add_argument(
        "--max_nan_steps",
        type=int,
        default=5,
        help="Stop after this many optimizer steps in a row with a non-finite loss or gradient (each is skipped).",
    )
    training.add_argument(
        "--allow_unsafe_checkpoint",
        action="store_true",
        help="Resume from a DeepSpeed checkpoint, whose state DeepSpeed unpickles (it can run code): only for "
        "checkpoints you made yourself. Other checkpoints are always loaded without unpickling code.",
    )
    training.add_argument(
        "--skip_bad_samples",
        action="store_true",
        help="Skip a sample that fails to load mid-run (e.g. a truncated PNG) with a counted, logged warning. "
        "Default: save a checkpoint and stop, naming the file.",
    )
    training.add_argument(
        "--resume_from_checkpoint",
        "--resume_from",
        dest="resume_from_checkpoint",
        default=None,
        help='A checkpoint-N folder, the `latest` link, or "latest" (the newest in --output_dir; starts fresh if none).',
    )

    optim = parser.add_argument_group("optimizer")
    optim.add_argument("--learning_rate", type=float, default=1e-5, help="Peak learning rate (paper: 1e-5).")
    optim.add_argument(
        "--scale_lr", action="store_true", help="Multiply the lr by processes x accumulation x batch size."
    )
    optim.add_argument(
        "--lr_scheduler",
        default="constant_with_warmup",
        choices=[s.value for s in SchedulerType],
        help="diffusers' get_scheduler name.",
    )
    optim.add_argument(
        "--lr_warmup_steps", type=int, default=1000, help="Linear warm-up from 0 over this many optimizer steps."
    )
    optim.add_argument("--lr_num_cycles", type=int, default=1, help="Cycles for cosine_with_restarts.")
    optim.add_argument("--lr_power", type=float, default=1.0, help="Power for the polynomial scheduler.")
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_weight_decay", type=float, default=1e-2)
    optim.add_argument("--adam_epsilon", type=float, default=1e-08)
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0 = no clipping).")
    optim.add_argument(
        "--use_8bit_adam",
        action="store_true",
        help="bitsandbytes' 8-bit AdamW (CUDA only): the two moments take 2 bytes per parameter instead of 8.",
    )
    optim.add_argument(
        "--memory_lean",
        action="store_true",
        help="Full fine-tuning in 6 bytes per parameter instead of 16 (for a 24 GB card): the UNet's weights and "
        "gradients in bf16, torchao's AdamW8bit (8-bit moments) with bf16 stochastic rounding of every update, so "
        "updates far below a weight's bf16 spacing (lr 1e-5) still move it on average; bf16 autocast. Needs torchao "
        "(pip install torchao). Checkpoints, best/ and the final pipeline hold bf16 weights.",
    )

    memory = parser.add_argument_group("LoRA, EMA and attention")
    memory.add_argument(
        "--use_lora",
        action="store_true",
        help="Train peft LoRA adapters on the attention and feed-forward layers; conv_in and the light projection "
        "train fully. best/ and the final pipeline hold the merged weights and the adapter (unet_lora/).",
    )
    memory.add_argument("--lora_rank", type=int, default=4, help="Rank of the LoRA updates (diffusers' default).")
    memory.add_argument("--lora_alpha", type=float, default=None, help="LoRA scaling numerator (default: the rank).")
    memory.add_argument(
        "--use_ema",
        action="store_true",
        help="Keep an exponential moving average of the trained weights; validation, best/ and the final pipeline "
        "use it.",
    )
    memory.add_argument("--ema_decay", type=float, default=0.9999, help="EMA decay (warmed up as (1+n)/(10+n)).")
    memory.add_argument(
        "--offload_ema",
        action="store_true",
        help="Keep the EMA weights in CPU memory, moved to the GPU for each update (less GPU memory, slower steps).",
    )
    memory.add_argument("--foreach_ema", action="store_true", help="Update the EMA with torch._foreach kernels.")
    memory.add_argument(
        "--enable_xformers_memory_efficient_attention",
        action="store_true",
        help="xformers attention (CUDA only). Without it, PyTorch's scaled-dot-product attention is used.",
    )

    hub = parser.add_argument_group("sharing")
    hub.add_argument(
        "--push_to_hub",
        action="store_true",
        help="Upload the final pipeline (weights, code, model card; no checkpoints, best/ or logs) to the Hugging Face "
        "Hub at the end. The repository is created (or checked) at start-up, so a bad token or name fails before "
        "training.",
    )
    hub.add_argument(
        "--hub_model_id",
        default=None,
        help="The Hub repository, e.g. you/shadow-sdxl (default: the --output_dir folder's own name).",
    )
    hub.add_argument("--hub_token", default=None, help="Hub token (default: the one `hf auth login` stored).")
    hub.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repository as private.")
    hub.add_argument(
        "--hub_license",
        default="openrail++",
        help="Licence of the uploaded weights in the model card. Weights fine-tuned from SDXL inherit its CreativeML "
        "Open RAIL++-M licence; the code beside them is Apache-2.0.",
    )
    hub.add_argument(
        "--evaluation_metrics",
        default=None,
        help="metrics.json of an evaluate_shadow.py run, summarised in the model card.",
    )

    logs = parser.add_argument_group("logging, validation and checkpoints")
    logs.add_argument(
        "--logging_steps", "--log_every", dest="logging_steps", type=int, default=50, help="Log the loss every N steps."
    )
    logs.add_argument(
        "--validation_steps",
        "--eval_every",
        dest="validation_steps",
        type=int,
        default=500,
        help="Validation loss and prediction grid every N optimizer steps (and at the end).",
    )
    logs.add_argument(
        "--num_validation_images", type=int, default=4, help="Validation samples shown in the prediction grid."
    )
    logs.add_argument(
        "--checkpointing_steps",
        "--save_every",
        dest="checkpointing_steps",
        type=int,
        default=500,
        help="Save the full training state every N optimizer steps (for --resume_from_checkpoint).",
    )
    logs.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=None,
        help="Keep at most this many checkpoint-N folders (default: keep all, as in diffusers). The oldest are removed "
        "only AFTER a new checkpoint is completely saved (diffusers prunes before saving), so a crash while saving "
        "never leaves fewer than the limit; the one `latest` points to is never removed.",
    )
    logs.add_argument("--report_to", default="tensorboard", choices=REPORT_TO_CHOICES, help="Experiment tracker.")
    logs.add_argument("--logging_dir", default="logs", help="Tracker folder, relative to --output_dir.")
    logs.add_argument("--tracker_project_name", default="train_shadow_sdxl", help="Tracker run / project name.")
    # Test hook: multiplies the loss by NaN at these optimizer steps, so tests exercise the real guard.
    parser.add_argument("--debug_inject_nan_at_step", type=int, nargs="+", default=[], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def validate_args(args: argparse.Namespace) -> dataset_loading.ShadowDataset:
    """Catches mistakes before any model loads. Raises ConfigurationError (a ValueError) naming the flag and what is
    allowed, or listing every problem of the data. Returns the training data, opened and checked: the run's one scan
    of it, which `build_data` splits into loaders."""
    return check_run(args)[0]


def check_run(args: argparse.Namespace) -> tuple[dataset_loading.ShadowDataset, Path | None]:
    """`validate_args`, also returning the checkpoint to resume from: None, or one that `checkpoint_problems` found
    intact (for `latest`, the newest intact one)."""
    try:
        return _check_args(args)
    except ConfigurationError:
        raise
    except ValueError as error:
        raise ConfigurationError(str(error)) from error


def _check_args(args: argparse.Namespace) -> tuple[dataset_loading.ShadowDataset, Path | None]:
    check_resolution(args.resolution, "--resolution")
    positive = (
        "train_batch_size",
        "gradient_accumulation_steps",
        "num_train_epochs",
        "logging_steps",
        "validation_steps",
        "checkpointing_steps",
        "max_nan_steps",
    )
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be an integer >= 1, got {getattr(args, name)}.")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise ValueError(f"`--max_train_steps` (`--max_iterations`) must be >= 1, got {args.max_train_steps}.")
    for name in ("dataloader_num_workers", "num_validation_images", "lr_warmup_steps", "checkpoints_total_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise ValueError(f"`--{name}` must be >= 0, got {getattr(args, name)}.")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(f"`--val_fraction` must lie in [0, 1), got {args.val_fraction}.")
    for name, value in vars(args).items():  # NaN passes every `<` / `>` check below: refused once, for every flag
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"`--{name}` must be a finite number, got {value}.")
    if args.mask_channels is not None:
        mask_samples_per_side(args.mask_channels, "--mask_channels")
    if args.learning_rate <= 0 or args.max_grad_norm < 0:
        raise ValueError("`--learning_rate` must be > 0 and `--max_grad_norm` >= 0.")
    _check_optimizer_args(args)
    if args.timestep_sampling == "logit_normal" and args.logit_std <= 0:
        raise ValueError(f"`--logit_std` must be > 0, got {args.logit_std}.")
    if args.timestep_sampling == "shifted" and args.timestep_shift <= 0:
        raise ValueError(f"`--timestep_shift` must be > 0, got {args.timestep_shift}.")
    if args.report_to == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError as error:
            raise ValueError("`--report_to wandb` needs wandb: pip install wandb (or use tensorboard).") from error
    _check_options(args)
    check_deepspeed_environment(args)
    dataset = _validate_data_args(args)
    _validate_output_dir(args.output_dir, args)
    if args.cache_latents:  # made now: a folder that cannot be is named before the models load
        prepare_output_dir(args.latent_cache_dir or dataset_loading.DEFAULT_LATENT_CACHE_DIR, "--latent_cache_dir")
    # raises for a missing or broken explicit checkpoint; `latest` falls back to the newest intact one
    resume_dir = resolve_resume_checkpoint(args, check=lambda path: checkpoint_problems(path, args))
    if resume_dir is not None:
        _check_resume_compatible(args, resume_dir)
    _check_pretrained_folders(args)
    return dataset, resume_dir


def _local_folder(name_or_path: str | None, flag: str, what: str) -> Path | None:
    """The folder `name_or_path` means, or None for a Hub id (`owner/name`); a local path that is not a folder
    raises, naming `flag` (generate_shadows.is_local_model's one rule for every script)."""
    if not name_or_path:
        return None
    try:
        local = is_local_model(name_or_path, f"`{flag}`", what)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    return Path(name_or_path).expanduser() if local else None


def _read_config(path: Path) -> dict | None:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _check_pretrained_folders(args: argparse.Namespace) -> None:
    """A local --pretrained_model_name_or_path (and --pretrained_vae_model_name_or_path) is read from its config files
    alone, before any model loads: an SDXL base in the diffusers layout (unet/ with a 4-channel UNet, vae/) or a saved
    shadow pipeline; a 4-channel latent VAE. (Hub ids are checked when they load, see `build_models`.)"""
    flag = "--pretrained_model_name_or_path"
    folder = _local_folder(args.pretrained_model_name_or_path, flag, "an SDXL base or a saved shadow pipeline folder")
    vae_folder = _local_folder(
        args.pretrained_vae_model_name_or_path, "--pretrained_vae_model_name_or_path", "a VAE folder"
    )
    if vae_folder is not None:
        _check_vae_config(vae_folder / "config.json", "--pretrained_vae_model_name_or_path")
    if folder is None:
        return
    named = f"`{flag}` {args.pretrained_model_name_or_path!r}"
    unet = _read_config(folder / "unet" / "config.json")
    if unet is None:
        below = ", ".join(str(p) for p in find_pipeline_folders(folder))
        raise ValueError(
            f"{named} has no readable unet/config.json: it is neither an SDXL base in the diffusers layout (unet/, "
            "vae/) nor a saved shadow pipeline"
            + (f". Pipelines below it: {below}." if below else " (a training run's folder or its best/).")
        )
    if not is_shadow_pipeline(str(folder)):  # an SDXL base, converted by ShadowPipeline.from_sdxl
        channels = (unet.get("in_channels"), unet.get("out_channels"))
        if channels != (LATENT_CHANNELS, LATENT_CHANNELS):
            raise ValueError(
                f"{named} holds a UNet with {channels[0]} input and {channels[1]} output channels (unet/config.json); "
                f"the shadow model is converted from an SDXL base UNet with {LATENT_CHANNELS} and {LATENT_CHANNELS} "
                "(e.g. stabilityai/stable-diffusion-xl-base-1.0, not an inpainting or refiner model)."
            )
    elif (own := saved_mask_channels(unet)) is not None:
        check_mask_channels(own, args.mask_channels, named)
    if vae_folder is None:
        _check_vae_config(folder / "vae" / "config.json", flag)


def saved_mask_channels(unet_config_file: dict | None) -> int | None:
    """The mask channels of a saved ShadowUNet, from its unet/config.json (None when it names no input channels)."""
    in_channels = ((unet_config_file or {}).get("unet_config") or {}).get("in_channels")
    return input_mask_channels(in_channels) if isinstance(in_channels, int) else None


def _run_mask_channels(args: argparse.Namespace) -> int | None:
    """The mask channels this run's UNet will have: --mask_channels, else a local pretrained model's own (1 for an
    SDXL base); None for a Hub id, which is only known once it loads."""
    if args.mask_channels is not None:
        return args.mask_channels
    folder = Path(args.pretrained_model_name_or_path)
    if not folder.is_dir():
        return None
    if not is_shadow_pipeline(str(folder)):
        return MASK_CHANNELS
    return saved_mask_channels(_read_config(folder / "unet" / "config.json"))


def mask_channels_mismatch(checkpoint: str, there: int, here: int) -> ValueError:
    """The error for a checkpoint whose UNet takes its mask in other channels than this run's (--mask_channels)."""
    return ValueError(
        f"{checkpoint} holds a UNet taking its mask in {there} channels, this run's takes it in {here}: resume with "
        f"`--mask_channels {there}`, as the checkpoint was trained."
    )


def check_mask_channels(pretrained: int, wanted: int | None, named: str) -> None:
    """A pretrained UNet taking its mask in `pretrained` channels can train with --mask_channels `wanted`: its own
    count, or any square count when it takes the mask area-averaged (1 channel, `ShadowUNet.with_mask_channels`)."""
    if wanted is not None and wanted != pretrained and pretrained != MASK_CHANNELS:
        raise ValueError(
            f"{named} takes its mask in {pretrained} channels; `--mask_channels {wanted}` can only convert a model "
            f"with an area-averaged ({MASK_CHANNELS}-channel) mask: leave the flag out, or pass {pretrained}."
        )


def _check_vae_config(path: Path, flag: str) -> None:
    config = _read_config(path)
    if config is None:
        raise ValueError(
            f"`{flag}`: {path} is missing or not valid JSON: the VAE must be an AutoencoderKL folder in the diffusers "
            "layout (config.json + weights)."
        )
    if config.get("latent_channels", 4) != LATENT_CHANNELS:
        raise ValueError(
            f"`{flag}`: {path} describes a VAE with {config.get('latent_channels')} latent channels; the shadow model "
            f"needs SDXL's {LATENT_CHANNELS}."
        )


def _check_optimizer_args(args: argparse.Namespace) -> None:
    """AdamW's, the lr schedule's and the seed's ranges: otherwise torch, diffusers or numpy refuse them only after
    the models are loaded, and `--lr_power < 0` crashes the LAST step of the run (0 ** negative)."""
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise ValueError(f"`--{name}` must lie in [0, 1), got {getattr(args, name)}.")
    if args.adam_epsilon < 0 or args.adam_weight_decay < 0:
        raise ValueError(
            f"`--adam_epsilon` and `--adam_weight_decay` must be >= 0, got {args.adam_epsilon} and "
            f"{args.adam_weight_decay}."
        )
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise ValueError(f"`--seed` must be an integer in [0, 2**32 - 1], got {args.seed}.")
    if args.lr_scheduler == "piecewise_constant":
        raise ValueError(
            "`--lr_scheduler piecewise_constant` needs step rules, which this script does not take: use constant, "
            "constant_with_warmup, linear, cosine, cosine_with_restarts or polynomial."
        )
    if args.lr_scheduler == "cosine_with_restarts" and args.lr_num_cycles < 1:
        raise ValueError(f"`--lr_num_cycles` must be an integer >= 1, got {args.lr_num_cycles}.")
    if args.lr_scheduler == "polynomial":
        lr_end = inspect.signature(get_scheduler_polynomial).parameters["lr_end"].default
        if args.lr_power < 0:
            raise ValueError(f"`--lr_power` must be >= 0, got {args.lr_power}.")
        if args.learning_rate <= lr_end:
            raise ValueError(
                f"`--lr_scheduler polynomial` decays to {lr_end:g}: `--learning_rate` must be above it, got "
                f"{args.learning_rate:g}."
            )


def _check_options(args: argparse.Namespace) -> None:
    """LoRA, EMA, 8-bit Adam, the memory-lean mode, xformers and the Hub: each flag's package and hardware, checked
    before any model loads."""
    if args.memory_lean:  # first: its conflicts say more than a missing package of the flag it replaces
        _check_memory_lean(args)
    if args.use_lora:
        _require_package("peft", "--use_lora", "pip install peft")
        if args.lora_rank < 1:
            raise ValueError(f"`--lora_rank` must be an integer >= 1, got {args.lora_rank}.")
        if args.lora_alpha is not None and args.lora_alpha <= 0:
            raise ValueError(f"`--lora_alpha` must be > 0, got {args.lora_alpha}.")
    if not (math.isfinite(args.shadow_iou_weight) and args.shadow_iou_weight >= 0):
        raise ValueError(f"`--shadow_iou_weight` must be a number >= 0 (0 = off), got {args.shadow_iou_weight}.")
    if args.shadow_iou_samples is not None and args.shadow_iou_samples < 1:
        raise ValueError(
            f"`--shadow_iou_samples` must be an integer >= 1 (default: all), got {args.shadow_iou_samples}."
        )
    if not 0.0 <= args.ema_decay <= 1.0:
        raise ValueError(f"`--ema_decay` must lie in [0, 1], got {args.ema_decay}.")
    for flag in ("offload_ema", "foreach_ema"):
        if getattr(args, flag) and not args.use_ema:
            raise ValueError(f"`--{flag}` only applies to `--use_ema`: add `--use_ema` or drop `--{flag}`.")
    if args.use_8bit_adam:
        _require_package("bitsandbytes", "--use_8bit_adam", "pip install bitsandbytes")
        _require_cuda("--use_8bit_adam", "bitsandbytes' 8-bit AdamW runs on CUDA GPUs")
    if args.enable_xformers_memory_efficient_attention:
        _require_package("xformers", "--enable_xformers_memory_efficient_attention", "pip install xformers")
        _require_cuda(
            "--enable_xformers_memory_efficient_attention",
            "xformers' attention kernels do not run on the CPU; without the flag PyTorch's scaled-dot-product "
            "attention is used",
        )
    if args.hub_token is not None and args.report_to in ("wandb", "all"):
        raise ValueError(
            "`--hub_token` with `--report_to wandb` would expose the token to the tracker's run config: log in "
            "with `hf auth login` instead and drop `--hub_token`."
        )
    if args.evaluation_metrics is not None:
        try:
            read_evaluation_metrics(args.evaluation_metrics)
        except (OSError, ValueError) as error:
            raise ValueError(f"`--evaluation_metrics` {args.evaluation_metrics!r} cannot be read: {error}") from error


def _check_memory_lean(args: argparse.Namespace) -> None:
    """--memory_lean replaces the fp32 weights, fp32 AdamW and the optional 8-bit Adam: refuse what it replaces or
    cannot be combined with (DeepSpeed: see check_deepspeed_environment)."""
    conflicts = {
        "use_8bit_adam": "it already keeps AdamW's moments in 8 bits (torchao's AdamW8bit)",
        "use_lora": "it is for full fine-tuning; LoRA's trained share (0.5 %) already needs little optimizer memory",
    }
    for flag, reason in conflicts.items():
        if getattr(args, flag):
            raise ValueError(f"`--memory_lean` cannot be combined with `--{flag}`: {reason}. Drop one of the two.")
    if args.mixed_precision in ("no", "fp16"):
        raise ValueError(
            f"`--memory_lean` trains bf16 weights under bf16 autocast; `--mixed_precision {args.mixed_precision}` "
            "does not apply: drop it (or pass bf16)."
        )
    try:
        from torchao.optim import AdamW8bit
    except ImportError as error:
        raise ValueError(
            "`--memory_lean` needs torchao (its AdamW8bit with bf16 stochastic rounding), which is not installed: "
            "pip install torchao."
        ) from error
    if "bf16_stochastic_round" not in inspect.signature(AdamW8bit).parameters:
        raise ValueError(
            "`--memory_lean` needs a torchao whose AdamW8bit has `bf16_stochastic_round`: pip install -U torchao."
        )
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ValueError(
            "`--memory_lean` needs a GPU with bf16 support (Ampere or newer): this one has none. Use the default "
            "fp32 weights with --mixed_precision fp16, or --use_8bit_adam / --use_lora to save memory."
        )


def _check_resume_compatible(args: argparse.Namespace, resume_dir: Path) -> None:
    """A --memory_lean checkpoint holds bf16 weights and 8-bit AdamW moments, a default one fp32 weights and fp32
    moments: the optimizer state of one does not load into the other's optimizer. And a resumed run keeps its
    validation split (else it would train on its validation objects)."""
    saved = read_training_state(resume_dir)
    recorded_split = saved.get("split_seed", 0)
    if recorded_split != args.split_seed:
        raise ValueError(
            f"`--resume_from_checkpoint` {str(resume_dir)!r} was trained with `--split_seed {recorded_split}`, this "
            f"run has `--split_seed {args.split_seed}`: another validation split would put validation objects into "
            f"training. Resume with `--split_seed {recorded_split}`."
        )
    there = saved_mask_channels(_read_config(resume_dir / "unet" / "config.json"))  # full fine-tuning's checkpoints
    here = _run_mask_channels(args)
    if there is not None and here is not None and there != here:
        raise mask_channels_mismatch(f"`--resume_from_checkpoint` {str(resume_dir)!r}", there, here)
    recorded = bool(saved.get("memory_lean", False))
    if recorded != args.memory_lean:
        raise ValueError(
            f"`--resume_from_checkpoint` {str(resume_dir)!r} was saved {'with' if recorded else 'without'} "
            f"`--memory_lean`, this run is {'with' if args.memory_lean else 'without'} it: their optimizer states "
            "differ. Resume with the same setting, or start a new run from a saved pipeline (the run folder or its best/) with "
            "--pretrained_model_name_or_path (fresh optimizer state)."
        )


def _require_package(module: str, flag: str, install: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ValueError(f"`{flag}` needs {module}, which is not installed: {install}.") from error


def _require_cuda(flag: str, reason: str) -> None:
    if not torch.cuda.is_available():
        raise ValueError(f"`{flag}` needs a CUDA GPU and none is available: {reason}.")


def check_deepspeed_environment(args: argparse.Namespace, environ=None) -> None:
    """`accelerate launch` with a DeepSpeed config exports its settings as ACCELERATE_* variables, and the Accelerator
    then takes the accumulation steps from them whatever the script asked for; the epoch and resume arithmetic here
    uses `--gradient_accumulation_steps`, so the two must agree. ZeRO-3 is refused: it shards the weights, and
    validation and pipeline saving run on the main process alone."""
    environ = os.environ if environ is None else environ
    found = []  # (where, value)
    steps = environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "")
    if steps.isdigit():
        found.append(("the accelerate config's gradient_accumulation_steps", int(steps)))
    config_file = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    deepspeed_config = {}
    if config_file != "none":
        try:
            deepspeed_config = json.loads(Path(config_file).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"The DeepSpeed config file {config_file!r} cannot be read: {error}") from error
        if isinstance(deepspeed_config.get("gradient_accumulation_steps"), int):
            found.append(
                (f"{config_file}'s gradient_accumulation_steps", deepspeed_config["gradient_accumulation_steps"])
            )
    for where, value in found:
        if value != args.gradient_accumulation_steps:
            raise ValueError(
                f"`--gradient_accumulation_steps` is {args.gradient_accumulation_steps} but {where} is {value}: "
                f"accelerate would accumulate {value} micro-batches. Pass `--gradient_accumulation_steps {value}` or "
                "change the config (configs/deepspeed_zero2.yaml: deepspeed_config.gradient_accumulation_steps)."
            )
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    if args.memory_lean:
        raise ValueError(
            "`--memory_lean` cannot run under DeepSpeed: DeepSpeed wraps the optimizer and keeps its own fp32 master "
            "weights. Launch without the DeepSpeed config (one GPU, or configs/multi_gpu.yaml)."
        )
    stage = environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or deepspeed_config.get("zero_optimization", {}).get("stage")
    if str(stage) == "3":
        raise ValueError(
            "DeepSpeed ZeRO stage 3 is not supported: it shards the weights, and validation and pipeline saving run "
            "on the main process alone. Use ZeRO-2 (configs/deepspeed_zero2.yaml)."
        )
    clipping = environ.get("ACCELERATE_GRADIENT_CLIPPING", "")
    if clipping not in ("", "auto", "none") and float(clipping) != args.max_grad_norm:
        raise ValueError(
            f"`--max_grad_norm` is {args.max_grad_norm} but the DeepSpeed config clips at {clipping} (DeepSpeed clips "
            f"inside its own step): pass `--max_grad_norm {float(clipping):g}` or change "
            "deepspeed_config.gradient_clipping."
        )


def _validate_data_args(args: argparse.Namespace) -> dataset_loading.ShadowDataset:
    if args.dataset_type == "benchmark":
        raise ValueError(
            "`--dataset_type benchmark` is the paper's TEST set (docs/design.md §4): never train on it. "
            "Use `custom` (--data_dir) or `hf` (--dataset_name)."
        )
    if args.dataset_type == "custom" and not args.train_data_dir:
        raise ValueError("`--dataset_type custom` needs `--data_dir` (`--train_data_dir`): no data given.")
    if args.dataset_type == "hf" and not (args.dataset_name or args.train_data_dir):
        raise ValueError("`--dataset_type hf` needs `--dataset_name` (or a local `--data_dir`): no data given.")
    if args.train_data_dir and not os.path.isdir(args.train_data_dir):
        raise ValueError(f"`--data_dir` {args.train_data_dir!r} is not a folder.")
    # Every problem of the data at once (image headers, sizes, metadata), before any model loads.
    try:
        return dataset_loading.open_shadow_dataset(
            data_source(args), image_size=args.resolution, verify="quick", for_training=True
        )
    except (OSError, KeyError) as error:
        raise ValueError(f"The training data cannot be read: {error}") from error


def _validate_output_dir(output_dir: str, args: argparse.Namespace | None = None) -> None:
    """--output_dir is a new folder or a run's own (training_config.json, `latest`): the final pipeline and its model
    card land at its root, so a folder holding anything else they would overwrite (another model, a dataset, a
    project's README.md), or the model or data this run reads, is refused before anything is written."""
    path = Path(output_dir)
    is_run = (path / TRAINING_CONFIG_FILE).is_file() or (path / LATEST_LINK).is_symlink()
    if args is not None:
        for flag, other in (
            ("--pretrained_model_name_or_path", args.pretrained_model_name_or_path),
            ("--data_dir", args.train_data_dir),
        ):
            other_path = Path(other).expanduser() if other else None
            if other_path is not None and path.exists() and other_path.exists() and path.samefile(other_path):
                raise ValueError(
                    f"`--output_dir` {output_dir!r} is the `{flag}` folder: the final pipeline, checkpoints and logs "
                    "would be written into what this run reads. Pick a new folder (e.g. shadow-sdxl-model); to go on "
                    "with a stopped run, use --resume_from_checkpoint latest in its own --output_dir."
                )
    if not is_run:
        names = (*FINAL_PIPELINE_ENTRIES, *MODEL_CARD_FILES, "metadata.json", "objects")
        found = [f"a {name}" if name == "README.md" else name for name in names if (path / name).exists()]
        if found:
            raise ValueError(
                f"`--output_dir` {output_dir!r} holds {', '.join(found)} but is not a training run's folder: the final "
                "pipeline (model_index.json, unet/, vae/, scheduler/) and its model card (README.md) are written at the "
                "root of --output_dir and would overwrite them. Pick a new folder (e.g. shadow-sdxl-model)."
            )
    link = path / LATEST_LINK
    if link.exists() and not link.is_symlink():
        raise ValueError(
            f"`--output_dir` {output_dir!r} holds a `{LATEST_LINK}` that is not a symlink: the run points `{LATEST_LINK}` "
            "at each new checkpoint. Move it away (or pick another --output_dir)."
        )
    logging_dir = args.logging_dir if args is not None else "logs"
    for name in (BEST_DIR, "validation", logging_dir):
        if (path / name).exists() and not (path / name).is_dir():
            raise ValueError(
                f"`--output_dir` {output_dir!r}: {path / name} is a file, where the run writes a folder. Move it away."
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ValueError(f"`--output_dir` {output_dir!r} is not writable: {error}") from error


# --------------------------------------------------------------------------------------------------------------------
# 2. Checkpoint folders: checkpoint-N, the `latest` link, rotation, resume
# --------------------------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint-N folders, oldest first (complete = renamed into place after all processes saved)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found) if p.is_dir()]


def update_latest_link(output_dir: str | Path, checkpoint_name: str) -> Path | None:
    """Points `latest` at `checkpoint_name` (relative, so the folder can move). A new link is made under a temporary
    name and renamed over the old one: rename is atomic, so a crash never leaves `latest` missing or broken."""
    output_dir = Path(output_dir)
    link = output_dir / LATEST_LINK
    if link.exists() and not link.is_symlink():
        raise ValueError(f"{link} exists and is not a symlink; move it away so the script can manage `latest`.")
    temporary = output_dir / f".{LATEST_LINK}.tmp-{os.getpid()}"
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    try:
        os.symlink(checkpoint_name, temporary)
    except OSError as error:  # e.g. Windows without developer mode: `--resume_from latest` still finds the newest
        logger.warning("Cannot create the `latest` symlink (%s); resume with the checkpoint folder itself.", error)
        return None
    os.replace(temporary, link)
    return link


def rotate_checkpoints(output_dir: str | Path, total_limit: int | None) -> list[Path]:
    """Removes the oldest checkpoint-N folders beyond `total_limit`, never the one `latest` points to."""
    if not total_limit:
        return []
    checkpoints = list_checkpoints(output_dir)
    link = Path(output_dir) / LATEST_LINK
    protected = link.resolve() if link.is_symlink() else None
    removable = [p for p in checkpoints if p.resolve() != protected]
    excess = len(checkpoints) - total_limit
    removed = removable[: max(0, excess)]
    for path in removed:
        # Renamed out of the checkpoint-N namespace first (atomic), so a kill during the slow delete never leaves a
        # half-deleted folder that looks loadable; the next run's start-up removes the leftover.
        doomed = path.with_name(f".{path.name}.deleting")
        os.replace(path, doomed)
        shutil.rmtree(doomed)
    return removed


def publish_checkpoint(output_dir: Path, temporary: Path, name: str, total_limit: int | None) -> list[Path]:
    """A complete checkpoint built in `temporary` renamed into place as `name` (over an older one of that name), then
    `latest` moved onto it and old checkpoints rotated -> the removed ones. Shared by train_vae.py."""
    final_path = output_dir / name
    if final_path.exists():
        shutil.rmtree(final_path)
    os.replace(temporary, final_path)
    update_latest_link(output_dir, name)
    return rotate_checkpoints(output_dir, total_limit)


def clean_leftovers(output_dir: str | Path) -> list[str]:
    """Removes what a killed run left in --output_dir (main process, at start-up): partial `.checkpoint-N.tmp` and
    `.checkpoint-N.deleting` folders, `.latest.tmp-<pid>` links, partial `.best.tmp` / `.final-pipeline.tmp` (and older `.final.tmp`) pipelines; a
    `.best.old` whose swap was interrupted (no best/) is put back. -> what was done, for the log."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    done = []
    for path in sorted(output_dir.iterdir()):
        name = path.name
        if re.match(r"^\.checkpoint-\d+\.(tmp|deleting)$", name) or re.match(
            r"^\.(best|final|final-pipeline)\.tmp$", name
        ):
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {name}")
        elif name.startswith(f".{LATEST_LINK}.tmp-") and (path.is_symlink() or path.is_file()):
            path.unlink()
            done.append(f"removed {name}")
        elif (match := re.match(r"^\.(best|final)\.old$", name)) and path.is_dir():
            target = output_dir / match.group(1)
            if target.exists():
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {name}")
            else:
                os.replace(path, target)
                done.append(f"restored {target.name}/ from {name} (its replacement was interrupted)")
    return done


def resolve_resume_checkpoint(args: argparse.Namespace, check=None) -> Path | None:
    """--resume_from_checkpoint -> a checkpoint folder (symlinks resolved), or None to start fresh.

    "latest" means the `latest` link in --output_dir, else the newest checkpoint-N there, else a fresh start (as in
    diffusers). An explicit path must exist, as given or relative to --output_dir. With `check` (a checkpoint ->
    list of problems, see `checkpoint_problems`): "latest" falls back, with a warning, to the newest intact checkpoint
    when the newest is broken, and raises when none is intact; an explicit path that is broken raises.
    """
    value = args.resume_from_checkpoint
    if not value:
        return None
    output_dir = Path(args.output_dir)
    if value == LATEST_LINK:
        link = output_dir / LATEST_LINK
        candidates = [p.resolve() for p in reversed(list_checkpoints(output_dir))]
        if link.is_symlink() and link.resolve().is_dir():
            candidates = [link.resolve(), *[p for p in candidates if p != link.resolve()]]
        elif check is None:
            candidates = [p for p in candidates if (p / TRAINING_STATE_FILE).is_file()]
        if check is None:
            return candidates[0] if candidates else None
        broken = []
        for candidate in candidates:
            problems = check(candidate)
            if not problems:
                for path, reasons in broken:  # before the Accelerator exists: the plain logger (stderr)
                    logging.getLogger(__name__).warning(
                        "%s is broken (%s): resuming from %s instead, the newest intact checkpoint.",
                        path,
                        "; ".join(reasons),
                        candidate.name,
                    )
                return candidate
            broken.append((candidate, problems))
        if broken:
            listed = "\n".join(f"  {path}: {'; '.join(reasons)}" for path, reasons in broken)
            raise ValueError(
                f"`--resume_from_checkpoint latest`: no intact checkpoint in {output_dir}:\n{listed}\nRemove them "
                "to start afresh, or pass an intact checkpoint."
            )
        return None
    path = Path(value).expanduser()
    if not path.exists() and (output_dir / value).exists():
        path = output_dir / value
    if not path.is_dir():
        raise ValueError(
            f"`--resume_from_checkpoint` {value!r} does not exist (tried it as given and inside --output_dir "
            f"{str(output_dir)!r}). Use `latest` to start fresh when there is no checkpoint yet."
        )
    path = path.resolve()
    if check is None and not (path / TRAINING_STATE_FILE).is_file():
        raise ValueError(
            f"`--resume_from_checkpoint` {value!r} is not a checkpoint of this script (no {TRAINING_STATE_FILE})."
        )
    problems = check(path) if check is not None else []
    if problems:
        raise ValueError(
            f"`--resume_from_checkpoint` {value!r} ({path}) cannot be resumed: {'; '.join(problems)}. Pass another "
            "checkpoint, or `latest` to take the newest intact one."
        )
    return path


# ----- what makes a checkpoint resumable: checked before anything is loaded --------------------------------------


def _safetensors_problem(path: Path, root: Path) -> str | None:
    """Why a .safetensors file cannot be complete (missing, empty, a header or data shorter than it declares), read
    from its header alone: no tensor is loaded."""
    where = _relative_to(path, root)
    if not path.is_file():
        return f"{where} is missing"
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            if size < 8 or 8 + header_length > size:
                return f"{where} is empty or truncated ({size} bytes)"
            header = json.loads(handle.read(header_length))
    except (OSError, ValueError) as error:
        return f"{where} is not a safetensors file ({type(error).__name__}: {error})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + header_length + max(ends, default=0)
    if size < expected:
        return f"{where} is truncated ({size:,} of {expected:,} bytes)"
    return None


def _json_problem(path: Path, root: Path) -> str | None:
    where = _relative_to(path, root)
    if not path.is_file():
        return f"{where} is missing"
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return f"{where} is not valid JSON ({error})"
    return None


def _torch_file_problem(path: Path, root: Path, load: bool) -> str | None:
    """A torch.save file: its zip directory is intact (a truncated file loses it) and, with `load`, it loads with
    weights_only=True, i.e. it holds tensors and plain containers only (no code can run while reading it)."""
    where = _relative_to(path, root)
    if not path.is_file():
        return f"{where} is missing"
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as error:
        return f"{where} is empty or truncated ({path.stat().st_size:,} bytes; {error})"
    if load:
        try:
            _load_plain(path, mmap=True)
        except Exception as error:  # torch raises UnpicklingError / RuntimeError for anything beyond plain data
            return f"{where} holds more than plain tensors and numbers, so it is not loaded ({type(error).__name__})"
    return None


def _load_plain(path: Path, mmap: bool = False):
    """torch.load(weights_only=True) with accelerate's allow-list of numpy array types (its RNG states hold them).
    `mmap=True` maps the tensors instead of reading them: a check of a large optimizer state reads only its pickle."""
    from accelerate.utils.other import load

    return load(str(path), map_location="cpu", weights_only=True, mmap=mmap)


def _relative_to(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _weights_problems(folder: Path, root: Path, use_lora: bool) -> list[str]:
    if use_lora:
        files = [folder / LORA_ADAPTER_WEIGHTS, folder / LORA_FULL_WEIGHTS]
        return [p for p in [_json_problem(folder / "adapter_config.json", root)] if p] + [
            p for f in files if (p := _safetensors_problem(f, root))
        ]
    problems = [p for p in [_json_problem(folder / "config.json", root)] if p]
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        if problem := _json_problem(index, root):
            return [*problems, problem]
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        return problems + [p for shard in shards if (p := _safetensors_problem(folder / shard, root))]
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.exists() and (folder / "diffusion_pytorch_model.bin").exists():
        return [*problems, f"{_relative_to(folder, root)}/ holds pickled weights (.bin), which are not loaded"]
    return problems + [p for p in [_safetensors_problem(weights, root)] if p]


def checkpoint_problems(path: str | Path, args: argparse.Namespace) -> list[str]:
    """Everything that would make resuming from `path` fail or run foreign code, each saying which file and what is
    wrong; [] for an intact checkpoint. Cheap: headers and directories, not the weights (docs/design.md §9)."""
    path = Path(path)
    problems = []
    state_file = path / TRAINING_STATE_FILE
    if problem := _json_problem(state_file, path):
        problems.append(problem)
    else:
        state = json.loads(state_file.read_text())
        step = state.get("global_step") if isinstance(state, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            problems.append(f"{TRAINING_STATE_FILE} has no integer `global_step` >= 0")
        elif (match := CHECKPOINT_PATTERN.match(path.name)) and int(match.group(1)) != step:
            problems.append(f"{TRAINING_STATE_FILE} records step {step}, the folder name says {match.group(1)}")
    expected, other = (LORA_SUBFOLDER, "unet") if args.use_lora else ("unet", LORA_SUBFOLDER)
    if (path / expected).is_dir():
        problems += _weights_problems(path / expected, path, args.use_lora)
    elif (path / other).is_dir():
        problems.append(
            f"it holds {other}/, not {expected}/: it was saved {'with' if other == LORA_SUBFOLDER else 'without'} "
            "--use_lora; resume with the same setting"
        )
    else:
        problems.append(f"{expected}/ (the model weights) is missing")
    if (path / DEEPSPEED_STATE_DIR).is_dir():
        if not args.allow_unsafe_checkpoint:
            problems.append(
                f"it holds DeepSpeed state ({DEEPSPEED_STATE_DIR}/), which DeepSpeed loads with pickle and which can "
                "run code: resume it only if you made it, with --allow_unsafe_checkpoint"
            )
    elif problem := _torch_file_problem(path / "optimizer.bin", path, load=True):
        problems.append(problem)
    rng_files = sorted(path.glob("random_states_*.pkl"))
    if not rng_files:
        problems.append("random_states_0.pkl is missing (the RNG state an exact resume needs)")
    problems += [p for f in rng_files if (p := _torch_file_problem(f, path, load=True))]
    scheduler = path / SCHEDULER_STATE_FILE
    if not scheduler.exists() and (path / LEGACY_SCHEDULER_STATE_FILE).exists():
        scheduler = path / LEGACY_SCHEDULER_STATE_FILE
    if problem := _torch_file_problem(scheduler, path, load=True):
        problems.append(problem)
    if (path / "scaler.pt").exists() and (problem := _torch_file_problem(path / "scaler.pt", path, load=True)):
        problems.append(problem)
    if getattr(args, "use_ema", False) and (path / EMA_DIR).is_dir():
        problems += [
            p
            for p in (
                _safetensors_problem(path / EMA_DIR / "diffusion_pytorch_model.safetensors", path),
                _json_problem(path / EMA_DIR / EMA_STATE_FILE, path),
            )
            if p
        ]
    return problems


@contextlib.contextmanager
def safe_state_view(checkpoint_dir: Path):
    """The folder accelerate's load_state may read: the checkpoint itself, or, when it holds custom_checkpoint_*.pkl
    files (which accelerate would unpickle with weights_only=False), a temporary folder of links to everything else.
    The lr schedule those files held is read by `load_scheduler_state` the safe way."""
    if not any(CUSTOM_STATE_PATTERN.match(p.name) for p in checkpoint_dir.iterdir()):
        yield checkpoint_dir
        return
    view = Path(tempfile.mkdtemp(prefix=f".resume-{checkpoint_dir.name}-"))
    try:
        for entry in checkpoint_dir.iterdir():
            if not CUSTOM_STATE_PATTERN.match(entry.name):
                os.symlink(entry.resolve(), view / entry.name)
        yield view
    finally:
        shutil.rmtree(view, ignore_errors=True)  # removes the links, never what they point to


def save_scheduler_state(lr_scheduler, checkpoint_dir: Path) -> None:
    torch.save(lr_scheduler.state_dict(), checkpoint_dir / SCHEDULER_STATE_FILE)


def load_scheduler_state(lr_scheduler, checkpoint_dir: Path) -> None:
    path = checkpoint_dir / SCHEDULER_STATE_FILE
    if not path.exists():
        path = checkpoint_dir / LEGACY_SCHEDULER_STATE_FILE
    lr_scheduler.load_state_dict(_load_plain(path))


def read_training_state(checkpoint_dir: str | Path) -> dict:
    return json.loads((Path(checkpoint_dir) / TRAINING_STATE_FILE).read_text())


# --------------------------------------------------------------------------------------------------------------------
# 3. Accelerator, logging, seed
# --------------------------------------------------------------------------------------------------------------------


def resolve_mixed_precision(requested: str | None) -> str | None:
    """bf16 where supported, else fp16 with a message (a bare --mixed_precision asks for bf16)."""
    if requested == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        print("This GPU does not support bf16: training with --mixed_precision fp16 instead.", file=sys.stderr)
        return "fp16"
    return requested


def resolve_seed(args: argparse.Namespace, resume_dir: Path | None) -> int:
    """The run's seed: given, else the resumed run's, else drawn on the main process and shared with all processes.
    It is recorded in training_config.json and every checkpoint, so any run can be repeated or resumed exactly."""
    if resume_dir is not None:
        recorded = read_training_state(resume_dir).get("seed")
        if args.seed is None:
            return int(recorded)
        if recorded is not None and int(recorded) != args.seed:
            print(
                f"Warning: --seed {args.seed} differs from the checkpoint's seed {recorded}: "
                "the resumed run will not repeat the original one.",
                file=sys.stderr,
            )
        return args.seed
    if args.seed is not None:
        return args.seed
    seed = [random.SystemRandom().randrange(2**31)]
    if PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).num_processes > 1:
        broadcast_object_list(seed)
    return int(seed[0])


def build_accelerator(args: argparse.Namespace) -> Accelerator:
    output_dir = Path(args.output_dir)
    project_config = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir))
    # A seedable sampler makes the shuffled order a function of (seed, epoch): identical after a resume.
    dataloader_config = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed)
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=project_config,
        dataloader_config=dataloader_config,
    )


@contextlib.contextmanager
def training_log(args: argparse.Namespace, accelerator: Accelerator):
    """Every log line of the main process also goes to output_dir/training.log; other processes log warnings only."""
    logging.basicConfig(format=LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S", level=logging.INFO)
    root = logging.getLogger()
    previous_level, handler = root.level, None
    if accelerator.is_main_process:
        handler = logging.FileHandler(Path(args.output_dir) / TRAINING_LOG_FILE, encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        root.addHandler(handler)
    else:  # the libraries' info lines (model conversion, data summary) once, not once per process
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(previous_level)
        if handler is not None:
            root.removeHandler(handler)
            handler.close()


def write_training_config(args: argparse.Namespace, accelerator: Accelerator) -> None:
    if accelerator.is_main_process:
        config = {
            **public_args(args),
            "num_processes": accelerator.num_processes,
            "resolved_precision": accelerator.mixed_precision,
        }
        path = Path(args.output_dir) / TRAINING_CONFIG_FILE
        path.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")


def micro_batch_seed(seed: int, step: int, micro_step: int, process_index: int) -> int:
    """The noise and t of each micro-batch are a pure function of (seed, step, micro-step, process): a resumed run
    draws exactly what the uninterrupted run would have, whatever else consumed the global RNG meanwhile."""
    return int(np.random.SeedSequence([seed, step, micro_step, process_index]).generate_state(1)[0])


def rounding_seed(seed: int, step: int) -> int:
    """The random bits of --memory_lean's stochastic rounding at optimizer step `step`: the same on every process."""
    return int(np.random.SeedSequence([seed, step, 2**32 - 2]).generate_state(1)[0])


def validation_seed(seed: int, sample_index: int) -> int:
    """Fixed noise and t for validation sample i, the same at every validation of the run."""
    return int(np.random.SeedSequence([seed, 2**32 - 1, sample_index]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------------------------------
# 4. Models
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Models:
    unet: ShadowUNet
    vae: AutoencoderKL
    scheduler: object  # FlowMatchEulerDiscreteScheduler, only saved with the pipeline


def is_shadow_pipeline(name_or_path: str, **kwargs) -> bool:
    """Whether the folder/Hub id holds a saved ShadowPipeline (continue training) rather than an SDXL base."""
    try:
        model_index = DiffusionPipeline.load_config(name_or_path, **kwargs)
    except (OSError, ValueError):
        return False
    class_name = model_index.get("_class_name")
    class_name = class_name[-1] if isinstance(class_name, (list, tuple)) else class_name
    return class_name == ShadowPipeline.__name__


def _load_errors(flag: str, name_or_path: str, what: str):
    """A model that fails to load is a ConfigurationError naming the flag (generate_shadows.named_load_errors)."""
    return named_load_errors(flag, name_or_path, what, ConfigurationError)


def build_models(args: argparse.Namespace, accelerator: Accelerator) -> Models:
    """ShadowPipeline.from_sdxl (or a saved shadow pipeline) -> trainable fp32 UNet + frozen VAE on the device."""
    hub_kwargs = {"revision": args.revision, "cache_dir": args.cache_dir}
    vae = None
    if args.pretrained_vae_model_name_or_path:
        with _load_errors("--pretrained_vae_model_name_or_path", args.pretrained_vae_model_name_or_path, "a VAE"):
            vae = AutoencoderKL.from_pretrained(args.pretrained_vae_model_name_or_path, cache_dir=args.cache_dir)
    if is_shadow_pipeline(args.pretrained_model_name_or_path, **hub_kwargs):
        logger.info("Continuing from the shadow pipeline %s", args.pretrained_model_name_or_path)
        components = {"vae": vae} if vae is not None else {}
        with _load_errors("--pretrained_model_name_or_path", args.pretrained_model_name_or_path, "a shadow pipeline"):
            pipe = ShadowPipeline.from_pretrained(
                args.pretrained_model_name_or_path, variant=args.variant, **hub_kwargs, **components
            )
    else:
        logger.info("Converting the SDXL base %s to a shadow pipeline", args.pretrained_model_name_or_path)
        with _load_errors("--pretrained_model_name_or_path", args.pretrained_model_name_or_path, "an SDXL base"):
            pipe = ShadowPipeline.from_sdxl(
                args.pretrained_model_name_or_path, vae=vae, variant=args.variant, **hub_kwargs
            )
    if args.mask_channels is not None:  # Hub models are checked here, local folders already in validate_args
        named = f"`--pretrained_model_name_or_path` {args.pretrained_model_name_or_path!r}"
        try:
            check_mask_channels(pipe.unet.mask_channels, args.mask_channels, named)
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        if pipe.unet.mask_channels != args.mask_channels:
            logger.info("The UNet takes its mask in %d channels from now on (--mask_channels).", args.mask_channels)
            pipe.unet = pipe.unet.with_mask_channels(args.mask_channels)
    unet, vae = pipe.unet, pipe.vae
    # Weights stay fp32 (mixed precision autocasts the compute): pure bf16 weights at lr 1e-5 lose most updates
    # (docs/design.md §6). --memory_lean keeps them in bf16 and makes up for it with stochastic rounding in the optimizer.
    _to(unet, accelerator.device, weight_dtype(args))
    if args.use_lora:
        add_lora(unet, args)
    unet.requires_grad_(False)
    for param in trainable_parameters(unet, args):
        param.requires_grad_(True)
    unet.train()
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()  # checked in validate_args: installed, CUDA present
    vae.requires_grad_(False)
    _to(vae, accelerator.device, TORCH_DTYPES[args.vae_precision])
    vae.eval()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    logger.info(
        "ShadowUNet: %s trainable parameters in %s; VAE frozen in %s.",
        f"{trainable:,}",
        "bf16 (--memory_lean)" if args.memory_lean else "fp32",
        args.vae_precision,
    )
    return Models(unet=unet, vae=vae, scheduler=pipe.scheduler)


def weight_dtype(args: argparse.Namespace) -> torch.dtype:
    """The UNet's weights (and so its gradients): fp32, or bf16 with --memory_lean."""
    return torch.bfloat16 if args.memory_lean else torch.float32


def _to(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    # Cast before moving: a bf16 UNet never sits on the GPU in fp32 (8 GB at full size).
    if model.dtype != dtype:  # diffusers warns on any dtype argument to .to(), even a no-op one
        model.to(dtype=dtype)
    model.to(device)


def trainable_parameters(unet: ShadowUNet, args: argparse.Namespace) -> list[torch.nn.Parameter]:
    """What the optimizer updates: the whole UNet (full fine-tuning), or with --use_lora the adapter plus conv_in and
    the light projection."""
    if not args.use_lora:
        return list(unet.parameters())
    fully_trained = tuple(f"unet.{name}." for name in LORA_FULLY_TRAINED_MODULES)
    return [p for name, p in unet.named_parameters() if ".lora_" in name or name.startswith(fully_trained)]


def tracked_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of everything being trained, in a fixed order: what the EMA averages."""
    return [(name, p) for name, p in unwrap_any(model).named_parameters() if p.requires_grad]


# --use_lora: peft adapters on every transformer block's attention and feed-forward layers; conv_in (new zero input
# channels) and the light projection (zero last layer) train fully beside them, since neither starts from an SDXL
# weight that a low-rank delta could adapt (docs/design.md §3). Names inside the stock UNet.
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
LORA_FULLY_TRAINED_MODULES = ("conv_in", "class_embedding")


def add_lora(unet: ShadowUNet, args: argparse.Namespace) -> None:
    """peft LoRA on the attention (to_q/k/v/out) and feed-forward layers of every transformer block, as diffusers'
    LoRA examples do. conv_in and the light projection are trained fully (see `trainable_parameters`): their new
    weights start at zero (docs/design.md §3), so there is no SDXL weight for a low-rank delta to adapt."""
    from peft import LoraConfig

    config = LoraConfig(
        r=args.lora_rank,
        lora_alpha=args.lora_alpha or args.lora_rank,
        init_lora_weights="gaussian",
        target_modules=list(LORA_TARGET_MODULES),
    )
    unet.unet.add_adapter(config)


@torch.no_grad()
def merged_lora_unet(model: ShadowUNet) -> ShadowUNet:
    """A plain ShadowUNet on the CPU with every LoRA delta added to its base weight. `model` itself is not touched
    (merging in place and back would round the base weights and break an exact resume)."""
    from peft.tuners.lora import LoraLayer

    lora_layers = {
        f"unet.{name}.weight": module for name, module in model.unet.named_modules() if isinstance(module, LoraLayer)
    }
    state = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        if key in lora_layers:  # one delta at a time on the device: no second copy of the adapted weights there
            value = value + lora_layers[key].get_delta_weight("default")
        state[key] = value.detach().to("cpu", copy=True)
    with torch.device("meta"):
        merged = ShadowUNet.from_config(model.config)
    merged.load_state_dict(state, strict=True, assign=True)
    return merged.eval()


def save_lora_state(
    unet: ShadowUNet,
    folder: str | os.PathLike,
    base_model: str | None = None,
    default_processing_resolution: int | None = None,
) -> Path:
    """Writes the LoRA that `unet.unet.add_adapter` added in peft's format (adapter_config.json and
    adapter_model.safetensors), the modules trained fully beside it (fully_trained_modules.safetensors) and
    shadow_lora.json (base model, training resolution): what rebuilds the trained UNet on top of its converted base."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inner = unet.unet
    config = copy.copy(inner.peft_config["default"])
    config.base_model_name_or_path = base_model
    config.save_pretrained(str(folder))
    adapter = get_peft_model_state_dict(inner)
    save_file({k: v.detach().cpu().contiguous() for k, v in adapter.items()}, str(folder / LORA_ADAPTER_WEIGHTS))
    full = {
        k: v.detach().cpu().contiguous()
        for k, v in inner.state_dict().items()
        if k.split(".")[0] in LORA_FULLY_TRAINED_MODULES
    }
    save_file(full, str(folder / LORA_FULL_WEIGHTS))
    info = {
        "base_model": base_model,
        "default_processing_resolution": default_processing_resolution,
        "lora_target_modules": list(LORA_TARGET_MODULES),
        "fully_trained_modules": list(LORA_FULLY_TRAINED_MODULES),
    }
    (folder / LORA_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return folder


def create_ema(model: torch.nn.Module, args: argparse.Namespace) -> EMAModel | None:
    """diffusers' EMAModel over the trained parameters (all of them, or the LoRA ones), in fp32. With --offload_ema
    it lives in CPU memory and visits the GPU for each update."""
    if not args.use_ema:
        return None
    params = [p for _, p in tracked_parameters(model)]
    ema = EMAModel(params, decay=args.ema_decay, foreach=args.foreach_ema)
    ema.to(device="cpu" if args.offload_ema else None, dtype=torch.float32)
    return ema


@torch.no_grad()
def update_ema(ema: EMAModel | None, model: torch.nn.Module, args: argparse.Namespace, device) -> None:
    if ema is None:
        return
    if args.offload_ema:
        ema.to(device=device)
    ema.step([p for _, p in tracked_parameters(model)])
    if args.offload_ema:
        ema.to(device="cpu")


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, model: torch.nn.Module):
    """Swaps the EMA weights into `model` for validation or saving, and the trained ones back afterwards, bit for bit
    (EMAModel.store keeps a CPU copy)."""
    if ema is None:
        yield
        return
    params = [p for _, p in tracked_parameters(model)]
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def save_ema(ema: EMAModel, model: torch.nn.Module, folder: Path) -> None:
    """checkpoint-N/unet_ema/: the EMA weights keyed by parameter name and its counters. For full fine-tuning the
    names are the ShadowUNet's, so with config.json the folder also loads as `ShadowUNet.from_pretrained`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    names = [name for name, _ in tracked_parameters(model)]
    weights = {name: shadow.detach().to("cpu").contiguous() for name, shadow in zip(names, ema.shadow_params)}
    save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))
    counters = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
    (folder / EMA_STATE_FILE).write_text(json.dumps(counters, indent=2) + "\n")
    unwrapped = unwrap_any(model)
    if len(names) == len(list(unwrapped.parameters())):
        unwrapped.save_config(str(folder))


def load_ema(ema: EMAModel, model: torch.nn.Module, folder: Path, args: argparse.Namespace) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    named = tracked_parameters(model)
    missing = [name for name, _ in named if name not in weights]
    if missing or len(weights) != len(named):
        raise ValueError(
            f"{folder} does not hold the EMA of this run's trained parameters (missing e.g. {missing[:2]}): was the "
            "checkpoint made with other --use_lora settings?"
        )
    counters = json.loads((folder / EMA_STATE_FILE).read_text())
    device = "cpu" if args.offload_ema else named[0][1].device
    ema.load_state_dict({**counters, "shadow_params": [weights[name].to(device) for name, _ in named]})


def unwrap_any(model: torch.nn.Module) -> torch.nn.Module:
    """The ShadowUNet inside DDP / DeepSpeed / torch.compile wrappers, without needing the Accelerator."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)
    return model._orig_mod if is_compiled_module(model) else model


def unwrap(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    model = accelerator.unwrap_model(model)
    return model._orig_mod if is_compiled_module(model) else model


def register_checkpoint_hooks(
    accelerator: Accelerator,
    args: argparse.Namespace,
    unet: torch.nn.Module,
    ema: EMAModel | None = None,
    lr_scheduler=None,
) -> None:
    """accelerate's save_state/load_state write the UNet in diffusers format (checkpoint-N/unet/), as the diffusers
    examples do, so a checkpoint's UNet also loads with ShadowUNet.from_pretrained(checkpoint, subfolder="unet").
    With --use_lora: the adapter in unet_lora/ instead. With --use_ema: unet_ema/ too.

    Every process calls these (save_state must run on every rank: DeepSpeed writes each rank's optimizer shard); only
    the main process writes. Under DeepSpeed `models` is empty on load, as DeepSpeed restores the module itself."""

    def save_model_hook(models, weights, output_dir):
        for model in models:
            if accelerator.is_main_process:
                save_unet_state(unwrap(accelerator, model), Path(output_dir), args)
            if weights:
                weights.pop()  # saved above; accelerate must not save it again
        if ema is not None and accelerator.is_main_process:
            save_ema(ema, unet, Path(output_dir) / EMA_DIR)
        if lr_scheduler is not None and accelerator.is_main_process:
            save_scheduler_state(lr_scheduler, Path(output_dir))

    def load_model_hook(models, input_dir):
        while models:
            load_unet_state(unwrap(accelerator, models.pop()), Path(input_dir), args)
        if ema is not None:
            if (Path(input_dir) / EMA_DIR).is_dir():
                load_ema(ema, unet, Path(input_dir) / EMA_DIR, args)
            else:
                logger.warning("%s has no %s/: the EMA restarts from the resumed weights.", input_dir, EMA_DIR)
                ema.load_state_dict(
                    {"optimization_step": 0, "shadow_params": [p.detach().clone() for _, p in tracked_parameters(unet)]}
                )

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def save_unet_state(model: ShadowUNet, checkpoint_dir: Path, args: argparse.Namespace) -> None:
    if args.use_lora:
        save_lora_state(model, checkpoint_dir / LORA_SUBFOLDER, base_model=args.pretrained_model_name_or_path)
    else:
        model.save_pretrained(checkpoint_dir / "unet")


def load_unet_state(model: ShadowUNet, checkpoint_dir: Path, args: argparse.Namespace) -> None:
    problems = _weights_problems(
        checkpoint_dir / (LORA_SUBFOLDER if args.use_lora else "unet"), checkpoint_dir, args.use_lora
    )
    if problems:  # normally caught by checkpoint_problems before anything loads
        raise ValueError(f"{checkpoint_dir} cannot be resumed: {'; '.join(problems)}.")
    if args.use_lora:
        load_lora_state(model, checkpoint_dir / LORA_SUBFOLDER)
        return
    loaded = ShadowUNet.from_pretrained(checkpoint_dir, subfolder="unet", use_safetensors=True)  # never a pickle
    ours, theirs = (json.loads(json.dumps(m.config.get("unet_config") or {}, default=str)) for m in (model, loaded))
    differing = sorted(k for k in ours.keys() & theirs.keys() if not k.startswith("_") and ours[k] != theirs[k])
    if "in_channels" in differing:  # the one shape a flag of this script changes
        raise mask_channels_mismatch(str(checkpoint_dir / "unet"), loaded.mask_channels, model.mask_channels)
    if differing:  # else load_state_dict lists every mismatched tensor (hundreds of lines)
        shown = "; ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differing[:3])
        raise ValueError(
            f"{checkpoint_dir / 'unet'} holds a UNet of another shape than --pretrained_model_name_or_path "
            f"({shown}): resume with the model the checkpoint was trained from."
        )
    model.load_state_dict(loaded.state_dict())
    del loaded


# --------------------------------------------------------------------------------------------------------------------
# 5. Data
# --------------------------------------------------------------------------------------------------------------------


def data_source(args: argparse.Namespace) -> dataset_loading.ShadowDataSource:
    """The flags that name the training data (`--cache_dir` is the Hub download cache, as for the models)."""
    return dataset_loading.ShadowDataSource(
        dataset_type=args.dataset_type,
        data_dir=args.train_data_dir,
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        cache_dir=args.cache_dir,
        **{option: getattr(args, option) for option in HF_COLUMN_FLAGS},
    )


def build_data(
    args: argparse.Namespace, accelerator: Accelerator, vae: AutoencoderKL, dataset, mask_channels: int = MASK_CHANNELS
):
    """(train_loader, val_loader) over the `dataset` that `validate_args` opened (no second scan); val_loader is None
    without a validation split. With --cache_latents both yield cached latents (built once; only the local main
    process encodes), the mask in the UNet's `mask_channels`."""
    kwargs = {
        "batch_size": args.train_batch_size,
        "num_workers": args.dataloader_num_workers,
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "split_seed": args.split_seed,
        "random_flip": args.random_flip,
        "for_training": True,
        "skip_bad_samples": args.skip_bad_samples,
    }
    if args.cache_latents:
        kwargs.update(
            cache_latents=True,
            vae=vae,
            latent_cache_dir=args.latent_cache_dir,
            accelerator=accelerator,
            mask_channels=mask_channels,
        )
    train_loader, val_loader = dataset_loading.create_dataloaders(dataset, **kwargs)
    if len(train_loader) == 0:
        raise ValueError("The training split is empty: add samples or lower `--val_fraction`.")
    if val_loader is None:
        logger.warning("No validation split (--val_fraction 0): no validation loss, no best/ pipeline.")
    return train_loader, val_loader


def batch_light(batch: dict, device: torch.device) -> torch.Tensor:
    """[B,3] raw (theta deg, phi deg, size), the UNet's light input, as the data loader built it."""
    return batch["light"].to(device, torch.float32)


@torch.no_grad()
def batch_latents(
    vae: AutoencoderKL, batch: dict, device: torch.device, mask_channels: int = MASK_CHANNELS
) -> tuple[torch.Tensor, ...]:
    """(object_latents [B,4,h,w], mask_latent [B,mask_channels,h,w], shadow_latents [B,4,h,w]) in fp32: taken from a
    cached-latent batch (built for the same mask channels), else encoded by the frozen VAE (posterior means,
    deterministic; docs/design.md §8)."""
    if "object_latents" in batch:
        return tuple(batch[k].to(device, torch.float32) for k in ("object_latents", "mask_latent", "shadow_latents"))
    object_image = batch["object_image"].to(device)  # [B,3,H,W] in [-1,1], white outside the mask
    shadow_input = shadow_to_vae_input(batch["shadow_map"].to(device))  # [B,3,H,W] in [-1,1]
    latents = encode_latents(vae, torch.cat([object_image, shadow_input])).float()  # one VAE call, [2B,4,h,w]
    object_latents, shadow_latents = latents.chunk(2)
    mask = batch["mask"].to(device, torch.float32)
    return object_latents, mask_to_latent(mask, tuple(latents.shape[-2:]), mask_channels), shadow_latents


# --------------------------------------------------------------------------------------------------------------------
# 6. The rectified-flow loss and the optimizer step (reusable by benchmarks)
# --------------------------------------------------------------------------------------------------------------------


def rectified_flow_velocity(
    unet: torch.nn.Module,
    object_latents: torch.Tensor,
    mask_latent: torch.Tensor,
    shadow_latents: torch.Tensor,
    light: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted velocity, x_t), both [B,4,h,w], at x_t = t * noise + (1 - t) * x0 (docs/design.md §3)."""
    x_t = rf_interpolate(shadow_latents, noise, t)  # [B,4,h,w]
    model_input = torch.cat([x_t, mask_latent, object_latents], dim=1)  # [B,8+mask channels,h,w]
    return unet(model_input, rf_model_timestep(t), light).sample, x_t


def rectified_flow_loss(
    unet: torch.nn.Module,
    object_latents: torch.Tensor,
    mask_latent: torch.Tensor,
    shadow_latents: torch.Tensor,
    light: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Per-sample MSE(v_pred, noise - x0) in fp32 [B], at x_t = t * noise + (1 - t) * x0 (docs/design.md §3)."""
    velocity, _ = rectified_flow_velocity(unet, object_latents, mask_latent, shadow_latents, light, t, noise)
    return velocity_mse(velocity, shadow_latents, noise)


def velocity_mse(velocity: torch.Tensor, shadow_latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE(v_pred, noise - x0) in fp32 [B]."""
    target = rf_velocity(shadow_latents, noise)
    return F.mse_loss(velocity.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))


def decoded_shadow_iou_loss(
    vae: AutoencoderKL, predicted_x0: torch.Tensor, shadow_latents: torch.Tensor
) -> torch.Tensor:
    """Per-sample 1 - soft IoU [B] between the shadow maps the frozen decoder draws from the estimated and from the
    true latents. The target is the decoder's picture of the true latent (cached latents keep no pixels), so the term
    asks for what the decoder can draw; gradients reach the UNet through the decoder's activations only."""
    with torch.no_grad():
        target = decode_shadow(vae, shadow_latents)
    return soft_iou_distance(decode_shadow(vae, predicted_x0), target)


def sample_noise_and_t(args, shape, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    t = sample_timesteps(
        shape[0],
        args.timestep_sampling,
        logit_mean=args.logit_mean,
        logit_std=args.logit_std,
        shift=args.timestep_shift,
        generator=generator,
        device=device,
    )
    noise = torch.randn(shape, generator=generator, device=device)
    return noise, t


def training_loss(args, unet, vae, batch: dict, generator: torch.Generator, device) -> torch.Tensor:
    """The loss of one micro-batch (scalar, fp32): latents (cached or encoded), noise and t from `generator`, the
    velocity MSE (+ --shadow_iou_weight x the decoded maps' soft-IoU distance). With `accelerator.backward` and
    `optimizer_step` this is the whole training step, e.g. to time it."""
    object_latents, mask_latent, shadow_latents = batch_latents(vae, batch, device, unwrap_any(unet).mask_channels)
    noise, t = sample_noise_and_t(args, shadow_latents.shape, generator, device)
    light = batch_light(batch, device)
    velocity, x_t = rectified_flow_velocity(unet, object_latents, mask_latent, shadow_latents, light, t, noise)
    loss = velocity_mse(velocity, shadow_latents, noise).mean()
    if args.shadow_iou_weight:
        decoded = slice(0, args.shadow_iou_samples)  # None: the whole micro-batch
        predicted_x0 = rf_predict_x0(x_t[decoded], velocity[decoded].float(), t[decoded])
        iou = decoded_shadow_iou_loss(vae, predicted_x0, shadow_latents[decoded])
        loss = loss + args.shadow_iou_weight * iou.mean()
    return loss


def optimizer_class(args: argparse.Namespace):
    """AdamW (paper), or bitsandbytes' AdamW8bit with --use_8bit_adam (its moments in 8 bits: 2 bytes per parameter
    instead of 8; checked in validate_args: installed, CUDA present), or torchao's AdamW8bit with --memory_lean
    (8-bit moments as well, and the bf16 weights updated with stochastic rounding, see `optimizer_kwargs`)."""
    if args.memory_lean:
        from torchao.optim import AdamW8bit

        return AdamW8bit
    if args.use_8bit_adam:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit
    return torch.optim.AdamW


def build_optimizer(args: argparse.Namespace, unet: ShadowUNet, accelerator: Accelerator):
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    params = [p for p in trainable_parameters(unet, args) if p.requires_grad]
    optimizer_cls = optimizer_class(args)
    optimizer = optimizer_cls(
        params,
        lr=learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
        **optimizer_kwargs(args, optimizer_cls, accelerator.device),
    )
    # Stepped by hand once per applied update (not through accelerate, which would step it once per process).
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps,
        num_training_steps=args.max_train_steps,
        num_cycles=args.lr_num_cycles,
        power=args.lr_power,
    )
    return optimizer, lr_scheduler


def optimizer_kwargs(args: argparse.Namespace, optimizer_cls, device: torch.device) -> dict:
    """torch's fused AdamW kernel on CUDA. With --memory_lean, torchao's stochastic rounding: each updated weight is
    computed in fp32 and rounded to one of its two bf16 neighbours with the probabilities that make the rounding
    unbiased, so an update of 1e-5 on a weight whose bf16 spacing is 2e-4 lands 5 % of the time instead of never."""
    if args.memory_lean:
        return {"bf16_stochastic_round": True}
    return {"fused": True} if device.type == "cuda" and optimizer_cls is torch.optim.AdamW else {}


@contextlib.contextmanager
def lean_update(args: argparse.Namespace, device: torch.device, seed: int):
    """Around --memory_lean's optimizer step. The random bits of the stochastic rounding come from the global RNG,
    seeded here with `seed` (a function of the run's seed and the step) and restored afterwards: every process rounds
    its replica of the weights identically (DDP replicas must stay equal), and a resumed run rounds as the
    uninterrupted one did, whatever else drew from the global RNG meanwhile (e.g. a DataLoader starting an epoch).
    torchao torch.compiles its per-parameter update: the fast path on a GPU, but on the CPU inductor spends minutes
    compiling it (150 s for the tiny test model on 2 cores), so there the same update runs eagerly."""
    if not args.memory_lean:
        yield
        return
    eager = torch.compiler.set_stance("force_eager") if device.type != "cuda" else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), eager:
        torch.manual_seed(seed)
        yield


@dataclass
class StepOutcome:
    applied: bool
    loss: float  # mean over micro-batches and processes (nan if any was non-finite)
    grad_norm: float
    ids: list = field(default_factory=list)  # sample ids of this optimizer step, all processes
    reason: str = ""
    stepped_anyway: bool = False  # DeepSpeed steps inside backward: a non-finite step could not be skipped


def optimizer_step(
    accelerator, unet, optimizer, lr_scheduler, args, micro_losses, micro_ids, step_seed: int = 0
) -> StepOutcome:
    """Clips, checks that the loss and the gradients are finite on every process, then steps; otherwise skips the
    update entirely (weights, optimizer state and lr untouched). `step_seed` seeds --memory_lean's stochastic
    rounding (see `lean_update` and `rounding_seed`)."""
    params = [p for p in unet.parameters() if p.requires_grad]
    # Under DeepSpeed this only reads the norm: DeepSpeed clipped and stepped inside accelerator.backward already.
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    grad_norm = accelerator.clip_grad_norm_(params, args.max_grad_norm if args.max_grad_norm > 0 else float("inf"))
    grad_norm = torch.as_tensor(float("nan") if grad_norm is None else grad_norm, device=accelerator.device)
    grad_norm = grad_norm.float()
    losses = torch.stack(micro_losses).float()  # [accumulated micro-batches]
    loss_finite = bool(torch.isfinite(losses).all())
    # fp16: the GradScaler owns overflowing gradients (it skips the step and lowers the scale); only a non-finite
    # LOSS is our business there. DeepSpeed likewise owns its overflow checks. bf16/fp32: a non-finite gradient norm
    # is ours too.
    grads_finite = bool(torch.isfinite(grad_norm)) or accelerator.scaler is not None or deepspeed
    local = torch.tensor([losses.mean().item(), float(loss_finite and grads_finite)], device=accelerator.device)
    gathered = accelerator.gather(local[None])  # [P,2]
    applied = bool(gathered[:, 1].min() > 0)
    step_loss = float(gathered[:, 0].mean())
    if applied:
        with lean_update(args, accelerator.device, step_seed):
            optimizer.step()
        if not accelerator.optimizer_step_was_skipped:
            lr_scheduler.step()
        return StepOutcome(True, step_loss, float(grad_norm))
    # Every process takes this branch (the flag was gathered), so the collective below is safe.
    ids = gather_object([list(micro_ids)])
    if accelerator.scaler is not None:
        accelerator.scaler.update()  # clip_grad_norm_ unscaled the gradients; close the scaler's step
    reason = "loss" if not bool(gathered[:, 0].isfinite().all()) else "gradient norm"
    ids = [i for part in ids for i in part]
    return StepOutcome(False, step_loss, float(grad_norm), ids=ids, reason=reason, stepped_anyway=deepspeed)


# --------------------------------------------------------------------------------------------------------------------
# 7. Validation: loss over the whole validation split with fixed noise and t, and a prediction grid
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def validate(args, accelerator: Accelerator, unet, vae, val_loader, step: int) -> dict:
    """Main process only. Each validation sample i gets its own noise and t from a generator seeded with (seed, i),
    so the loss is comparable over the run. Also saves object | single-step prediction | ground truth rows as
    output_dir/validation/step-N.png and logs them to the trackers."""
    model = unwrap(accelerator, unet)
    was_training = model.training
    model.eval()
    device = accelerator.device
    per_sample, per_sample_one_step, rows, captions, index = [], [], [], [], 0
    try:
        for batch in val_loader:
            if not report_skipped_samples(batch, None, "validation"):
                continue  # every sample of the batch was skipped (--skip_bad_samples)
            object_latents, mask_latent, shadow_latents = batch_latents(vae, batch, device, model.mask_channels)
            light = batch_light(batch, device)
            noises, ts = [], []
            for offset in range(object_latents.shape[0]):
                generator = torch.Generator(device).manual_seed(validation_seed(args.seed, index + offset))
                noise, t = sample_noise_and_t(args, (1, *object_latents.shape[1:]), generator, device)
                noises.append(noise)
                ts.append(t)
            noise, t = torch.cat(noises), torch.cat(ts)
            with accelerator.autocast():
                losses = rectified_flow_loss(model, object_latents, mask_latent, shadow_latents, light, t, noise)
                one_step = (  # the same loss again unless training draws t = 1 only (--timestep_sampling single_step)
                    losses
                    if bool((t == 1).all())
                    else rectified_flow_loss(
                        model, object_latents, mask_latent, shadow_latents, light, torch.ones_like(t), noise
                    )
                )
            per_sample.append(losses.float().cpu())
            per_sample_one_step.append(one_step.float().cpu())
            wanted = args.num_validation_images - len(rows)
            if wanted > 0:
                rows.extend(
                    _prediction_rows(
                        accelerator, model, vae, batch, noise, (object_latents, mask_latent), light, wanted
                    )
                )
                captions.extend(_light_captions(batch, light)[:wanted])
            index += object_latents.shape[0]
    finally:
        model.train(was_training)
    if not per_sample:
        return {}
    result = {
        "val_loss": float(torch.cat(per_sample).mean()),  # at the training t distribution
        "val_loss_single_step": float(torch.cat(per_sample_one_step).mean()),  # at t = 1: what one-step inference runs
    }
    if rows:
        grid = np.concatenate(rows, axis=0)  # [rows*H, 3*W, 3] uint8
        grid_path = Path(args.output_dir) / "validation" / f"step-{step}.png"
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        # The rows' lights travel inside the PNG (a text chunk), for the model card of a later, possibly resumed, run.
        png_info = PIL.PngImagePlugin.PngInfo()
        png_info.add_text(GRID_INFO_KEY, json.dumps({"step": step, "columns": GRID_COLUMNS, "rows": captions}))
        PIL.Image.fromarray(grid).save(grid_path, pnginfo=png_info)
        _log_grid(accelerator, grid, step, rows, captions)
        result["grid"] = str(grid_path)
    return result


def _light_captions(batch: dict, light: torch.Tensor) -> list[str]:
    """One caption per sample: its id and light, e.g. "sample_3: theta 30°, phi 45°, size 4"."""
    ids = list(batch.get("id", [])) or [f"sample {i}" for i in range(light.shape[0])]
    return [
        f"{sample_id}: theta {theta:g}°, phi {phi:g}°, size {size:g}"
        for sample_id, (theta, phi, size) in zip(ids, light.cpu().tolist())
    ]


def _prediction_rows(accelerator, model, vae, batch, noise, conditioning, light, wanted: int) -> list[np.ndarray]:
    """Single-step predictions from the sample's fixed noise at t = 1 (the inference regime): x0 = x1 - v(x1, 1)."""
    object_latents, mask_latent = (c[:wanted] for c in conditioning)
    noise, light = noise[:wanted], light[:wanted]
    t = torch.ones(noise.shape[0], device=noise.device)
    with accelerator.autocast():
        velocity = model(torch.cat([noise, mask_latent, object_latents], dim=1), rf_model_timestep(t), light).sample
    predicted = decode_shadow(vae, rf_predict_x0(noise, velocity.float(), t))  # [b,1,H,W] in [0,1]
    if "object_image" in batch:
        objects = (batch["object_image"][:wanted].float() + 1.0) / 2.0  # [b,3,H,W] in [0,1]
        truth = batch["shadow_map"][:wanted].float()
    else:  # cached latents: show what the VAE reconstructs
        objects = _decode_rgb(vae, object_latents)
        truth = decode_shadow(vae, batch["shadow_latents"][:wanted].to(noise.device))
    tiles = [objects.cpu(), predicted.cpu().expand(-1, 3, -1, -1), truth.cpu().expand(-1, 3, -1, -1)]
    strip = torch.cat(tiles, dim=3).clamp(0, 1)  # [b,3,H,3W]
    return [(s.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for s in strip]


def _decode_rgb(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift).sample
    return ((decoded.float() + 1.0) / 2.0).clamp(0, 1)


def _log_grid(accelerator: Accelerator, grid: np.ndarray, step: int, rows=(), captions=()) -> None:
    """The grid, and each row as its own image captioned with its light (wandb), or the lights as text (tensorboard)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", grid, step, dataformats="HWC")
            if captions:
                lines = "\n".join(f"{i + 1}. {caption}" for i, caption in enumerate(captions))
                tracker.writer.add_text("validation_lights", f"rows: {GRID_COLUMNS}\n\n{lines}", step)
        elif tracker.name == "wandb":
            import wandb

            images = {
                "validation": [wandb.Image(grid, caption=f"rows: {GRID_COLUMNS}; " + "; ".join(captions))],
                "validation_rows": [
                    wandb.Image(row, caption=f"{caption} ({GRID_COLUMNS})") for row, caption in zip(rows, captions)
                ],
            }
            tracker.log(images, step=step)


# --------------------------------------------------------------------------------------------------------------------
# 8. Saving: checkpoints (all processes), pipelines (main process)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingState:
    """What a checkpoint records besides accelerate's state; written as checkpoint-N/training_state.json."""

    global_step: int = 0
    seed: int = 0
    resolution: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    nan_steps_total: int = 0
    consecutive_nan_steps: int = 0
    memory_lean: bool = False  # bf16 weights and 8-bit AdamW state: resumable only with --memory_lean
    split_seed: int = 0  # the validation split: a resumed run must keep it
    best_by: str = "training_t"  # the loss best_val_loss holds (checkpoints before --best_by: the training-t one)
    skipped_samples: int = 0  # samples --skip_bad_samples left out, over the whole run
    losses: list = field(default_factory=list)  # per optimizer step of this process's run (not saved)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "losses"}


def save_checkpoint(accelerator: Accelerator, args, state: TrainingState) -> Path:
    """accelerate save_state into a hidden temporary folder, then renamed to checkpoint-N: a checkpoint-N folder is
    always complete. Then `latest` is moved onto it and old checkpoints are rotated (main process only)."""
    output_dir = Path(args.output_dir)
    name = f"checkpoint-{state.global_step}"
    final_path, temporary = output_dir / name, output_dir / f".{name}.tmp"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    with _removed_on_failure(accelerator, temporary, name, output_dir):
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (temporary / TRAINING_STATE_FILE).write_text(json.dumps(state.to_json(), indent=2) + "\n")
    if accelerator.is_main_process:
        removed = publish_checkpoint(output_dir, temporary, name, args.checkpoints_total_limit)
        logger.info(
            "Saved checkpoint %s%s", final_path, f" (removed {', '.join(p.name for p in removed)})" if removed else ""
        )
    accelerator.wait_for_everyone()
    return final_path


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _estimated_bytes(accelerator: Accelerator, output_dir: Path) -> int:
    """About what one checkpoint takes: the last one's size, else the models' and optimizers' tensors."""
    if checkpoints := list_checkpoints(output_dir):
        return _tree_bytes(checkpoints[-1])
    tensors = [p for model in accelerator._models for p in model.parameters()]
    for optimizer in accelerator._optimizers:
        tensors += [v for slot in optimizer.state_dict()["state"].values() for v in slot.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _is_disk_full(error: BaseException, output_dir: Path, needed: int) -> bool:
    """ENOSPC, however it surfaces: an OSError, or torch.save's RuntimeError ("basic_ios::clear: iostream error",
    "PytorchStreamWriter failed writing file") once the free space is below what the save needed."""
    for cause in (error, error.__cause__, error.__context__):
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    try:
        return shutil.disk_usage(output_dir).free < needed
    except OSError:
        return False


@contextlib.contextmanager
def _removed_on_failure(accelerator: Accelerator, temporary: Path, what: str, output_dir: Path):
    """A failed save (a full disk above all) removes its partial folder, keeps every complete one and stops the run
    with a message naming the place and the space needed, in training.log too."""
    try:
        yield
    except Exception as error:  # OSError, torch's RuntimeError, safetensors' SafetensorError: the partial folder goes
        needed = _estimated_bytes(accelerator, output_dir) if accelerator.is_main_process else 0
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        kept = list_checkpoints(output_dir)
        keeping = f"the last good checkpoint, {kept[-1].name}, is kept" if kept else "no earlier checkpoint exists"
        if _is_disk_full(error, output_dir, needed):
            free = shutil.disk_usage(output_dir).free
            reason = f"no space left on {output_dir} ({free / 1e9:.2f} GB free), needed about {needed / 1e9:.2f} GB"
        else:
            reason = f"{type(error).__name__}: {error}"
        message = f"Could not save {what}: {reason}. Removed the partial {temporary.name}; {keeping}."
        logger.error(message)
        raise CheckpointSaveError(message) from error


def save_pipeline(accelerator: Accelerator, args, models: Models, unet, folder: str | None, ema=None) -> Path:
    """The full ShadowPipeline with the training resolution as its processing resolution (main process only), with
    the EMA weights when there is an EMA. With --use_lora: the merged pipeline, plus the adapter in unet_lora/.
    `folder` is a subfolder of --output_dir (best/), or None for the final pipeline at the root of --output_dir.
    Written beside the target and swapped in, so an interrupted save never destroys the previous copy."""
    output_dir = Path(args.output_dir)
    name = folder or "final-pipeline"
    temporary = output_dir / f".{name}.tmp"
    if temporary.exists():
        shutil.rmtree(temporary)
    model = unwrap(accelerator, unet)
    with (
        _removed_on_failure(accelerator, temporary, f"the {folder or 'final'} pipeline", output_dir),
        ema_weights(ema, model),
    ):
        pipe = ShadowPipeline(
            unet=merged_lora_unet(model) if args.use_lora else model,
            vae=models.vae,
            scheduler=models.scheduler,
            default_processing_resolution=args.resolution,
        )
        pipe.save_pretrained(temporary)
        if args.use_lora:
            save_lora_state(
                model,
                temporary / LORA_SUBFOLDER,
                base_model=args.pretrained_model_name_or_path,
                default_processing_resolution=args.resolution,
            )
    if folder is None:
        return install_pipeline_at_root(temporary, output_dir)
    target, old = output_dir / folder, output_dir / f".{folder}.old"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(temporary, target)
    if old.exists():
        shutil.rmtree(old)
    return target


def install_pipeline_at_root(saved: Path, output_dir: Path) -> Path:
    """Moves a saved pipeline's files from `saved` to the root of `output_dir`, beside checkpoint-N/ and best/ (the
    diffusers layout, so `from_pretrained(output_dir)` loads it). model_index.json goes first out and last in: an
    interrupted swap leaves no model_index.json, never one that describes half-replaced weights. Pipeline files of a
    previous final pipeline that this one lacks (e.g. unet_lora/, the old model card) are removed."""
    index = output_dir / FINAL_PIPELINE_ENTRIES[0]
    if index.exists():
        index.unlink()
    for name in (*FINAL_PIPELINE_ENTRIES[1:], *MODEL_CARD_FILES):
        source, target = saved / name, output_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        if source.exists():
            os.replace(source, target)
    os.replace(saved / FINAL_PIPELINE_ENTRIES[0], index)
    leftovers = sorted(p.name for p in saved.iterdir())
    if leftovers:
        raise RuntimeError(f"save_pretrained wrote files the final pipeline does not install: {leftovers}")
    saved.rmdir()
    return output_dir


# --------------------------------------------------------------------------------------------------------------------
# 9. The training loop
# --------------------------------------------------------------------------------------------------------------------


def run_validation(args, accelerator, models, unet, val_loader, state: TrainingState, ema=None) -> None:
    """Validation + `best/` (main process only, with the EMA weights when there is an EMA); once per optimizer step,
    never per micro-batch."""
    if val_loader is None or not accelerator.is_main_process:
        return
    with ema_weights(ema, unet):
        result = validate(args, accelerator, unet, models.vae, val_loader, state.global_step)
    if not result:
        return
    losses = {key: result[key] for key in BEST_METRICS.values()}
    accelerator.log(losses, step=state.global_step)
    score = losses[BEST_METRICS[args.best_by]]
    if not math.isfinite(score):  # never a "best" model: NaN compares false with every later loss
        logger.error(
            "step %d: validation loss is %s: best/ is NOT updated. Check the validation data (`python "
            "dataset_loading.py verify`) and the NaN guard's warnings.",
            state.global_step,
            score,
        )
        return
    improved = state.best_val_loss is None or score < state.best_val_loss
    logger.info(
        "step %d: validation loss %.6f (training t), %.6f (single step, t = 1)%s",
        state.global_step,
        losses["val_loss"],
        losses["val_loss_single_step"],
        f" (best so far by {args.best_by})" if improved else "",
    )
    if improved:
        state.best_val_loss, state.best_step = score, state.global_step
        path = save_pipeline(accelerator, args, models, unet, BEST_DIR, ema)
        best = {"step": state.global_step, **losses, "best_by": args.best_by}
        (path / "best.json").write_text(json.dumps(best) + "\n")


def train(
    args, accelerator, models, unet, optimizer, lr_scheduler, train_loader, val_loader, state, ema=None
) -> TrainingState:
    num_update_steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
    first_epoch = state.global_step // num_update_steps_per_epoch
    resume_batches = (state.global_step % num_update_steps_per_epoch) * args.gradient_accumulation_steps
    progress = tqdm(
        range(args.max_train_steps),
        initial=state.global_step,
        desc="Steps",
        disable=not accelerator.is_local_main_process,
    )
    inject_nan = set(args.debug_inject_nan_at_step)
    logged_losses: list[float] = []
    micro_losses, micro_ids = [], []
    micro_step = 0
    if state.global_step >= args.max_train_steps:
        logger.info("Already at step %d of %d: nothing to train.", state.global_step, args.max_train_steps)
        num_epochs = first_epoch  # skip the loop
    for epoch in range(first_epoch, num_epochs):
        train_loader.set_epoch(epoch)  # the data order: accelerate's seedable sampler
        dataset_loading.set_epoch(train_loader, epoch)  # the flips: a function of (seed, epoch, sample)
        loader = train_loader
        if epoch == first_epoch and resume_batches:
            loader = accelerator.skip_first_batches(train_loader, resume_batches)
        for batch in _batches(loader, args, accelerator, state):
            if not report_skipped_samples(batch, state, f"step {state.global_step + 1}"):
                continue  # every sample of this micro-batch was skipped (--skip_bad_samples)
            step = state.global_step + 1  # the optimizer step this micro-batch contributes to
            with accelerator.accumulate(unet):
                seed = micro_batch_seed(state.seed, step, micro_step, accelerator.process_index)
                generator = torch.Generator(accelerator.device).manual_seed(seed)
                loss = training_loss(args, unet, models.vae, batch, generator, accelerator.device)
                if step in inject_nan:
                    loss = loss * float("nan")
                micro_losses.append(loss.detach())
                micro_ids.extend(batch.get("id", []))
                accelerator.backward(loss)
                micro_step += 1
                outcome = None
                if accelerator.sync_gradients:
                    outcome = optimizer_step(
                        accelerator,
                        unet,
                        optimizer,
                        lr_scheduler,
                        args,
                        micro_losses,
                        micro_ids,
                        rounding_seed(state.seed, step),
                    )
                optimizer.zero_grad(set_to_none=True)
            if outcome is None:
                continue
            micro_losses, micro_ids, micro_step = [], [], 0
            state.global_step += 1
            progress.update(1)
            state.losses.append(outcome.loss if outcome.applied else float("nan"))
            lr = float(lr_scheduler.get_last_lr()[0])  # torchao's optimizers keep the lr as a tensor
            if outcome.applied:
                update_ema(ema, unet, args, accelerator.device)
                state.consecutive_nan_steps = 0
                logged_losses.append(outcome.loss)
                progress.set_postfix(loss=f"{outcome.loss:.4f}", lr=f"{lr:.2e}")
            else:
                _record_nan_step(args, state, outcome)
            if state.global_step % args.logging_steps == 0 and logged_losses:
                mean_loss = float(np.mean(logged_losses))
                logger.info("step %d: loss %.6f, lr %.3e", state.global_step, mean_loss, lr)
                accelerator.log({"train_loss": mean_loss, "lr": lr}, step=state.global_step)
                logged_losses = []
            if state.global_step % args.validation_steps == 0:
                run_validation(args, accelerator, models, unet, val_loader, state, ema)
            if state.global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args, state)
            if state.global_step >= args.max_train_steps:
                break
        if state.global_step >= args.max_train_steps:
            break
    progress.close()
    if state.global_step % args.validation_steps:  # the end of training gets a validation too
        run_validation(args, accelerator, models, unet, val_loader, state, ema)
    return state


def _last_checkpoint_note(output_dir: str) -> str:
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        return f"no checkpoint was saved yet in {output_dir} (--checkpointing_steps), so a rerun starts afresh."
    return f"the last checkpoint, {checkpoints[-1]}, is intact."


def report_skipped_samples(batch: dict, state: TrainingState | None, where: str) -> bool:
    """Counts and logs the samples --skip_bad_samples left out of `batch`; False when none is left in it."""
    skipped = batch.get(dataset_loading.SKIPPED_KEY, [])
    if state is not None:
        state.skipped_samples += len(skipped)
    for reason in skipped:
        logger.warning(
            "%s: skipped a sample that failed to load (--skip_bad_samples%s): %s",
            where,
            f", {state.skipped_samples} skipped so far" if state is not None else "",
            reason,
        )
    return bool(batch.get("id")) or not skipped


def _sample_error_message(error: Exception) -> str:
    """The SampleLoadError's own message: a DataLoader worker re-raises it with the worker's traceback around it."""
    text = str(error).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split("SampleLoadError: ", 1)[-1]
    return text


def _batches(loader, args, accelerator: Accelerator, state: TrainingState):
    """The loader's batches; a sample that fails to load (without --skip_bad_samples) saves a checkpoint of the last
    completed step and stops the run with the file named, so hours of training are not lost to one bad file."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except dataset_loading.SampleLoadError as error:
            reason = _sample_error_message(error)
            saved = None
            if state.global_step > 0:
                saved = save_checkpoint(accelerator, args, state)
            message = (
                f"Stopping at step {state.global_step}: a training sample failed to load. {reason} "
                + (f"Saved {saved}; " if saved else "No optimizer step was completed, so nothing was saved; ")
                + "fix or remove the file and resume with --resume_from_checkpoint latest, or pass "
                "--skip_bad_samples to leave such samples out (counted and logged)."
            )
            logger.error(message)
            raise BadSampleError(message) from None
        yield batch


def _record_nan_step(args, state: TrainingState, outcome: StepOutcome) -> None:
    state.nan_steps_total += 1
    state.consecutive_nan_steps += 1
    logger.warning(
        "step %d: non-finite %s (loss %s, grad norm %s): %s (%d in a row, %d in total). Sample ids: %s",
        state.global_step,
        outcome.reason,
        outcome.loss,
        outcome.grad_norm,
        "DeepSpeed stepped inside backward, so the update was NOT skipped"
        if outcome.stepped_anyway
        else "optimizer step skipped, weights unchanged",
        state.consecutive_nan_steps,
        state.nan_steps_total,
        outcome.ids,
    )
    if state.consecutive_nan_steps >= args.max_nan_steps:
        message = (
            f"Stopping: {state.consecutive_nan_steps} optimizer steps in a row had a non-finite loss or gradient "
            f"(--max_nan_steps {args.max_nan_steps}), the last at step {state.global_step}. The weights were not "
            f"updated by those steps; {_last_checkpoint_note(args.output_dir)} Try a lower "
            "--learning_rate, --mixed_precision bf16 instead of fp16, --vae_precision fp32, or check the logged "
            "sample ids for broken data."
        )
        logger.error(message)
        raise NonFiniteLossError(message)


# --------------------------------------------------------------------------------------------------------------------
# 10. main
# --------------------------------------------------------------------------------------------------------------------


def start_hub_repo(args: argparse.Namespace) -> str:
    """--push_to_hub: the repository is created (or checked) before any model loads; a failure is a configuration
    error of the run (exit status 2), not something to discover after hours of training."""
    try:
        return hub_card.create_hub_repo(args)
    except hub_card.HubRepositoryError as error:
        raise ConfigurationError(str(error)) from error


def main(argv: Sequence[str] | None = None) -> TrainingState:
    args = parse_args(argv)
    dataset, resume_dir = check_run(args)  # the data, and an intact checkpoint, checked before any model loads
    # --memory_lean: bf16 weights under bf16 autocast (norms and softmax stay fp32, as in the default recipe).
    args.mixed_precision = resolve_mixed_precision("bf16" if args.memory_lean else args.mixed_precision)
    args.seed = resolve_seed(args, resume_dir)
    accelerator = build_accelerator(args)
    with training_log(args, accelerator):
        try:
            return _run(args, accelerator, resume_dir, dataset)
        finally:
            accelerator.end_training()


def _run(args, accelerator: Accelerator, resume_dir: Path | None, dataset) -> TrainingState:
    logger.info(accelerator.state, main_process_only=False)
    repo_id = start_hub_repo(args) if args.push_to_hub and accelerator.is_main_process else None
    if accelerator.is_main_process and (cleaned := clean_leftovers(args.output_dir)):
        logger.info("Cleaned up after an interrupted run in %s: %s.", args.output_dir, "; ".join(cleaned))
    accelerate_set_seed(args.seed)  # model construction (the light projection's first layer) is reproducible too
    models = build_models(args, accelerator)
    train_loader, val_loader = build_data(args, accelerator, models.vae, dataset, models.unet.mask_channels)
    if args.max_train_steps is None:
        batches_per_process = math.ceil(len(train_loader) / accelerator.num_processes)
        per_epoch = math.ceil(batches_per_process / args.gradient_accumulation_steps)
        args.max_train_steps = args.num_train_epochs * per_epoch
    write_training_config(args, accelerator)
    optimizer, lr_scheduler = build_optimizer(args, models.unet, accelerator)
    ema = create_ema(models.unet, args)  # before prepare: an fp32 copy even where DeepSpeed casts the module
    unet, optimizer, train_loader = accelerator.prepare(models.unet, optimizer, train_loader)
    # The lr schedule is saved by the hooks (lr_scheduler.pt), not registered with accelerate, whose load_state would
    # unpickle it with weights_only=False (docs/design.md §9).
    register_checkpoint_hooks(accelerator, args, unet, ema, lr_scheduler)
    if accelerator.is_main_process:
        tracker_config = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in public_args(args).items()
        }
        accelerator.init_trackers(args.tracker_project_name, config=tracker_config)

    state = TrainingState(
        seed=args.seed,
        resolution=args.resolution,
        memory_lean=args.memory_lean,
        split_seed=args.split_seed,
        best_by=args.best_by,
    )
    if resume_dir is not None:
        logger.info("Resuming from %s", resume_dir)
        try:
            with safe_state_view(resume_dir) as view:
                # weights_only=True for every file accelerate reads (optimizer, RNG, scaler): no code runs on resume
                accelerator.load_state(str(view), load_kwargs={"weights_only": True})
            load_scheduler_state(lr_scheduler, resume_dir)
        except Exception as error:  # checked beforehand; what still fails (e.g. another optimizer) is named here
            raise ConfigurationError(f"Resuming from {resume_dir} failed: {type(error).__name__}: {error}") from error
        recorded = read_training_state(resume_dir)
        known = {k: v for k, v in recorded.items() if k in TrainingState.__dataclass_fields__ and k != "losses"}
        if known.get("best_val_loss") is not None and not math.isfinite(known["best_val_loss"]):
            logger.warning(
                "The checkpoint's best validation loss is %s: best/ is chosen afresh.", known["best_val_loss"]
            )
            known["best_val_loss"] = known["best_step"] = None
        state = TrainingState(**{**known, "seed": args.seed, "resolution": args.resolution})
        if state.best_by != args.best_by:
            logger.warning(
                "The checkpoint chose best/ by %s, this run by %s: best/ is chosen afresh from the next validation.",
                state.best_by,
                args.best_by,
            )
            state.best_val_loss, state.best_step, state.best_by = None, None, args.best_by
        newer = [p.name for p in list_checkpoints(args.output_dir) if _step_of(p) > state.global_step]
        if newer:
            logger.warning("Checkpoints newer than the resumed one will be overwritten: %s", ", ".join(newer))
    elif args.resume_from_checkpoint:
        logger.info("No checkpoint found in %s: starting a new run.", args.output_dir)

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info("  Batches per epoch (this process) = %d", len(train_loader))
    logger.info("  Batch per device = %d, total batch = %d", args.train_batch_size, total_batch)
    logger.info(
        "  Optimizer steps = %d (starting at %d), seed = %d", args.max_train_steps, state.global_step, args.seed
    )
    state = train(args, accelerator, models, unet, optimizer, lr_scheduler, train_loader, val_loader, state, ema)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        path = save_pipeline(accelerator, args, models, unet, None, ema)
        logger.info("Saved the final pipeline to %s (processing resolution %d)", path, args.resolution)
        save_model_card(args, path, state, num_processes=accelerator.num_processes)
        if args.push_to_hub:
            push_final_pipeline(args, path, state, accelerator.num_processes, repo_id)
    accelerator.wait_for_everyone()
    return state


def _step_of(checkpoint: Path) -> int:
    return int(CHECKPOINT_PATTERN.match(checkpoint.name).group(1))


if __name__ == "__main__":
    try:
        main()
    except ConfigurationError as error:
        print(f"train_shadow_sdxl.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    except (NonFiniteLossError, BadSampleError, CheckpointSaveError):
        sys.exit(1)  # already logged, with the reason, to the console and training.log
