"""A contact sheet of one model on object families: for each folder (one family each), a few renders it never saw,
each as the renderer's shadow beside the model's one-step shadow, both composited the same way over a plain ground.

    python benchmarks/family_sheet.py --pretrained_model_name_or_path models/shadow-small \
        --data_dirs data/families/test-{legged,pole,ring,slats,bridge} --out docs/images/family_contact_sheet.png

Folders are custom folders as `render_shadow_dataset.py` writes them (objects/, masks/, shadows/, metadata.json);
the row label is the family the renderer recorded. Samples are taken one per object, in key order, so the sheet is
the same on every run (seed 0 for the model's noise).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_shadow import ShadowPipeline, composite, gray_to_tensor  # noqa: E402, I001

from generate_shadows import contact_sheet, load_pipeline  # noqa: E402

GROUND_RGB = (214, 205, 188)  # the beige ground of the README's other sheets
SHADOW_OPACITY = 0.8


def on_ground(object_rgb: torch.Tensor, mask: torch.Tensor, shadow: torch.Tensor) -> Image.Image:
    """[3,H,W] object, [1,H,W] mask and shadow map in [0, 1] -> pipeline_shadow.composite over a plain beige ground."""
    ground = torch.tensor(GROUND_RGB, dtype=torch.float32).div(255).reshape(3, 1, 1).expand_as(object_rgb)
    picture = composite(object_rgb, mask, shadow, ground, intensity=SHADOW_OPACITY)
    return Image.fromarray((picture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def one_sample_per_object(data_dir: Path, count: int) -> list[tuple[str, dict]]:
    """The first `count` samples of distinct objects, in key order."""
    metadata_path = data_dir / "metadata.json"
    if not metadata_path.is_file():
        raise ValueError(f"`--data_dirs {data_dir}` has no metadata.json (a render_shadow_dataset.py custom folder).")
    metadata = json.loads(metadata_path.read_text())
    chosen, seen = [], set()
    for key in sorted(metadata):
        entry = metadata[key]
        if entry.get("object_id") in seen:
            continue
        seen.add(entry.get("object_id"))
        chosen.append((key, entry))
        if len(chosen) == count:
            break
    return chosen


def family_row(pipe: ShadowPipeline, data_dir: Path, count: int, resolution: int | None) -> tuple[str, list]:
    """(label, [truth, model, truth, model, ...]) for one folder."""
    cells, families = [], set()
    for key, entry in one_sample_per_object(data_dir, count):
        families.add(entry.get("family") or data_dir.name)
        obj = Image.open(data_dir / "objects" / f"{key}.png").convert("RGB")
        mask = Image.open(data_dir / "masks" / f"{key}.png").convert("L")
        truth = gray_to_tensor(Image.open(data_dir / "shadows" / f"{key}.png"), "shadow map")  # 16-bit kept
        predicted = pipe(
            obj,
            mask,
            theta=entry["theta"],
            phi=entry["phi"],
            size=entry["size"],
            height=resolution,
            width=resolution,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).shadow_maps[0]
        rgb, alpha = torch.from_numpy(np.asarray(obj, dtype=np.float32) / 255).permute(2, 0, 1), gray_to_tensor(mask)
        cells += [on_ground(rgb, alpha, truth), on_ground(rgb, alpha, predicted)]
    label = families.pop() if len(families) == 1 else data_dir.name
    return label, cells


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pretrained_model_name_or_path", "--model", dest="model", required=True, help="a shadow pipeline folder"
    )
    parser.add_argument("--data_dirs", nargs="+", required=True, help="custom folders, one family (row) each")
    parser.add_argument("--samples_per_family", type=int, default=3, help="objects per row (one render each)")
    parser.add_argument("--resolution", type=int, default=None, help="default: the model's own")
    parser.add_argument("--cell", type=int, default=128, help="pixels per cell")
    parser.add_argument("--out", required=True, help="PNG to write")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    if args.samples_per_family < 1:
        raise ValueError(f"`--samples_per_family` must be >= 1, got {args.samples_per_family}.")
    pipe = load_pipeline(args.model, torch.float32, "cpu", "--pretrained_model_name_or_path")
    pipe.set_progress_bar_config(disable=True)
    rows, labels = [], []
    for data_dir in map(Path, args.data_dirs):
        label, cells = family_row(pipe, data_dir, args.samples_per_family, args.resolution)
        labels.append(label)
        rows.append(cells)
    columns = ["renderer", "model"] * max(len(cells) // 2 for cells in rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows, labels, columns, cell=args.cell).save(out)
    print(f"Wrote {out} ({len(rows)} families x {len(columns) // 2} objects).")
    return out


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:
        sys.exit(f"family_sheet.py: error: {error}")
