# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Generate shadows for cut-out objects with a trained ShadowPipeline.

    python generate_shadows.py --pretrained_model_name_or_path PATH_OR_REPO --input cutouts/ \\
        --theta 30 --phi 0 90 180 --size 2 --background beach.jpg --pad 0.25 --output_dir shadows_out

For each input (an RGBA cut-out, or an RGB image plus `--mask`) and each light, writes
`<stem>_<light>_shadow.png` (the raw map, 255 = full shadow), `<stem>_<light>_layer.png` (black with alpha =
intensity x shadow, for image editors) and `<stem>_<light>_composite.png`. Several values for a light flag make a
sweep (every combination) and a `contact_sheet.png` (rows: inputs; columns: lights).

Several lights at once (one shadow, physically composed; README "Several lights"), instead of a sweep:

    python generate_shadows.py --pretrained_model_name_or_path PATH --input cutouts/ --light 30,0,2 --light 20,150,6,0.5 --output_dir out
    python generate_shadows.py --pretrained_model_name_or_path PATH --input cutouts/ --environment sky.png --max_lights 3 --output_dir out

write `<stem>_lights_*.png` (or `<stem>_env_<map>_*.png`) and `<stem>_lights.json` (the lights, their relative
powers, and the unshadowed `ambient` fraction); `--save_light_maps` adds each light's own map.
"""

from __future__ import annotations

import pipeline_shadow  # noqa: F401  (first: it imports diffusers without the eager torchao import, see there)

# isort: split

import argparse
import contextlib
import itertools
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import torch
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from pipeline_shadow import (
    LOW_SKY_CHOICES,
    MASK_FILL,
    Light,
    ShadowPipeline,
    check_device,
    check_light,
    check_lights,
    check_resolution,
    composite,
    gray_to_tensor,
    image_to_tensor,
    lights_from_environment,
    shadow_layer,
    shadow_map_to_pil,
)

logger = logging.getLogger("generate_shadows")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class LightSetting:
    """One column of the output: a single light of the sweep, or several lights composed into one shadow."""

    tag: str
    label: str
    pipe_kwargs: dict  # theta/phi/size, or lights/ambient
    record: dict | None = None  # what <stem>_<tag>.json records for several lights


def sweep_settings(thetas, phis, sizes) -> list[LightSetting]:
    return [
        LightSetting(f"t{t:g}_p{p:g}_s{z:g}", f"theta {t:g} phi {p:g} size {z:g}", {"theta": t, "phi": p, "size": z})
        for t, p, z in itertools.product(thetas, phis, sizes)
    ]


def combined_setting(tag: str, label: str, lights: list[Light], ambient: float = 0.0) -> LightSetting:
    record = {"lights": [light.as_dict() for light in lights], "ambient": ambient}
    return LightSetting(tag, label, {"lights": lights, "ambient": ambient}, record)


SINGLE_LIGHT_DEFAULTS = {"theta": 30.0, "phi": 0.0, "size": 2.0}  # the one light when no light flag is given
# --pad enlarges each side by pad x its length: the canvas grows (1 + 2 pad)-fold per side and is then resized to the
# processing size, so at 4 the object spans a ninth of it (a few pixels at 128 px) and memory grows with the square.
PAD_MAX = 4.0


def _light_spec(text: str) -> Light:
    try:
        values = [float(v) for v in text.split(",")]
        if len(values) not in (3, 4):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected THETA,PHI,SIZE[,POWER] (e.g. 30,0,2 or 20,150,6,0.5), got {text!r}"
        ) from None
    return Light(*values)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pretrained_model_name_or_path",
        "--model",
        dest="model",
        required=True,
        help="A trained shadow pipeline: a training run's --output_dir (or its best/), a folder or a Hub id.",
    )
    parser.add_argument(
        "--input", required=True, help="An image or a folder of images (RGBA cut-outs, or RGB + --mask)."
    )
    parser.add_argument("--mask", default=None, help="A mask image, or a folder of masks with the same file stems.")
    parser.add_argument("--theta", type=float, nargs="+", default=None, help="Polar angle(s) in degrees, [0, 90); 30.")
    parser.add_argument("--phi", type=float, nargs="+", default=None, help="Azimuth(s) in degrees; 0 = light right; 0.")
    parser.add_argument(
        "--size", type=float, nargs="+", default=None, help="Area-light side(s) > 0, softer if bigger; 2."
    )
    parser.add_argument(
        "--light",
        type=_light_spec,
        action="append",
        default=None,
        metavar="THETA,PHI,SIZE[,POWER]",
        help="Repeat for several lights AT ONCE (POWER: relative total power, default 1): one composed shadow.",
    )
    parser.add_argument(
        "--environment",
        default=None,
        help="An equirectangular environment map (PNG/JPEG; HDR/EXR "
        "when OpenCV or imageio is installed) turned into --max_lights area lights.",
    )
    parser.add_argument("--max_lights", type=int, default=3, help="With --environment: at most this many lights.")
    parser.add_argument(
        "--low_sky",
        choices=LOW_SKY_CHOICES,
        default="ambient",
        help="With --environment: light below the trained theta <= 45 goes into an unshadowed ambient "
        "share, or is moved up to 45 degrees (clamp).",
    )
    parser.add_argument(
        "--save_light_maps",
        action="store_true",
        help="With --light/--environment: also save each light's own map as <stem>_<tag>_light<i>_shadow.png.",
    )
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
    for name, value in vars(args).items():  # NaN passes every `<` / `>` check below: refused once, for every flag
        if isinstance(value, float) and not math.isfinite(value):
            parser.error(f"--{name} must be a finite number, got {value}.")
    sweep = [f"--{name}" for name in ("theta", "phi", "size") if getattr(args, name) is not None]
    several = [flag for flag, value in (("--light", args.light), ("--environment", args.environment)) if value]
    if len(several) > 1:
        parser.error("Give --light (your own lights) or --environment (lights from a map), not both.")
    if several and sweep:
        parser.error(
            f"{several[0]} sets several lights at once; {'/'.join(sweep)} sweep ONE light: use one or the other."
        )
    if args.save_light_maps and not several:
        parser.error("--save_light_maps saves the maps of --light/--environment lights; add one of them.")
    if args.max_lights < 1:
        parser.error(f"--max_lights must be >= 1, got {args.max_lights}.")
    if not 0 <= args.pad <= PAD_MAX:
        parser.error(
            f"--pad must lie in [0, {PAD_MAX:g}] (a fraction of each side added around the image), got {args.pad:g}."
        )
    if args.intensity < 0:
        parser.error(f"--intensity must be >= 0, got {args.intensity}.")
    try:  # the pipeline's own rules, so a bad value fails before the model loads
        if args.resolution is not None:
            check_resolution(args.resolution, "--resolution")
        check_light(*(getattr(args, key) or [SINGLE_LIGHT_DEFAULTS[key]] for key in ("theta", "phi", "size")))
        if args.light:  # the pipeline's `lights=` rules: finite values and powers, powers >= 0, one that emits
            check_lights(args.light, batch_size=1)
        args.device = str(check_device(args.device))
    except ValueError as error:
        message = str(error).replace("`theta`", "--theta").replace("`size`", "--size").replace("`phi`", "--phi")
        parser.error(message.replace("`lights[", "`--light[").replace("`--device`", "--device"))
    return args


def list_images(path: Path, flag: str) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{flag} folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        return files
    if path.is_file():
        return [path]
    if path.exists():  # a FIFO or a device: reading it could block forever
        raise FileNotFoundError(f"{flag} {path} is not a regular file or a folder.")
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


# What PIL raises for a file it cannot decode: bad or truncated data, an unknown format, an image over PIL's pixel limit
# (a decompression bomb). Each is reported for its file; the other inputs are still written.
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError)


def open_image(path: Path, flag: str) -> PIL.Image.Image:
    """The decoded image at `path`; a ValueError naming the flag and the file when it is not a readable image (a
    non-regular file such as a FIFO is refused before opening, so a read never blocks)."""
    if not path.is_file():
        raise ValueError(f"{flag} {path} {'is not a regular file' if path.exists() else 'does not exist'}.")
    try:
        with PIL.Image.open(path) as image:
            image.load()
            return image
    except UNREADABLE_IMAGE_ERRORS as error:
        raise ValueError(f"{flag} {path} is not a readable image ({type(error).__name__}: {error}).") from None


def load_background(path: str | None) -> torch.Tensor | None:
    if path is None:
        return None
    return image_to_tensor(open_image(Path(path), "--background"), f"--background {path}")[:3]


def is_local_model(name_or_path: str, flag: str, what: str) -> bool:
    """Whether `name_or_path` means a local folder (it exists, starts with . / ~, or is not of the Hub's `owner/name`
    shape) rather than a Hub id; a local one that is not a folder raises FileNotFoundError naming `flag`."""
    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1
    if looks_local and not path.is_dir():
        raise FileNotFoundError(f"{flag} {name_or_path} is not a folder ({what} or a Hub id `owner/name`).")
    return looks_local


@contextlib.contextmanager
def named_load_errors(flag: str, name_or_path: str, what: str, error_type: type[Exception] = ValueError):
    """A model that fails to load inside (truncated weights, weights that do not fit the config, a folder of
    something else, a Hub id offline or not found) becomes one `error_type` naming `flag`, the model, what it should
    be and the first line of the reason, instead of diffusers' traceback. Shared by every script that loads one."""
    try:
        yield
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = "" if Path(name_or_path).expanduser().is_dir() else " (a Hub id: offline, or not found?)"
        raise error_type(f"Cannot load {flag} {name_or_path} as {what}{where}: {reason}") from None


def load_pipeline(model: str, dtype: torch.dtype, device: str, flag: str = "--model") -> ShadowPipeline:
    """ShadowPipeline.from_pretrained with errors that say which `flag` failed and why, instead of a raw OSError
    about connecting to the Hub for a local path that does not exist. Shared by the scripts that load a pipeline."""
    is_local_model(model, flag, "a trained shadow pipeline folder")
    with named_load_errors(flag, model, "a shadow pipeline"):
        return ShadowPipeline.from_pretrained(model, torch_dtype=dtype).to(device)


def load_vae(name_or_path: str, flag: str = "--vae") -> AutoencoderKL:
    """An AutoencoderKL from a VAE folder (train_vae.py's --output_dir), a pipeline folder (its vae/) or a Hub id,
    with errors that name `flag`. Shared by the scripts that take a VAE."""
    looks_local = is_local_model(str(name_or_path), flag, "a VAE folder or a pipeline folder with vae/")
    path = Path(name_or_path).expanduser()
    in_pipeline = looks_local and (path / "vae" / "config.json").is_file() and not (path / "config.json").is_file()
    with named_load_errors(flag, str(name_or_path), "a VAE (an AutoencoderKL folder or a pipeline folder with vae/)"):
        return AutoencoderKL.from_pretrained(
            path if looks_local else name_or_path, subfolder="vae" if in_pipeline else None
        )


def prepare_output_dir(path: str, flag: str = "--output_dir") -> Path:
    """The folder a script writes into, created now (before any model loads), or a ValueError naming `flag`: a file
    in the way, or a folder that cannot be made. Shared by the scripts' --output_dir and --latent_cache_dir."""
    output_dir = Path(path)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{flag} {output_dir} exists and is not a folder.")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{flag} {output_dir} cannot be created: {error}") from None
    return output_dir


def load_cutout(image_path: Path, mask_path: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ([3,H,W] RGB in [0,1], [1,H,W] mask). Errors name the file."""
    image = open_image(image_path, "--input")
    rgb = image_to_tensor(image, str(image_path))
    if mask_path is not None:
        mask = gray_to_tensor(open_image(mask_path, "--mask"), str(mask_path))
    elif rgb.shape[0] == 4:
        mask = rgb[3:4]
    else:
        raise ValueError(
            f"{image_path} has no alpha channel (PIL mode {image.mode}): give an RGBA cut-out, or a --mask for it."
        )
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


def light_settings(args: argparse.Namespace) -> list[LightSetting]:
    if args.light:
        label = " + ".join(f"t{x.theta:g} p{x.phi:g} s{x.size:g} w{x.power:g}" for x in args.light)
        return [combined_setting("lights", label, list(args.light))]
    if args.environment:
        found = lights_from_environment(args.environment, max_lights=args.max_lights, low_sky=args.low_sky)
        logger.info("%s -> %s, ambient %.3f", args.environment, found.lights, found.ambient)
        label = f"{Path(args.environment).stem}: {len(found.lights)} lights, ambient {found.ambient:.2f}"
        record = combined_setting(f"env_{Path(args.environment).stem}", label, found.lights, found.ambient)
        record.record["environment"] = str(args.environment)
        return [record]
    return sweep_settings(*(getattr(args, key) or [SINGLE_LIGHT_DEFAULTS[key]] for key in ("theta", "phi", "size")))


def generate(args: argparse.Namespace) -> int:
    """Runs the sweep; returns the number of inputs that failed (each reported with its reason)."""
    inputs = list_images(Path(args.input), "--input")
    lights = light_settings(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    output_dir = prepare_output_dir(args.output_dir)
    background = load_background(args.background)
    pipe = load_pipeline(args.model, dtype, device)
    pipe.set_progress_bar_config(disable=True)

    sheet_rows, sheet_labels, failures = [], [], []
    for image_path in tqdm(inputs, desc="inputs", unit="image"):
        try:
            rgb, mask = pad_canvas(*load_cutout(image_path, find_mask(image_path, args.mask)), args.pad)
            prepared = pipe.encode_object(rgb[None], mask[None], height=args.resolution, width=args.resolution)
        except (ValueError, FileNotFoundError) as error:
            failures.append(f"{image_path}: {error}" if str(image_path) not in str(error) else str(error))
            logger.error("%s", failures[-1])
            continue
        canvas = background if background is not None else torch.ones_like(rgb)  # white by default
        row = []
        for light in lights:  # the object is encoded once; only the UNet and the decoder re-run per light
            generator = torch.Generator().manual_seed(args.seed)
            several = light.record is not None
            output = pipe(
                object_latents=prepared,
                **light.pipe_kwargs,
                num_inference_steps=args.num_inference_steps,
                generator=generator,
                output_type="pt",
                **({"return_light_maps": args.save_light_maps} if several else {}),
            )
            shadow = output.shadow_maps[0]  # [1,H,W]
            result = composite(rgb, mask, shadow, canvas, args.intensity)
            stem = f"{image_path.stem}_{light.tag}"
            if several:
                (output_dir / f"{stem}.json").write_text(json.dumps(light.record, indent=1) + "\n")
                for i, light_map in enumerate(output.light_maps[0] if args.save_light_maps else []):
                    shadow_map_to_pil(light_map).save(output_dir / f"{stem}_light{i}_shadow.png")
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
