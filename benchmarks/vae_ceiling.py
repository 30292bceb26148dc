"""The VAE's own round trip of TRUE shadow maps, per data folder: the ceiling of any shadow model that decodes through it.

Each true map is encoded the way the training target is (2s - 1 on 3 channels, latent = posterior mean × scaling
factor) and decoded the way the pipeline decodes (channel mean, cleared under the object), then scored against the
map itself with evaluate_shadow.py's soft IoU and RMSE. A model that predicted the true latents exactly would score
this; a lower ceiling than the target means the VAE, not the UNet, is what to change first.

Beside it, the same maps through a plain grid of the latent's size (area down by 8, bilinear up, one value a cell):
what the latent resolution alone keeps of thin legs, slats and holes, whatever the VAE. Folders may be at different
resolutions (e.g. the same scenes at 128 and 256 px: 16 x 16 and 32 x 32 latents); each is scored at its own size
unless `--resolution` is given; `--limit N` scores the first N images only (the same scenes in both). With
`--eval_root`, the table also shows the model's one-step scores over all of the folder's images from
`<eval_root>/<folder name>/records.jsonl` (evaluate_shadow.py's output for that folder; a benchmark folder's three
tracks read as one set).

    python benchmarks/vae_ceiling.py --vae models/shadow-small/vae --data_dirs data/families/test-* \
        --eval_root work/families/eval --output_json vae_ceiling.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
# pipeline_shadow first: it imports diffusers with the optional torchao/bitsandbytes probes quietened
from pipeline_shadow import clear_under_object, decode_shadow, encode_latents, shadow_to_vae_input  # noqa: E402, I001
from diffusers import AutoencoderKL  # noqa: E402
from machine_info import cpu_description  # noqa: E402

from dataset_loading import DatasetVerificationError, create_dataloaders, infer_dataset_type  # noqa: E402
from generate_shadows import load_vae  # noqa: E402
from evaluate_shadow import ALL_TRACK, control_summary, rmse, soft_iou, summarize  # noqa: E402

VAE_FACTOR = 8  # SDXL's latent layout: one latent cell per 8 x 8 pixels


def vae_round_trip(vae: AutoencoderKL, shadow_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] true maps -> the same maps encoded and decoded as the pipeline would, cleared under the object."""
    latents = encode_latents(vae, shadow_to_vae_input(shadow_map))
    return clear_under_object(decode_shadow(vae, latents), mask)


def inverted_round_trip(
    vae: AutoencoderKL, shadow_map: torch.Tensor, mask: torch.Tensor, steps: int, learning_rate: float = 0.05
) -> torch.Tensor:
    """[B,1,H,W] true maps -> decoded from latents OPTIMISED to reproduce them (Adam on L1 + MSE, starting from the
    encoder's latents): what the decoder can draw at all. The gap to `vae_round_trip` is the encoder's share."""
    for parameter in vae.parameters():
        parameter.requires_grad_(False)
    with torch.inference_mode(False), torch.enable_grad():  # the callers score under inference_mode
        shadow_map, mask = shadow_map.clone(), mask.clone()
        with torch.no_grad():
            latents = encode_latents(vae, shadow_to_vae_input(shadow_map))
        latents.requires_grad_(True)
        optimizer = torch.optim.Adam([latents], lr=learning_rate)
        for _ in range(steps):
            decoded = clear_under_object(decode_shadow(vae, latents), mask)
            loss = (decoded - shadow_map).abs().mean() + (decoded - shadow_map).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return clear_under_object(decode_shadow(vae, latents), mask)


def grid_round_trip(shadow_map: torch.Tensor, mask: torch.Tensor, factor: int = VAE_FACTOR) -> torch.Tensor:
    """[B,1,H,W] -> area-averaged onto the latent grid and bilinearly upsampled back: one number a latent cell."""
    coarse = F.interpolate(shadow_map, scale_factor=1 / factor, mode="area")
    return clear_under_object(F.interpolate(coarse, size=shadow_map.shape[-2:], mode="bilinear"), mask)


def native_resolution(data_dir: Path) -> int:
    """The side of the first shadow map in a custom or benchmark folder (the public benchmark keeps its tracks in
    subfolders)."""
    found = sorted((data_dir / "shadows").glob("*.png")) or sorted(data_dir.rglob("*.shadow.png"))
    if not found:
        raise ValueError(f"`--data_dirs {data_dir}` holds no shadow map (shadows/*.png or **/*.shadow.png).")
    with Image.open(found[0]) as image:
        return max(image.size)


def folder_label(data_dir: Path) -> str:
    """The folder's object family from its metadata (the renderer records it), else its name."""
    metadata = data_dir / "metadata.json"
    if metadata.is_file():
        families = {entry.get("family") for entry in json.loads(metadata.read_text()).values()}
        if len(families) == 1 and None not in families:
            return families.pop()
    return data_dir.name


def in_order_loader(data_dir: Path, resolution: int, batch_size: int):
    """Every sample of `data_dir` once, in its own order, unflipped, at `resolution` (no validation split)."""
    loader, _ = create_dataloaders(
        dataset_type=infer_dataset_type(data_dir),
        data_dir=data_dir,
        batch_size=batch_size,
        num_workers=0,
        image_size=resolution,
        val_fraction=0.0,
        shuffle=False,
    )
    return loader


def _scores(values) -> list[float]:
    return np.atleast_1d(values).tolist()


def score_folder(
    vae: AutoencoderKL,
    data_dir: Path,
    resolution: int | None,
    batch_size: int,
    limit: int | None = None,
    reference_dir: Path | None = None,
    invert_steps: int = 0,
) -> dict:
    """Round-trip scores of one folder's true maps. With `reference_dir` (the same scenes rendered cleaner, e.g. at
    256 spp), also how far this folder's maps are from those (`target_vs_reference`: the best a perfect model scores
    against these targets) and how close the VAE's round trip comes to them (`vae_vs_reference`)."""
    resolution = resolution or native_resolution(data_dir)
    batches = in_order_loader(data_dir, resolution, batch_size)
    references = in_order_loader(reference_dir, resolution, batch_size) if reference_dir is not None else None
    names = ["vae_iou", "vae_rmse", "grid_iou", "shadow_fraction"] + (["inverted_iou"] if invert_steps else [])
    names += ["target_vs_reference_iou", "vae_vs_reference_iou"] if references is not None else []
    scores = {name: [] for name in names}
    start = time.perf_counter()
    with torch.inference_mode():
        for batch, reference in zip(batches, references if references is not None else itertools.repeat(None)):
            keep = batch_size if limit is None else min(batch_size, limit - len(scores["vae_iou"]))
            if keep <= 0:
                break
            truth, mask = batch["shadow_map"][:keep], batch["mask"][:keep]
            decoded, grid = vae_round_trip(vae, truth, mask), grid_round_trip(truth, mask)
            scores["vae_iou"] += _scores(soft_iou(decoded, truth))
            scores["vae_rmse"] += _scores(rmse(decoded, truth))
            scores["grid_iou"] += _scores(soft_iou(grid, truth))
            scores["shadow_fraction"] += (truth > 0.05).float().mean(dim=(1, 2, 3)).tolist()
            if invert_steps:
                scores["inverted_iou"] += _scores(soft_iou(inverted_round_trip(vae, truth, mask, invert_steps), truth))
            if reference is not None:
                if list(reference["id"][:keep]) != list(batch["id"][:keep]):
                    raise ValueError(
                        f"`--reference_dirs {reference_dir}` does not hold the same samples as {data_dir}."
                    )
                clean = reference["shadow_map"][:keep]
                scores["target_vs_reference_iou"] += _scores(soft_iou(truth, clean))
                scores["vae_vs_reference_iou"] += _scores(soft_iou(decoded, clean))
    row = {"folder": str(data_dir), "label": folder_label(data_dir), "resolution": resolution}
    row["reference"] = str(reference_dir) if reference_dir is not None else None
    row["latent"] = f"{resolution // VAE_FACTOR}x{resolution // VAE_FACTOR}"
    row["images"] = len(scores["vae_iou"])
    for name, values in scores.items():
        row[name] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    row["seconds_per_image"] = (time.perf_counter() - start) / max(1, row["images"])
    return row


def model_scores(eval_dir: Path) -> dict | None:
    """One-step soft IoU and direction figures over ALL of that folder's images (evaluate_shadow.py's records.jsonl,
    every track of a benchmark folder read as one set), if present."""
    records = pooled_records([eval_dir])
    return model_figures(records) if records else None


def model_figures(records: list[dict]) -> dict:
    """The model's soft IoU (mean and std over images), median direction error and wrong-side rate over `records`,
    read as one set (their track is ALL_TRACK)."""
    summary, control = summarize(records)[ALL_TRACK], control_summary(records)[ALL_TRACK]
    return {
        "iou": summary["iou"]["mean"],
        "iou_std": summary["iou"]["std"],
        "direction_median_deg": control["direction_abs_error_median_deg"],
        "wrong_side_rate": control["wrong_side_rate"],
    }


def pooled_records(eval_dirs: list[Path]) -> list[dict]:
    """Every per-(image, seed) record of these evaluate_shadow.py outputs as ONE set: ids and indices made unique per
    folder, every track read as the whole set."""
    pooled = []
    for offset, eval_dir in enumerate(eval_dirs):
        path = eval_dir / "records.jsonl"
        if not path.is_file():
            return []
        for line in path.read_text().splitlines():
            record = json.loads(line)
            index = offset * 1_000_000 + int(record["index"])
            pooled.append({**record, "index": index, "id": f"{eval_dir.name}/{record['id']}", "track": ALL_TRACK})
    return pooled


def pooled_row(rows: list[dict], eval_dirs: list[Path] | None) -> dict:
    """One row over the folders of `rows`: the VAE's scores weighted by images; with `eval_dirs` (one per row), the
    model's soft IoU, median direction error and wrong-side rate over all their images together."""
    images = sum(row["images"] for row in rows)

    def weighted(name: str) -> dict:
        mean = sum(row[name]["mean"] * row["images"] for row in rows) / images
        return {"mean": mean, "std": float("nan")}

    resolutions = {row["resolution"] for row in rows}
    row = {"label": "pooled", "folder": None, "reference": None, "images": images}
    row["resolution"] = resolutions.pop() if len(resolutions) == 1 else "mixed"
    row["latent"] = next(r["latent"] for r in rows) if row["resolution"] != "mixed" else "mixed"
    for name in ("vae_iou", "vae_rmse", "grid_iou", "inverted_iou"):
        if all(name in r for r in rows):
            row[name] = weighted(name)
    records = pooled_records(eval_dirs) if eval_dirs else []
    if records:
        row["model"] = model_figures(records)
    return row


def markdown(rows: list[dict]) -> str:
    with_reference = any(row.get("reference") for row in rows)
    header = "| family | px | latent | images | model 1-step soft IoU | median dir. error | wrong side "
    header += "| VAE round trip soft IoU | VAE RMSE | grid x8 soft IoU |"
    header += " target vs clean | VAE round trip vs clean |" if with_reference else ""
    with_inverted = any("inverted_iou" in row for row in rows)
    header += " decoder, optimised latents |" if with_inverted else ""
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for row in rows:
        model = row.get("model")
        model_cells = (
            [
                f"{model['iou']:.3f} ± {model['iou_std']:.3f}",
                f"{model['direction_median_deg']:.1f}°" if model["direction_median_deg"] is not None else "n/a",
                f"{100 * model['wrong_side_rate']:.0f} %" if model["wrong_side_rate"] is not None else "n/a",
            ]
            if model
            else ["", "", ""]
        )
        lines.append(
            "| "
            + " | ".join(
                [row["label"], str(row["resolution"]), row["latent"], str(row["images"]), *model_cells]
                + [
                    f"{row['vae_iou']['mean']:.3f}"
                    + (f" ± {row['vae_iou']['std']:.3f}" if np.isfinite(row["vae_iou"]["std"]) else ""),
                    f"{row['vae_rmse']['mean']:.4f}",
                    f"{row['grid_iou']['mean']:.3f}",
                ]
                + (
                    [
                        f"{row['target_vs_reference_iou']['mean']:.3f}" if row.get("reference") else "",
                        f"{row['vae_vs_reference_iou']['mean']:.3f}" if row.get("reference") else "",
                    ]
                    if with_reference
                    else []
                )
                + ([f"{row['inverted_iou']['mean']:.3f}" if "inverted_iou" in row else ""] if with_inverted else [])
            )
            + " |"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pretrained_vae_model_name_or_path",
        "--vae",
        dest="vae",
        required=True,
        help="an AutoencoderKL folder, or a shadow pipeline folder (its vae/)",
    )
    parser.add_argument("--data_dirs", nargs="+", required=True, help="custom or benchmark folders, one row each")
    parser.add_argument(
        "--resolution", type=int, default=None, help="score every folder at this size (default: its own)"
    )
    parser.add_argument("--eval_root", default=None, help="evaluate_shadow.py outputs, one per folder, by folder name")
    parser.add_argument(
        "--reference_dirs",
        nargs="+",
        default=None,
        help="one per --data_dirs: the same scenes rendered cleaner (e.g. 256 spp), to measure the targets' noise",
    )
    parser.add_argument(
        "--control_dirs",
        nargs="+",
        default=(),
        help="folders shown after the pooled row and left out of it (e.g. seen families, new objects)",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of each folder (in key order)")
    parser.add_argument(
        "--invert_steps",
        type=int,
        default=0,
        help="> 0: also decode latents optimised for this many Adam steps to reproduce each map (what the decoder can "
        "draw; slow, use with --limit)",
    )
    parser.add_argument("--eval_batch_size", dest="batch_size", type=int, default=8, help="maps encoded at once")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output_json", default=None)
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    vae = load_vae(args.vae, "--vae").eval()
    if args.reference_dirs is not None and len(args.reference_dirs) != len(args.data_dirs):
        raise ValueError(
            f"`--reference_dirs` needs one folder per `--data_dirs` ({len(args.data_dirs)}), got {len(args.reference_dirs)}."
        )
    references = [Path(p) for p in args.reference_dirs] if args.reference_dirs else [None] * len(args.data_dirs)
    rows = []
    for data_dir, reference_dir in zip(map(Path, args.data_dirs), references):
        row = score_folder(
            vae, data_dir, args.resolution, args.batch_size, args.limit, reference_dir, args.invert_steps
        )
        if args.eval_root:
            row["model"] = model_scores(Path(args.eval_root) / data_dir.name)
        rows.append(row)
    if len(rows) > 1 and args.limit is None:  # --limit scores a subset, which the model's records do not match
        eval_dirs = [Path(args.eval_root) / Path(d).name for d in args.data_dirs] if args.eval_root else None
        rows.append(pooled_row(rows, eval_dirs))
    for data_dir in map(Path, args.control_dirs):
        row = score_folder(vae, data_dir, args.resolution, args.batch_size, args.limit)
        row["label"] = f"control: {row['label']}"
        if args.eval_root:
            row["model"] = model_scores(Path(args.eval_root) / data_dir.name)
        rows.append(row)
    machine = f"{cpu_description()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    print(markdown(rows))
    print(f"\nVAE: {args.vae}. Machine: {machine}.")
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps({"vae": args.vae, "machine": machine, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, DatasetVerificationError) as error:  # bad folders or VAE: a message, not a traceback
        sys.exit(f"vae_ceiling.py: error: {error}")
