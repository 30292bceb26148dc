# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""The main job on the embedded default, offline, in minutes (`make demo`).

1. Renders a small synthetic dataset with Blender (render_shadow_dataset.py, in its own .venv-render), split by object.
2. Fine-tunes the embedded default with `accelerate launch train_shadow_sdxl.py` for a short run.
3. Predicts shadows for the held-out objects (never seen in training) under a sweep of lights and writes
   `contact_sheet.png` (rows: objects; columns: phi, theta and size sweeps) and `metrics.json` (evaluate_shadow.py on
   the held-out split).

The embedded default is the small model shipped in `models/shadow-small/` (trained by recipes/small_model.sh on the
repository's own renders; if the folder is missing, a tiny random SDXL-format model stands in, which shows the
machinery but not shadows). The renders use a different seed than the model's training data, so the held-out
objects of the contact sheet were never seen in training. On a GPU, accelerate uses it.

    python demo.py [--output_dir demo_output] [--max_train_steps 100] [--num_samples 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import PIL.Image
import torch

from dataset_loading import create_dataloaders
from evaluate_shadow import control_summary, evaluate, summarize
from generate_shadows import contact_sheet
from pipeline_shadow import ShadowPipeline, check_resolution, composite, gray_to_tensor, image_to_tensor
from random_sdxl import save_random_sdxl

logger = logging.getLogger("demo")
REPO = Path(__file__).resolve().parent
SHIPPED_MODEL = REPO / "models" / "shadow-small"
RENDER_PYTHON = REPO / ".venv-render" / "bin" / "python"
BACKGROUND_RGB = (214, 206, 190)

# Columns of the contact sheet: (theta, phi, size) per column, grouped by what varies.
SWEEP = (
    [(30.0, phi, 2.0) for phi in (0.0, 90.0, 180.0, 270.0)]
    + [(theta, 0.0, 2.0) for theta in (10.0, 25.0, 40.0)]
    + [(30.0, 0.0, size) for size in (2.0, 5.0, 8.0)]
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--num_samples", type=int, default=64, help="Synthetic renders (train + held-out objects).")
    parser.add_argument(
        "--resolution", type=int, default=None, help="Render and training resolution (default: the shipped model's)."
    )
    parser.add_argument("--max_train_steps", "--train_steps", dest="max_train_steps", type=int, default=100)
    parser.add_argument(
        "--learning_rate", type=float, default=1e-4, help="Fine-tuning lr (small models take more than SDXL)."
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # Checked here, not by the rendering or the training minutes later (their own errors would say the same).
    if args.num_samples < 4:
        parser.error(
            f"--num_samples must be >= 4 (a quarter of the objects is held out for the test split), got {args.num_samples}."
        )
    if args.max_train_steps < 1:
        parser.error(f"--max_train_steps must be >= 1, got {args.max_train_steps}.")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        parser.error(f"--learning_rate must be a finite number > 0, got {args.learning_rate}.")
    if not 0 <= args.seed < 2**32 - 2026:
        parser.error(f"--seed must be an integer in [0, 2**32 - 2027] (the renders use seed + 2026), got {args.seed}.")
    if args.resolution is not None:
        try:
            check_resolution(args.resolution, "--resolution")
        except ValueError as error:
            parser.error(str(error).replace("`", ""))
    output_dir = REPO / args.output_dir
    if output_dir.exists() and not output_dir.is_dir():
        parser.error(f"--output_dir {args.output_dir} exists and is not a folder.")
    return args


def model_resolution(model_dir: Path, fallback: int = 128) -> int:
    """The resolution a pipeline folder was trained at (its recorded default, else unet sample_size x 8)."""
    index = model_dir / "model_index.json"
    if index.is_file():
        recorded = json.loads(index.read_text()).get("default_processing_resolution")
        if recorded:
            return int(recorded)
    unet_config = model_dir / "unet" / "config.json"
    if unet_config.is_file():
        config = json.loads(unet_config.read_text())
        return int(config.get("unet_config", config)["sample_size"]) * 8
    return fallback


def run(command: list[str], what: str) -> None:
    logger.info("%s: %s", what, " ".join(command))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, cwd=REPO, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed (exit {result.returncode}); see the output above.")


def render_data(args, data_dir: Path) -> None:
    if not RENDER_PYTHON.exists():
        raise SystemExit(f"{RENDER_PYTHON} is missing: run `make render-setup` (or `make demo`, which does it).")
    run(
        [str(RENDER_PYTHON), "render_shadow_dataset.py", "--output_dir", str(data_dir), "--num_samples",
         str(args.num_samples), "--resolution", str(args.resolution), "--spp", "16", "--workers", "2",
         "--test_fraction", "0.25", "--seed", str(args.seed + 2026)],
        "Rendering synthetic samples",
    )  # fmt: skip


def base_model(work_dir: Path) -> Path:
    if (SHIPPED_MODEL / "model_index.json").is_file():
        logger.info("Starting from the shipped small model %s.", SHIPPED_MODEL)
        return SHIPPED_MODEL
    logger.warning("No shipped model in %s yet: starting from a tiny random SDXL-format model.", SHIPPED_MODEL)
    return save_random_sdxl(work_dir / "tiny-sdxl", size="tiny", seed=0)


def train(args, base: Path, data_dir: Path, run_dir: Path) -> Path:
    device_flags = [] if torch.cuda.is_available() else ["--cpu"]
    steps = str(args.max_train_steps)
    run(
        [sys.executable, "-m", "accelerate.commands.launch", *device_flags, "--num_processes", "1",
         "train_shadow_sdxl.py", "--pretrained_model_name_or_path", str(base), "--dataset_type", "custom",
         "--train_data_dir", str(data_dir), "--resolution", str(args.resolution), "--train_batch_size", "8",
         "--max_train_steps", steps, "--checkpointing_steps", steps, "--validation_steps", steps,
         "--logging_steps", "20", "--learning_rate", str(args.learning_rate), "--lr_warmup_steps", "10",
         "--timestep_sampling", "shifted", "--dataloader_num_workers", "0", "--random_flip", "--seed", str(args.seed), "--report_to", "none",
         "--cache_latents", "--latent_cache_dir", str(run_dir / "latents"), "--output_dir", str(run_dir)],
        "Fine-tuning",
    )  # fmt: skip
    return run_dir  # the final pipeline sits at the root of --output_dir (diffusers layout)


def held_out_objects(test_dir: Path, limit: int = 4) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    metadata = json.loads((test_dir / "metadata.json").read_text())
    seen, objects = set(), []
    for stem, entry in sorted(metadata.items()):
        object_id = entry.get("object_id", stem)
        if object_id in seen:
            continue
        seen.add(object_id)
        with PIL.Image.open(test_dir / "objects" / f"{stem}.png") as image:
            rgb = image_to_tensor(image)[:3]
        with PIL.Image.open(test_dir / "masks" / f"{stem}.png") as mask:
            objects.append((str(object_id), rgb, gray_to_tensor(mask)))
        if len(objects) == limit:
            break
    return objects


def sweep_sheet(pipe: ShadowPipeline, objects, path: Path, seed: int) -> Path:
    rows = []
    for _, rgb, mask in objects:
        prepared = pipe.encode_object(rgb[None], mask[None])
        background = torch.tensor(BACKGROUND_RGB, dtype=torch.float32).div(255).reshape(3, 1, 1).expand_as(rgb)
        row = []
        for theta, phi, size in SWEEP:
            shadow = pipe(
                object_latents=prepared, theta=theta, phi=phi, size=size, output_type="pt",
                generator=torch.Generator().manual_seed(seed),
            ).shadow_maps[0]  # fmt: skip
            picture = composite(rgb, mask, shadow, background)
            row.append(PIL.Image.fromarray((picture.permute(1, 2, 0).numpy() * 255).round().astype("uint8")))
        rows.append(row)
    labels = [f"phi {p:g}" for _, p, _ in SWEEP[:4]] + [f"theta {t:g}" for t, _, _ in SWEEP[4:7]]
    labels += [f"size {s:g}" for _, _, s in SWEEP[7:]]
    contact_sheet(rows, [name for name, _, _ in objects], labels, cell=128).save(path)
    return path


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.resolution is None:
        args.resolution = model_resolution(SHIPPED_MODEL)
    start = time.perf_counter()
    output_dir = (REPO / args.output_dir).resolve()
    data_dir, run_dir = output_dir / "data", output_dir / "run"
    render_data(args, data_dir)
    final = train(args, base_model(output_dir), data_dir / "train", run_dir)

    pipe = ShadowPipeline.from_pretrained(final, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    loader, _ = create_dataloaders(
        "custom", data_dir / "test", batch_size=8, num_workers=0, image_size=args.resolution, val_fraction=0,
        shuffle=False,
    )  # fmt: skip
    results = evaluate(pipe, loader, num_seeds=2, seed=args.seed, progress=False)
    sheet = sweep_sheet(pipe, held_out_objects(data_dir / "test"), output_dir / "contact_sheet.png", args.seed)
    report = {
        "model": str(final),
        "held_out_split": str(data_dir / "test"),
        "metrics": summarize(results.records),
        "control": control_summary(results.records),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
    logger.info("Contact sheet: %s", sheet)
    logger.info("Metrics: %s (%.0f s in all)", output_dir / "metrics.json", report["seconds"])
    return report


if __name__ == "__main__":
    main()
