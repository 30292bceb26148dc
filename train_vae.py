# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Train a small AutoencoderKL for the embedded demo model (full-size work uses SDXL's own VAE).

The shadow model's VAE encodes two kinds of images: object cut-outs on white and gray shadow maps (replicated to 3
channels), and decodes shadow maps. This script trains diffusers' AutoencoderKL on exactly those, with an L1 + MSE
reconstruction loss plus a small KL term, then sets `scaling_factor` to 1 / std of the latents (as Stable Diffusion
did) so the latents have unit variance for the diffusion model.

    python train_vae.py --data_dir renders/train --resolution 128 --output_dir small-vae --max_train_steps 3000

`--decoder_only` then fine-tunes only the decoder, on shadow maps alone (the only thing the shadow pipeline decodes),
with the encoder frozen: the latent space, the scaling factor, a shadow UNet trained on it and its latent cache all
stay valid (Stability AI's sd-vae-ft-mse fine-tuned SD's VAE decoder the same way).

    python train_vae.py --data_dir renders/train --pretrained_vae_model_name_or_path small-vae --decoder_only \
        --output_dir small-vae-ft --max_train_steps 3000 --learning_rate 3e-4

With `--prediction_model` (a trained shadow pipeline that uses this VAE's encoder) the decoder learns from what it
meets at inference instead: the model's one-step predicted latents for each training sample (its object, mask and
light, fresh noise every time), mapped to the TRUE shadow map. The decoder then also undoes the model's systematic
errors (a one-step prediction is close to a conditional mean, so it blurs); it is tied to that model, so train it
last.

`--encoder_only` is the other half: the decoder stays frozen and the ENCODER learns to give each shadow map the
latent that decoder draws it best from (a decoder drew the true maps at ~0.86 soft IoU from latents optimised map by
map, against ~0.72 from the encoder's own). Object images keep their latents: the loss pulls them towards the
starting encoder's (`--object_latent_weight`), so the scaling factor and the UNet's conditioning stay valid, and only
the UNet's TARGET latents move; fine-tune the shadow UNet on them afterwards (a new latent cache).

    python train_vae.py --data_dir renders/train --pretrained_vae_model_name_or_path small-vae --encoder_only \
        --output_dir small-vae-enc --max_train_steps 3000 --learning_rate 1e-4

Every `--checkpointing_steps` (500) the run writes `checkpoint-N/` in --output_dir (the VAE so far, loadable on its
own, and the optimizer, schedule and random states), in the same layout and as atomically as train_shadow_sdxl.py:
built under a hidden name, renamed into place, then the `latest` link moved onto it. Run the same command with
`--resume_from_checkpoint latest` and it continues exactly where it stopped: the same batches, flips, crops and noise
as a run that never stopped.
"""

from __future__ import annotations

import pipeline_shadow  # noqa: F401  (first: it imports diffusers without the eager torchao import, see there)

# isort: split

import argparse
import copy
import itertools
import json
import logging
import math
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from dataset_loading import create_dataloaders, set_epoch
from generate_shadows import load_pipeline, load_vae
from pipeline_shadow import (
    ObjectLatents,
    ShadowPipeline,
    encode_latents,
    mask_to_latent,
    shadow_to_vae_input,
    soft_iou_distance,
    unscale_latents,
    vae_output_to_shadow,
)
from random_sdxl import vae_config
from train_shadow_sdxl import (
    TRAINING_STATE_FILE,
    clean_leftovers,
    list_checkpoints,
    publish_checkpoint,
    resolve_resume_checkpoint,
)

logger = logging.getLogger("train_vae")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data_dir", "--data_dir", dest="data_dir", required=True)
    parser.add_argument("--resolution", "--image_size", dest="resolution", type=int, default=128)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--pretrained_vae_model_name_or_path", default=None, help="Start from a VAE (else random).")
    parser.add_argument("--max_train_steps", type=int, default=3000)
    parser.add_argument("--train_batch_size", "--batch_size", dest="batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--kl_weight", type=float, default=1e-6)
    parser.add_argument(
        "--shadow_iou_weight",
        type=float,
        default=0.0,
        help="Add this x (1 - soft IoU) of the shadow maps to the loss (0 = L1 + MSE only): weighs thin, faint "
        "shadows by their share of the shadow instead of the image.",
    )
    parser.add_argument(
        "--crop_size",
        type=int,
        default=None,
        help="Train on random square crops (the VAE is convolutional): ~4x faster at half the side.",
    )
    parser.add_argument(
        "--decoder_only",
        action="store_true",
        help="Fine-tune only the decoder on shadow maps; the encoder, the latents and the scaling factor stay as they "
        "are (needs --pretrained_vae_model_name_or_path).",
    )
    parser.add_argument(
        "--encoder_only",
        action="store_true",
        help="Fine-tune only the encoder, so that the frozen decoder redraws shadow maps from their latents; object "
        "latents stay where they were (--object_latent_weight), and so does the scaling factor (needs "
        "--pretrained_vae_model_name_or_path; a shadow UNet must then be fine-tuned on the new target latents).",
    )
    parser.add_argument(
        "--object_latent_weight",
        type=float,
        default=1.0,
        help="With --encoder_only: weight of the mean squared distance between the object images' scaled latents and "
        "the starting encoder's (keeps the UNet's conditioning valid).",
    )
    parser.add_argument(
        "--prediction_model",
        default=None,
        help="With --decoder_only: a trained shadow pipeline (folder) whose one-step predictions the decoder learns to "
        "map to the true shadow maps. It must use the same VAE encoder.",
    )
    parser.add_argument("--dataloader_num_workers", "--num_workers", dest="num_workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpointing_steps", type=int, default=500, help="Write checkpoint-N/ every N steps (0 = never)."
    )
    parser.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=None,
        help="Keep at most this many checkpoint-N folders (the oldest go; the one `latest` points to never does).",
    )
    parser.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help='A checkpoint-N folder, the `latest` link, or "latest" (the newest in --output_dir; starts fresh if none).',
    )
    args = parser.parse_args(argv)
    for name, value in vars(args).items():  # NaN passes every `<` / `>` check below: refused once, for every flag
        if isinstance(value, float) and not math.isfinite(value):
            parser.error(f"--{name} must be a finite number, got {value}.")
    if args.resolution < 8 or args.resolution % 8:
        parser.error(f"--resolution must be a positive multiple of 8 (the VAE's factor), got {args.resolution}.")
    if args.batch_size < 1:
        parser.error(f"--train_batch_size (--batch_size) must be >= 1, got {args.batch_size}.")
    if args.num_workers < 0:
        parser.error(f"--dataloader_num_workers (--num_workers) must be >= 0, got {args.num_workers}.")
    if args.learning_rate <= 0:
        parser.error(f"--learning_rate must be > 0, got {args.learning_rate:g}.")
    for name in ("kl_weight", "shadow_iou_weight", "object_latent_weight"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0 (0 = off), got {getattr(args, name):g}.")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"--output_dir {args.output_dir} exists and is not a folder.")
    if args.crop_size is not None and (args.crop_size % 8 or not 8 <= args.crop_size <= args.resolution):
        parser.error(f"--crop_size must be a multiple of 8 in [8, --resolution], got {args.crop_size}.")
    if args.max_train_steps < 1:
        parser.error(f"--max_train_steps must be >= 1, got {args.max_train_steps}.")
    if args.checkpointing_steps < 0:
        parser.error(f"--checkpointing_steps must be >= 0 (0 = never), got {args.checkpointing_steps}.")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        parser.error(f"--checkpoints_total_limit must be >= 1, got {args.checkpoints_total_limit}.")
    if args.decoder_only and not args.pretrained_vae_model_name_or_path:
        parser.error("--decoder_only fine-tunes an existing VAE's decoder: give --pretrained_vae_model_name_or_path.")
    if args.encoder_only and args.decoder_only:
        parser.error("--encoder_only and --decoder_only each freeze what the other trains: give one of them.")
    if args.encoder_only and not args.pretrained_vae_model_name_or_path:
        parser.error("--encoder_only fine-tunes an existing VAE's encoder: give --pretrained_vae_model_name_or_path.")
    if args.prediction_model and not args.decoder_only:
        parser.error("--prediction_model trains the decoder alone on the model's predictions: add --decoder_only.")
    return args


def soft_iou_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - soft IoU (evaluate_shadow.py's metric, see pipeline_shadow.soft_iou_distance) between shadow maps
    given as 3-channel [-1, 1] images [B,3,H,W]."""
    return soft_iou_distance(vae_output_to_shadow(reconstruction), vae_output_to_shadow(target)).mean()


def reconstruction_loss(reconstruction, images, shadow_from: int = 0, shadow_iou_weight: float = 0.0):
    """L1 + MSE over the batch, plus `shadow_iou_weight` x soft_iou_loss over its shadow maps (rows `shadow_from`..)."""
    loss = F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images)
    if shadow_iou_weight:
        loss = loss + shadow_iou_weight * soft_iou_loss(reconstruction[shadow_from:], images[shadow_from:])
    return loss


def vae_loss(
    vae: AutoencoderKL,
    images: torch.Tensor,
    kl_weight: float,
    generator=None,
    decoder_only=False,
    shadow_from: int = 0,
    shadow_iou_weight: float = 0.0,
):
    """-> (total, reconstruction) for a batch in [-1, 1] whose rows `shadow_from`.. are shadow maps. With
    `decoder_only` the frozen encoder runs without gradients and the KL term (which only the encoder can change) is
    left out."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and not decoder_only):
        posterior = vae.encode(images).latent_dist
    reconstruction = vae.decode(posterior.sample(generator=generator)).sample
    rec_loss = reconstruction_loss(reconstruction, images, shadow_from, shadow_iou_weight)
    if decoder_only:
        return rec_loss, rec_loss
    return rec_loss + kl_weight * posterior.kl().mean(), rec_loss


def encoder_loss(
    vae: AutoencoderKL,
    reference: AutoencoderKL,
    images: torch.Tensor,
    shadow_from: int,
    object_latent_weight: float = 1.0,
    shadow_iou_weight: float = 0.0,
):
    """-> (total, reconstruction) of an encoder-only step on a batch in [-1, 1] of objects, then shadow maps from row
    `shadow_from` on: the maps through the encoder's latent MEAN (what the UNet's targets are made of,
    pipeline_shadow.encode_latents) and the frozen decoder, plus `object_latent_weight` x the mean squared distance
    of the objects' scaled latents from the `reference` (starting) encoder's."""
    posterior = vae.encode(images).latent_dist.mean
    object_latents, shadow_latents = posterior[:shadow_from], posterior[shadow_from:]
    rec_loss = reconstruction_loss(vae.decode(shadow_latents).sample, images[shadow_from:], 0, shadow_iou_weight)
    with torch.no_grad():
        kept = reference.encode(images[:shadow_from]).latent_dist.mean
    drift = F.mse_loss(object_latents, kept) * vae.config.scaling_factor**2
    return rec_loss + object_latent_weight * drift, rec_loss


def random_crop(images: torch.Tensor, size: int | None, generator: torch.Generator) -> torch.Tensor:
    if size is None or size >= images.shape[-1]:
        return images
    top, left = (int(torch.randint(0, dim - size + 1, (1,), generator=generator)) for dim in images.shape[-2:])
    return images[..., top : top + size, left : left + size]


def aligned_random_crop(latents, images, size: int | None, generator: torch.Generator, factor: int = 8):
    """The same random crop of latents [B,C,h,w] and images [B,C,h*factor,w*factor]: `size` pixels at an offset that
    is a multiple of `factor`, so the latent crop covers exactly the image crop."""
    if size is None or size >= images.shape[-1]:
        return latents, images
    cells = size // factor
    top, left = (int(torch.randint(0, dim - cells + 1, (1,), generator=generator)) for dim in latents.shape[-2:])
    latents = latents[..., top : top + cells, left : left + cells]
    return latents, images[..., top * factor : (top + cells) * factor, left * factor : (left + cells) * factor]


@torch.no_grad()
def one_step_latents(pipe: ShadowPipeline, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """The shadow pipeline's one-step prediction for a data batch (its objects, masks and lights): the scaled latents
    its decoder receives at inference."""
    object_latents = encode_latents(pipe.vae, batch["object_image"])
    mask_latent = mask_to_latent(batch["mask"], tuple(object_latents.shape[-2:]), pipe.unet.mask_channels)
    prepared = ObjectLatents(object_latents, mask_latent, boxes=[], sizes=[], objects=[], masks=[])
    light = batch["light"].double()  # [B,3] (theta, phi, size)
    return pipe.predict_latents(prepared, light, num_inference_steps=1, generator=generator)


def prediction_loss(
    vae: AutoencoderKL, latents: torch.Tensor, shadow_images: torch.Tensor, shadow_iou_weight: float = 0.0
) -> torch.Tensor:
    """L1 + MSE (+ the soft-IoU term) between the decoded (scaled) latents and the true shadow maps as 3-channel
    [-1, 1] images."""
    reconstruction = vae.decode(unscale_latents(vae, latents)).sample
    return reconstruction_loss(reconstruction, shadow_images, 0, shadow_iou_weight)


def training_images(batch: dict, decoder_only: bool = False) -> torch.Tensor:
    """Objects on white and shadow maps as 3-channel gray, both in [-1, 1]: what the shadow model encodes. The
    decoder only ever decodes shadow maps, so a decoder-only fine-tune sees those alone."""
    shadows = shadow_to_vae_input(batch["shadow_map"])
    return shadows if decoder_only else torch.cat([batch["object_image"], shadows], dim=0)


def batch_loss(
    vae, batch: dict, args, generator, predictor: ShadowPipeline | None = None, crop_size=None, reference=None
):
    """(total, reconstruction) of one data batch in the mode the arguments ask for (`reference`: the starting VAE,
    for --encoder_only)."""
    if predictor is not None:
        latents = one_step_latents(predictor, batch, generator)
        latents, targets = aligned_random_crop(latents, shadow_to_vae_input(batch["shadow_map"]), crop_size, generator)
        loss = prediction_loss(vae, latents, targets, args.shadow_iou_weight)
        return loss, loss
    images = random_crop(training_images(batch, args.decoder_only), crop_size, generator)
    shadow_from = 0 if args.decoder_only else len(batch["shadow_map"])  # objects first, then shadow maps
    if args.encoder_only:
        return encoder_loss(vae, reference, images, shadow_from, args.object_latent_weight, args.shadow_iou_weight)
    return vae_loss(vae, images, args.kl_weight, generator, args.decoder_only, shadow_from, args.shadow_iou_weight)


def load_prediction_model(name_or_path: str, vae: AutoencoderKL) -> ShadowPipeline:
    """The shadow pipeline whose predictions the decoder learns from; it must share the VAE's encoder (its latents
    would mean something else otherwise)."""
    pipe = load_pipeline(name_or_path, torch.float32, str(vae.device), "--prediction_model")
    theirs, ours = pipe.vae.state_dict(), vae.state_dict()
    same = pipe.vae.config.scaling_factor == vae.config.scaling_factor and all(
        torch.equal(theirs[key], ours[key]) for key in ours if key.startswith(("encoder.", "quant_conv."))
    )
    if not same:
        raise ValueError(
            f"--prediction_model {name_or_path!r} encodes with another VAE encoder (or latent scale) than "
            "--pretrained_vae_model_name_or_path: give the VAE that model was trained with."
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def trainable_parameters(vae: AutoencoderKL, part: str = "all") -> list[torch.nn.Parameter]:
    """All parameters (`part` "all"), or only the decoder's and post_quant_conv's ("decoder") or the encoder's and
    quant_conv's ("encoder"), with the rest frozen."""
    if part == "all":
        return list(vae.parameters())
    modules = {"decoder": (vae.decoder, vae.post_quant_conv), "encoder": (vae.encoder, vae.quant_conv)}[part]
    vae.requires_grad_(False)
    trained = [parameter for module in modules for parameter in module.parameters()]
    for parameter in trained:
        parameter.requires_grad_(True)
    return trained


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, loader, max_batches: int = 20) -> float:
    """1 / std of the latent means over the data, so scaled latents have unit variance."""
    latents = [vae.encode(training_images(batch)).latent_dist.mean for _, batch in zip(range(max_batches), loader)]
    return float(1.0 / torch.cat(latents).std())


# Flags that may change between a run and its resumption: where it writes and how often, how it loads data (the
# batches are a pure function of the seed, epoch and index whatever the worker count), where the data folder now is,
# and how long it runs (a longer run goes on with its cosine schedule stretched to the new length, as in diffusers'
# scripts). Every other flag defines the run and must match the checkpoint's.
RESUMABLE_CHANGES = {
    "output_dir",
    "resume_from_checkpoint",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "num_workers",
    "data_dir",
    "max_train_steps",
}
OPTIMIZER_STATE_FILE = "optimizer.pt"


def save_checkpoint(output_dir: Path, step: int, vae, optimizer, schedule, generator, history, args) -> Path:
    """checkpoint-N/ = vae/ (save_pretrained: a VAE of its own) + the optimizer, schedule and random states + the
    step, the loss history and the flags; built under `.checkpoint-N.tmp` and renamed into place, so a checkpoint-N
    folder is always complete, then `latest` is moved onto it and old ones are rotated."""
    name = f"checkpoint-{step}"
    temporary = output_dir / f".{name}.tmp"
    if temporary.exists():
        shutil.rmtree(temporary)
    vae.save_pretrained(temporary / "vae")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        },
        temporary / OPTIMIZER_STATE_FILE,
    )
    state = {"global_step": step, "history": history, "args": vars(args)}
    (temporary / TRAINING_STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    removed = publish_checkpoint(output_dir, temporary, name, args.checkpoints_total_limit)
    logger.info(
        "Saved checkpoint %s%s",
        output_dir / name,
        f" (removed {', '.join(p.name for p in removed)})" if removed else "",
    )
    return output_dir / name


def load_checkpoint(checkpoint: Path, args, vae, optimizer, schedule, generator) -> tuple[int, list[float]]:
    """Restores what save_checkpoint wrote into the freshly built run -> (step, loss history). Refuses a checkpoint
    of a different run (another flag than RESUMABLE_CHANGES differs), naming the flags."""
    state = json.loads((checkpoint / TRAINING_STATE_FILE).read_text())
    saved = state.get("args", {})
    if "global_step" not in state or not (checkpoint / OPTIMIZER_STATE_FILE).is_file():
        raise ValueError(f"`--resume_from_checkpoint` {checkpoint} is not a train_vae.py checkpoint.")
    differing = [
        f"--{name} {saved.get(name)!r} -> {value!r}"
        for name, value in sorted(vars(args).items())
        if name not in RESUMABLE_CHANGES and saved.get(name) != value
    ]
    if differing:
        raise ValueError(
            f"`--resume_from_checkpoint` {checkpoint} belongs to a run with other flags ({'; '.join(differing)}). "
            "Resume with the flags it was started with, or start a new run in another --output_dir."
        )
    vae.load_state_dict(AutoencoderKL.from_pretrained(checkpoint / "vae").state_dict())
    states = torch.load(checkpoint / OPTIMIZER_STATE_FILE, weights_only=False)
    optimizer.load_state_dict(states["optimizer"])
    schedule.load_state_dict(states["schedule"])
    generator.set_state(states["generator"])
    torch.set_rng_state(states["torch_rng"])
    return int(state["global_step"]), list(state["history"])


def main(argv=None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.pretrained_vae_model_name_or_path:
        vae = load_vae(args.pretrained_vae_model_name_or_path, "--pretrained_vae_model_name_or_path")
    else:
        vae = AutoencoderKL.from_config({**vae_config("small"), "sample_size": args.resolution})
    train_loader, val_loader = create_dataloaders(
        dataset_type="custom",
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        image_size=args.resolution,
        val_fraction=0.05,
        seed=args.seed,
        random_flip=True,
    )
    predictor = load_prediction_model(args.prediction_model, vae) if args.prediction_model else None
    part = "decoder" if args.decoder_only else "encoder" if args.encoder_only else "all"
    parameters = trainable_parameters(vae, part)
    reference = copy.deepcopy(vae).requires_grad_(False).eval() if args.encoder_only else None
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, args.max_train_steps) / args.max_train_steps))
    )
    generator = torch.Generator().manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    for done in clean_leftovers(output_dir):
        logger.info("Start-up clean-up of %s: %s", output_dir, done)
    step, history = 0, []
    checkpoint = resolve_resume_checkpoint(args)
    if checkpoint is not None:
        step, history = load_checkpoint(checkpoint, args, vae, optimizer, schedule, generator)
        logger.info("Resuming from %s (step %d of %d).", checkpoint, step, args.max_train_steps)
    elif earlier := list_checkpoints(output_dir):
        logger.warning(
            "%s holds %s of an earlier run: starting afresh, its checkpoints are replaced as this run reaches their "
            "steps. To continue that run instead, add --resume_from_checkpoint latest.",
            output_dir,
            earlier[-1].name,
        )
    # A resumed run starts in the epoch it stopped in and skips the batches that epoch already served.
    batches_per_epoch = len(train_loader)
    set_epoch(train_loader, step // batches_per_epoch)
    skip = step % batches_per_epoch
    progress = tqdm(total=args.max_train_steps, initial=step, desc="vae")
    vae.train()
    while step < args.max_train_steps:
        batches, skip = itertools.islice(train_loader, skip, None), 0
        for batch in batches:
            loss, reconstruction = batch_loss(vae, batch, args, generator, predictor, args.crop_size, reference)
            if not torch.isfinite(loss):
                raise RuntimeError(f"Non-finite VAE loss at step {step} (batch {batch['id']}); lower --learning_rate.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            history.append(reconstruction.item())
            progress.update(1)
            progress.set_postfix(rec=f"{history[-1]:.4f}")
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                save_checkpoint(output_dir, step, vae, optimizer, schedule, generator, history, args)
            if step >= args.max_train_steps:
                break
    vae.eval()
    with torch.no_grad():
        eval_loader = val_loader if val_loader is not None else train_loader
        val_losses = [float(batch_loss(vae, b, args, generator, predictor, None, reference)[1]) for b in eval_loader]
        # The encoder is unchanged in a decoder-only fine-tune, and held to its object latents in an encoder-only
        # one: the scale stays.
        keep_scale = args.decoder_only or args.encoder_only
        scaling = vae.config.scaling_factor if keep_scale else latent_scaling_factor(vae, train_loader)
    vae.register_to_config(scaling_factor=scaling, force_upcast=False)
    vae.save_pretrained(output_dir)
    summary = {
        "steps": step,
        "first_10_reconstruction": sum(history[:10]) / len(history[:10]),
        "last_10_reconstruction": sum(history[-10:]) / len(history[-10:]),
        "validation_reconstruction": sum(val_losses) / max(1, len(val_losses)),
        "scaling_factor": scaling,
        "args": vars(args),
    }
    (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("Saved the VAE to %s: %s", output_dir, {k: v for k, v in summary.items() if k != "args"})
    return output_dir


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:  # bad input, named in the message: no traceback
        print(f"train_vae.py: error: {error}", file=sys.stderr)
        sys.exit(2)
