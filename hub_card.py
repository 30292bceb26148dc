# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Sharing a trained shadow pipeline: the Hugging Face model card that `train_shadow_sdxl.py` writes into the saved
pipeline folder, and the upload of that folder (`--push_to_hub`). It reads only the run's arguments, its
`TrainingState`, the validation grids in `--output_dir` and an optional `evaluate_shadow.py` metrics.json, so the
training script keeps training and this module keeps the words."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import PIL.Image

if TYPE_CHECKING:
    from train_shadow_sdxl import TrainingState

logger = logging.getLogger(__name__)

MODEL_CARD_TAGS = ["shadow-generation", "diffusers", "rectified-flow", "sdxl"]
SECRET_ARGS = ("hub_token",)  # never written to training_config.json, trackers or the model card
GRID_COLUMNS = "object | single-step prediction | ground truth"  # a validation grid row
GRID_INFO_KEY = "shadow_validation"  # the PNG text chunk of a validation grid: its step and each row's light
# The final pipeline sits at the root of --output_dir beside the training state: the upload leaves that out.
HUB_IGNORE_PATTERNS = ["checkpoint-*", "latest", "latest/*", "best/*", "logs/*", "validation/*", ".*", "*/.*"]
HUB_IGNORE_PATTERNS += ["training.log", "training_config.json"]

PAPER_URL = "https://arxiv.org/abs/2412.11972"
BENCHMARK_DATASET = "jasperai/controllable-shadow-generation-benchmark"
CARD_METRICS = (("iou", "IoU ↑"), ("rmse", "RMSE ↓"), ("s_rmse", "s-RMSE ↓"), ("zncc", "ZNCC ↑"))
LIGHT_TABLE = """| parameter | range | meaning |
|---|---|---|
| `theta` | [0, 90) degrees (0..45 in the training data of the paper) | polar angle of the light from straight up; larger = longer shadow, 0 = shadow right under the object |
| `phi` | any degrees, wrapped into [0, 360) | azimuth; 0 = light on the image's right, so the shadow falls to the LEFT; 90 = light behind the object |
| `size` | > 0 (2..8 in the training data of the paper) | side of the square area light on a sphere of radius 8 around the object; bigger = softer |
| `intensity` | >= 0 | compositing only: the background is darkened by intensity x shadow map |"""
LIGHT_DIAGRAM = """```
                     phi = 90: light behind the object (shadow toward the camera)
                                        |
  phi = 180: light on the left  ----- object -----  phi = 0: light on the image's right
  (shadow falls right)                  |           (shadow falls LEFT)
                     phi = 270: light on the camera's side (shadow away from it)
                                        |
                                      camera
```"""


def read_evaluation_metrics(path: str | os.PathLike) -> dict:
    """`settings` and `summary` ({track: {metric: {"mean", "std", "n"}, "num_images", "num_seeds"}}) of the
    metrics.json that evaluate_shadow.py writes."""
    metrics = json.loads(Path(path).read_text())
    if not isinstance(metrics, dict) or not isinstance(metrics.get("summary"), dict):
        raise ValueError("not a metrics.json of evaluate_shadow.py (no `summary` table)")
    # Everything the model card reads, checked here: the training script reads the file at start-up, so a malformed
    # one fails in seconds, not in the model card after the run.
    settings = metrics.get("settings", {})
    if not isinstance(settings, dict):
        raise ValueError(f"`settings` must be a JSON object, got {type(settings).__name__}")
    for track, entry in metrics["summary"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"`summary.{track}` must be a JSON object of metrics, got {type(entry).__name__}")
        for name, _ in CARD_METRICS:
            stats = entry.get(name)
            if stats is None:
                continue
            if not isinstance(stats, dict):
                raise ValueError(f"`summary.{track}.{name}` must be an object with `mean` and `std`, got {stats!r}")
            mean, std = stats.get("mean"), stats.get("std")
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (mean, std))
            if mean is not None and not numbers:
                raise ValueError(f"`summary.{track}.{name}` needs numbers `mean` and `std`, got {mean!r} and {std!r}")
    return {"settings": settings, "summary": metrics["summary"]}


def latest_validation_grid(output_dir: str | os.PathLike) -> tuple[Path | None, dict]:
    """The newest validation/step-N.png and what it shows ({"step", "columns", "rows": captions}), or (None, {})."""
    found = []
    for path in (Path(output_dir) / "validation").glob("step-*.png"):
        match = re.fullmatch(r"step-(\d+)\.png", path.name)
        if match:
            found.append((int(match.group(1)), path))
    if not found:
        return None, {}
    path = max(found)[1]
    with PIL.Image.open(path) as image:
        info = image.info.get(GRID_INFO_KEY)
    return path, (json.loads(info) if info else {})


def _is_hub_id(name: str) -> bool:
    return not os.path.exists(os.path.expanduser(name)) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None


def _data_description(args: argparse.Namespace) -> str:
    if args.dataset_type == "hf" and args.dataset_name:
        source = (
            f"the Hugging Face dataset [`{args.dataset_name}`](https://huggingface.co/datasets/{args.dataset_name})"
        )
    else:
        source = f"a local dataset in the project's custom layout (`{Path(args.train_data_dir or '.').name}/`)"
    return (
        f"Trained on {source}, with {args.val_fraction:.0%} of the samples held out for validation. The public "
        f"benchmark [`{BENCHMARK_DATASET}`](https://huggingface.co/datasets/{BENCHMARK_DATASET}) is a test set and "
        "was not used for training."
    )


def _metrics_section(metrics_path: str | None) -> str:
    if not metrics_path:
        return (
            "No evaluation was attached to this training run. Score the pipeline on the public benchmark with "
            "`python evaluate_shadow.py --model <this repo> --dataset_type benchmark` and compare with the paper's "
            "Table 2."
        )
    metrics = read_evaluation_metrics(metrics_path)
    settings = metrics["settings"]
    lines = [
        f"Measured with `evaluate_shadow.py` on {settings.get('dataset', 'the evaluation data')}: "
        f"{settings.get('num_inference_steps', 1)} inference step(s), {settings.get('num_seeds', '?')} seed(s) per "
        f"image, resolution {settings.get('resolution', '?')}, {settings.get('hardware', 'hardware not recorded')}. "
        "Mean ± std over images (each averaged over its seeds).",
        "",
        "| track | images | " + " | ".join(label for _, label in CARD_METRICS) + " |",
        "|---|---|" + "---|" * len(CARD_METRICS),
    ]
    for track, entry in metrics["summary"].items():
        cells = []
        for name, _ in CARD_METRICS:
            stats = entry.get(name) or {}
            mean, std = stats.get("mean"), stats.get("std")
            cells.append("n/a" if mean is None else f"{mean:.3f} ± {std:.3f}")
        lines.append(f"| {track} | {entry.get('num_images', '?')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _usage_section(args: argparse.Namespace, repo_id: str) -> str:
    call = (
        'cutout = Image.open("object.png")  # an RGBA cut-out: the mask is its alpha channel\n'
        'out = pipe(cutout, theta=30.0, phi=45.0, size=4.0, background=Image.open("background.jpg"), intensity=0.8,\n'
        "           generator=torch.Generator().manual_seed(0))\n"
        'out.shadow_maps[0].save("shadow.png")  # mode "L", 255 = full shadow (intensity not applied)\n'
        'out.images[0].save("composite.png")  # the object over the shadowed background'
    )
    text = (
        "The pipeline's code (`pipeline_shadow.py`) ships beside the weights, so diffusers loads it with "
        "`trust_remote_code=True`; one UNet step per image (`num_inference_steps=1`, the default).\n\n"
        "```python\nimport torch\nfrom diffusers import DiffusionPipeline\nfrom PIL import Image\n\n"
        f'pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)\n'
        'pipe = pipe.to("cuda" if torch.cuda.is_available() else "cpu")\n'
        f"{call}\n```\n\n"
        "Where `pipeline_shadow.py` (also in this repository) is importable, no flag is needed: "
        f'`from pipeline_shadow import ShadowPipeline; ShadowPipeline.from_pretrained("{repo_id}")`.'
    )
    if args.use_lora:
        text += (
            "\n\nThe weights above are the LoRA merged into the base. The adapter itself is in `unet_lora/` (peft "
            "format, plus the fully trained `conv_in` and light projection) and loads onto the converted base:\n\n"
            "```python\nfrom pipeline_shadow import ShadowPipeline\n\n"
            f'pipe = ShadowPipeline.from_sdxl("{args.pretrained_model_name_or_path}")\n'
            f'pipe.load_lora_weights("{repo_id}")  # or a local .../unet_lora folder; fuse=True merges it\n```'
        )
    return text


def _training_section(args: argparse.Namespace, state: TrainingState, num_processes: int) -> str:
    total_batch = args.train_batch_size * num_processes * args.gradient_accumulation_steps
    if args.use_lora:
        alpha = args.lora_alpha or args.lora_rank
        method = f"LoRA (rank {args.lora_rank}, alpha {alpha:g}) + fully trained conv_in and light projection"
    else:
        method = "full fine-tuning"
    optimizer = "AdamW"
    if args.use_8bit_adam:
        optimizer = "8-bit AdamW (bitsandbytes)"
    elif args.memory_lean:
        optimizer = "8-bit AdamW with bf16 stochastic rounding (torchao)"
    weights = "bf16 weights and gradients (`--memory_lean`)" if args.memory_lean else "fp32 weights"
    rows = [
        ("base model", f"`{args.pretrained_model_name_or_path}`"),
        ("method", method),
        ("objective", f"rectified flow, t sampling `{args.timestep_sampling}`"),
        ("resolution", f"{args.resolution} px"),
        ("optimizer steps", f"{state.global_step}"),
        (
            "batch",
            f"{args.train_batch_size} per device x {num_processes} device(s) x "
            f"{args.gradient_accumulation_steps} accumulated = {total_batch}",
        ),
        (
            "optimizer",
            f"{optimizer}, lr {args.learning_rate:g}, "
            f"`{args.lr_scheduler}` with {args.lr_warmup_steps} warm-up steps, clipping {args.max_grad_norm:g}",
        ),
        ("precision", f"{weights}, `{args.mixed_precision or 'no'}` autocast"),
        ("EMA", f"decay {args.ema_decay:g} (these weights are the EMA)" if args.use_ema else "no"),
        ("seed", f"{args.seed}"),
    ]
    if state.best_val_loss is not None:
        label = "single step, t = 1" if state.best_by == "single_step" else "training t"
        rows.append((f"best validation loss ({label})", f"{state.best_val_loss:.6f} at step {state.best_step}"))
    table = "\n".join(["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    shown = {k: v for k, v in public_args(args).items() if not k.startswith("debug_")}
    arguments = json.dumps(shown, indent=2, sort_keys=True, default=str)
    return (
        f"{_data_description(args)}\n\n{table}\n\n<details><summary>All training arguments</summary>\n\n"
        f"```json\n{arguments}\n```\n\n</details>"
    )


def save_model_card(
    args: argparse.Namespace, folder: Path, state: TrainingState, num_processes: int = 1, repo_id: str | None = None
) -> Path:
    """Writes folder/README.md (a Hugging Face model card: YAML front matter + markdown) and copies the latest
    validation grid to folder/validation.png."""
    from huggingface_hub import ModelCard, ModelCardData

    repo_id = repo_id or args.hub_model_id or f"path/to/{Path(args.output_dir).resolve().name}"
    base = args.pretrained_model_name_or_path
    card_data = ModelCardData(
        license=args.hub_license,
        library_name="diffusers",
        pipeline_tag="image-to-image",
        tags=list(MODEL_CARD_TAGS) + (["lora"] if args.use_lora else []),
        base_model=base if _is_hub_id(base) else None,
    )
    grid, grid_info = latest_validation_grid(args.output_dir)
    if grid is not None:
        shutil.copyfile(grid, folder / "validation.png")
        lights = "\n".join(f"{i + 1}. {caption}" for i, caption in enumerate(grid_info.get("rows", [])))
        validation = (
            f"![validation grid](validation.png)\n\nStep {grid_info.get('step', '?')}, one row per held-out sample: "
            f"{GRID_COLUMNS} (single step from fixed noise).\n\n{lights}"
        )
    else:
        validation = "No validation grid (the run had no validation split)."
    body = f"""# Controllable shadow generation in one step (SDXL, rectified flow)

Predicts the shadow map that a cut-out object casts under a light given by `theta`, `phi` and `size`, in ONE UNet
step, and composites it onto a background. A reproduction of Tasar, Chadebec and Aubin, *Controllable Shadow Generation
with Single-Step Diffusion Models from Synthetic Data* ([arXiv 2412.11972]({PAPER_URL})): SDXL's UNet without its text
cross-attention, with the object latent and mask concatenated to the input and the light embedded like a timestep,
fine-tuned with rectified flow from `{base}` by `train_shadow_sdxl.py`.

## Light parameters

{LIGHT_TABLE}

The object stands on the ground plane, the camera looks at it from the front and slightly above; seen from above:

{LIGHT_DIAGRAM}

## How to use

{_usage_section(args, repo_id)}

## Training

{_training_section(args, state, num_processes)}

## Validation

{validation}

## Evaluation

{_metrics_section(args.evaluation_metrics)}

## Licence

The weights are fine-tuned from `{base}` and are released under `{args.hub_license}` (weights fine-tuned from SDXL
inherit its CreativeML Open RAIL++-M licence and its use restrictions). The code in `pipeline_shadow.py` is
Apache-2.0. The training data is described above; check its own licence before redistributing derived work.
"""
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")
    path = folder / "README.md"
    card.save(path)
    return path


class HubRepositoryError(ValueError):
    """The Hub repository for --push_to_hub cannot be created or reached (raised at start-up, before training)."""


def hub_repo_name(args: argparse.Namespace) -> str:
    """--hub_model_id, else the run folder's own name (`runs/shadow-512` -> `shadow-512`), as in diffusers."""
    return args.hub_model_id or Path(args.output_dir).resolve().name


def create_hub_repo(args: argparse.Namespace) -> str:
    """Creates (or reuses) the Hub repository and returns its full id (namespace/name). The training script calls it
    at start-up, before any model loads, so a bad token, a name taken by someone else or no network fails in seconds,
    not after the run. Raises HubRepositoryError naming --hub_model_id / --hub_token."""
    from huggingface_hub import create_repo

    name = hub_repo_name(args)
    try:
        return create_repo(name, exist_ok=True, token=args.hub_token, private=args.hub_private_repo).repo_id
    except Exception as error:  # offline mode, HTTP 401/403/409, a malformed name, no network: all stop the run here
        raise HubRepositoryError(
            f"`--push_to_hub`: cannot create or reach the Hub repository {name!r} ({type(error).__name__}: {error}). "
            "Check `--hub_model_id` (default: the --output_dir folder's name), `--hub_token` or `hf auth login`, and "
            "the network (HF_HUB_OFFLINE must be unset); or train without --push_to_hub and upload later with "
            "`hf upload`."
        ) from error


def upload_pipeline(folder: Path, repo_id: str, token: str | None = None) -> None:
    """Uploads the final pipeline at the root of the run folder (weights, pipeline_shadow.py at the root and in unet/,
    README.md, validation.png, unet_lora/ with --use_lora), without checkpoints, best/, logs or training state."""
    from huggingface_hub import upload_folder

    upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        token=token,
        commit_message="End of training",
        ignore_patterns=HUB_IGNORE_PATTERNS,
    )


def push_final_pipeline(
    args: argparse.Namespace, folder: Path, state: TrainingState, num_processes: int, repo_id: str
) -> str:
    """Rewrites the card with the repository's full id (made by `create_hub_repo` at start-up) and uploads."""
    try:
        save_model_card(args, folder, state, num_processes, repo_id=repo_id)
        upload_pipeline(folder, repo_id, args.hub_token)
    except Exception:
        logger.error(
            "Uploading %s to the Hub failed; the pipeline is saved there. Retry with: hf upload %s %s . --exclude %s",
            folder,
            repo_id,
            folder,
            " ".join(f"'{pattern}'" for pattern in HUB_IGNORE_PATTERNS),
        )
        raise
    logger.info("Uploaded %s to https://huggingface.co/%s", folder, repo_id)
    return repo_id


def public_args(args: argparse.Namespace) -> dict:
    """The arguments without secrets (the Hub token): what the config file, the trackers and the model card show."""
    return {k: v for k, v in vars(args).items() if k not in SECRET_ARGS}
