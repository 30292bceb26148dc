# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Generate shadows for cut-out objects with a trained ShadowPipeline.

    python generate_shadows.py --model PATH_OR_REPO --input cutouts/ --theta 30 --phi 0 90 180 --size 2 \
        --background beach.jpg --pad 0.25 --output_dir shadows_out

For each input (an RGBA cut-out, or an RGB image plus `--mask`) and each light, writes
`<stem>_<light>_shadow.png` (the raw map, 255 = full shadow), `<stem>_<light>_layer.png` (black with alpha =
intensity x shadow, for image editors) and `<stem>_<light>_composite.png`. Several values for a light flag make a
sweep (every combination) and a `contact_sheet.png` (rows: inputs; columns: lights).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import torch
from tqdm.auto import tqdm

from pipeline_shadow import (
    MASK_FILL,
    ShadowPipeline,
    composite,
    gray_to_tensor,
    image_to_tensor,
    shadow_layer,
    shadow_map_to_pil,
)

logger = logging.getLogger("generate_shadows")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Light:
    theta: float
    phi: float
    size: float

    @property
    def tag(self) -> str:
        return f"t{self.theta:g}_p{self.phi:g}_s{self.size:g}"

    @property
    def label(self) -> str:
        return f"theta {self.theta:g} phi {self.phi:g} size {self.size:g}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A trained shadow pipeline folder or Hub id.")
    parser.add_argument(
        "--input", required=True, help="An image or a folder of images (RGBA cut-outs, or RGB + --mask)."
    )
    parser.add_argument("--mask", default=None, help="A mask image, or a folder of masks with the same file stems.")
    parser.add_argument("--theta", type=float, nargs="+", default=[30.0], help="Polar angle(s) in degrees, [0, 90).")
    parser.add_argument("--phi", type=float, nargs="+", default=[0.0], help="Azimuth(s) in degrees; 0 = light right.")
    parser.add_argument("--size", type=float, nargs="+", default=[2.0], help="Area-light side(s) > 0; bigger = softer.")
    parser.add_argument("--intensity", type=float, default=1.0, help="Shadow strength >= 0 for layer and composite.")
    parser.add_argument("--background", default=None, help="Background image for the composites (default: white).")
    parser.add_argument(
        "--pad", type=float, default=0.0, help="Enlarge the canvas by this fraction of each side, so long shadows fit."
    )
    parser.add_argument("--num_inference_steps", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=None, help="Processing size (default: the model's).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    args = parser.parse_args(argv)
    if args.pad < 0:
        parser.error(f"--pad must be >= 0, got {args.pad}.")
    if args.intensity < 0:
        parser.error(f"--intensity must be >= 0, got {args.intensity}.")
    return args


def list_images(path: Path, flag: str) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{flag} folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        return files
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"{flag} {path} does not exist.")


def find_mask(image_path: Path, mask_arg: str | None) -> Path | None:
    if mask_arg is None:
        return None
    mask_path = Path(mask_arg)
    if mask_path.is_file():
        return mask_path
    for suffix in IMAGE_SUFFIXES:
        candidate = mask_path / f"{image_path.stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"No mask for {image_path.name} in --mask {mask_path} (expected {image_path.stem}.png).")


def load_cutout(image_path: Path, mask_path: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ([3,H,W] RGB in [0,1], [1,H,W] mask). Errors name the file."""
    try:
        with PIL.Image.open(image_path) as image:
            rgb = image_to_tensor(image, str(image_path))
        if mask_path is not None:
            with PIL.Image.open(mask_path) as mask_image:
                mask = gray_to_tensor(mask_image, str(mask_path))
        elif rgb.shape[0] == 4:
            mask = rgb[3:4]
        else:
            raise ValueError(f"{image_path} is RGB without an alpha channel: give an RGBA cut-out or --mask.")
    except (OSError, PIL.UnidentifiedImageError) as error:
        raise ValueError(
            f"Cannot read {image_path if mask_path is None else f'{image_path} / {mask_path}'}: {error}"
        ) from error
    if mask.shape[-2:] != rgb.shape[-2:]:
        raise ValueError(f"{mask_path} is {tuple(mask.shape[-2:])} (H, W) but {image_path} is {tuple(rgb.shape[-2:])}.")
    return rgb[:3], mask


def pad_canvas(rgb: torch.Tensor, mask: torch.Tensor, pad: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Adds `pad` x height above and below and `pad` x width left and right: white image, empty mask."""
    if pad == 0:
        return rgb, mask
    height, width = rgb.shape[-2:]
    dy, dx = round(pad * height), round(pad * width)
    padding = (dx, dx, dy, dy)
    return (
        torch.nn.functional.pad(rgb, padding, value=1.0),
        torch.nn.functional.pad(mask, padding, value=MASK_FILL),
    )


def contact_sheet(
    rows: list[list[PIL.Image.Image]], row_labels: list[str], column_labels: list[str], cell: int = 160
) -> PIL.Image.Image:
    """A labelled grid of images (each fitted into a `cell` square): rows x columns."""
    label_width, label_height = 120, 22
    sheet = PIL.Image.new(
        "RGB", (label_width + cell * len(column_labels), label_height + cell * len(rows)), (255, 255, 255)
    )
    draw = PIL.ImageDraw.Draw(sheet)
    for column, text in enumerate(column_labels):
        draw.text((label_width + column * cell + 4, 4), text, fill=(0, 0, 0))
    for row, (images, text) in enumerate(zip(rows, row_labels)):
        top = label_height + row * cell
        draw.text((4, top + cell // 2 - 6), text[:18], fill=(0, 0, 0))
        for column, image in enumerate(images):
            scale = (cell - 4) / max(image.size)  # fit the cell, enlarging small renders too
            thumbnail = image.convert("RGB").resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), PIL.Image.LANCZOS
            )
            sheet.paste(thumbnail, (label_width + column * cell + 2, top + 2))
    return sheet


def generate(args: argparse.Namespace) -> int:
    """Runs the sweep; returns the number of inputs that failed (each reported with its reason)."""
    inputs = list_images(Path(args.input), "--input")
    lights = [Light(*values) for values in itertools.product(args.theta, args.phi, args.size)]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    pipe = ShadowPipeline.from_pretrained(args.model, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    background = image_to_tensor(PIL.Image.open(args.background), "--background")[:3] if args.background else None
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    sheet_rows, sheet_labels, failures = [], [], []
    for image_path in tqdm(inputs, desc="inputs", unit="image"):
        try:
            rgb, mask = pad_canvas(*load_cutout(image_path, find_mask(image_path, args.mask)), args.pad)
        except (ValueError, FileNotFoundError) as error:
            failures.append(str(error))
            logger.error("%s", error)
            continue
        prepared = pipe.encode_object(rgb[None], mask[None], height=args.resolution, width=args.resolution)
        canvas = background if background is not None else torch.ones_like(rgb)  # white by default
        row = []
        for light in lights:  # the object is encoded once; only the UNet and the decoder re-run per light
            generator = torch.Generator().manual_seed(args.seed)
            shadow = pipe(
                object_latents=prepared,
                theta=light.theta,
                phi=light.phi,
                size=light.size,
                num_inference_steps=args.num_inference_steps,
                generator=generator,
                output_type="pt",
            ).shadow_maps[0]  # [1,H,W]
            result = composite(rgb, mask, shadow, canvas, args.intensity)
            stem = f"{image_path.stem}_{light.tag}"
            shadow_map_to_pil(shadow).save(output_dir / f"{stem}_shadow.png")
            shadow_layer(shadow, args.intensity).save(output_dir / f"{stem}_layer.png")
            composite_image = PIL.Image.fromarray(
                (result.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype("uint8")
            )
            composite_image.save(output_dir / f"{stem}_composite.png")
            row.append(composite_image)
        sheet_rows.append(row)
        sheet_labels.append(image_path.stem)
    if len(lights) > 1 and sheet_rows:
        contact_sheet(sheet_rows, sheet_labels, [light.label for light in lights]).save(
            output_dir / "contact_sheet.png"
        )
    logger.info("Wrote %d of %d inputs to %s.", len(sheet_rows), len(inputs), output_dir)
    for failure in failures:
        logger.error("Failed: %s", failure)
    return len(failures)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        failures = generate(args)
    except (FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
