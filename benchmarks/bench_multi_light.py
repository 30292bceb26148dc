# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Several lights: how well single-light maps compose into the map of all lights, on renderer data, and the README's
contact sheet. Runs in the project's environment (no Blender): it reads a folder rendered with
`render_shadow_dataset.py --light_sets ... --single_light_maps` (see recipes/multi_light.sh).

    python benchmarks/bench_multi_light.py environment-lights          # the example sky's lights, as a --light_sets set
    python benchmarks/bench_multi_light.py composition --data DIR      # composition error table, no model
    python benchmarks/bench_multi_light.py sheet --data DIR --model models/shadow-small --out docs/images/x.png
    python benchmarks/bench_multi_light.py irradiance --data DIR   # DIR from benchmarks/render_ground_irradiance.py

`irradiance` compares Blender's own unoccluded ground irradiance (rendered one light at a time) with
`area_light_irradiance` over the ground within 4 units of the object (where shadows fall): one scale factor for
every light (Blender's watts vs ours; the same for all sizes if "power" is total power), the shape error after it,
and how far the far-field weight power cos(theta) / (pi r^2) is from the rendered E over that region.

`composition` composes the TRUE single-light maps four ways and reports the RMSE against the TRUE multi-light map
(whole image, and over the pixels where any map is > 0.02): with the exact per-pixel irradiance fractions
E_i(p) / sum_j E_j(p) (each pixel's ground point from the camera in the metadata: the physics, only Monte-Carlo noise
should remain), with the pipeline's coefficients taken where each light's shadow falls (object height estimated from
the mask, as at inference), with weights taken at the object's foot, and with the far-field weights power cos(theta).
It also reports how much E_i varies over light i's own shadow (the 90th percentile of |E_i(p) / E_i(0) - 1|).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import render_shadow_dataset as rsd  # noqa: E402
from generate_shadows import load_pipeline  # noqa: E402
from pipeline_shadow import (  # noqa: E402
    Light,
    area_light_irradiance,
    compose_light_maps,
    equirect_directions,
    estimate_object_height,
    irradiance_fractions,
    light_coefficients,
    light_weights,
    lights_from_environment,
    point_light_irradiance,
)

FLOOR = (0.80, 0.76, 0.70)  # the renderer's contact-sheet floor


def example_sky(height: int = 128, width: int = 256) -> np.ndarray:
    """A float (HDR-like) equirectangular sky: a sun (3 degrees, radiance 60) at theta 35, phi 220 and a blue sky
    brighter toward the horizon over a dark ground."""
    theta, phi = equirect_directions(height, width)
    grid_theta, grid_phi = np.meshgrid(theta, phi, indexing="ij")
    t, p = np.radians(grid_theta), np.radians(grid_phi)
    directions = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1)
    sky = np.empty((height, width, 3))
    sky[:] = [0.35, 0.5, 0.8]
    sky *= (0.6 + 0.4 * np.clip(grid_theta / 90.0, 0.0, 1.0))[..., None]
    sky[grid_theta > 90] = [0.25, 0.22, 0.2]
    sun_theta, sun_phi = math.radians(35.0), math.radians(220.0)
    sun = np.array(
        [math.sin(sun_theta) * math.cos(sun_phi), math.sin(sun_theta) * math.sin(sun_phi), math.cos(sun_theta)]
    )
    sky[np.degrees(np.arccos(np.clip(directions @ sun, -1.0, 1.0))) < 3.0] = [60.0, 58.0, 54.0]
    return sky


def environment_light_set() -> tuple[str, float]:
    """The example sky's lights as a `--light_sets` argument (1 decimal) and its ambient fraction."""
    found = lights_from_environment(example_sky(), max_lights=3)
    text = ";".join(f"{x.theta:.1f},{x.phi:.1f},{x.size:.1f},{x.power:.2f}" for x in found.lights)
    return text, found.ambient


def light_set_metadata(data: Path) -> dict:
    """metadata.json of a folder rendered with `--light_sets ... --single_light_maps` (recipes/multi_light.sh), or a
    ValueError naming --data and what it should be."""
    what = "a folder rendered by render_shadow_dataset.py --light_sets ... --single_light_maps (recipes/multi_light.sh)"
    path = data / "metadata.json"
    if not path.is_file():
        raise ValueError(f"--data {data} has no metadata.json: give {what}.")
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--data {path} cannot be read as JSON: {error}") from None
    if not isinstance(metadata, dict) or not any(
        isinstance(m, dict) and m.get("lights") and m.get("light_shadows") for m in metadata.values()
    ):
        raise ValueError(f"--data {data} holds no light-set sample with per-light shadow maps: give {what}.")
    return metadata


def _samples(data: Path):
    for key, metadata in sorted(light_set_metadata(data).items()):
        lights = [Light(m["theta"], m["phi"], m["size"], m["power"]) for m in metadata["lights"]]
        singles = np.stack([rsd.load_gray(data / p) for p in metadata["light_shadows"]])
        yield key, metadata, lights, rsd.load_gray(data / "shadows" / f"{key}.png"), singles


def composition(data: Path) -> dict:
    rows = {name: [] for name in ("pixel_exact", "shadow_centre", "foot", "far_field")}
    in_shadow = {name: [] for name in rows}
    variation = []
    for key, metadata, lights, combined, singles in _samples(data):
        if len(lights) < 2:
            continue
        mask = rsd.load_gray(data / "masks" / f"{key}.png")
        points = rsd.pixel_ground_points(metadata["camera"])
        flat = np.nan_to_num(points).reshape(-1, 3)
        irradiance = np.stack([area_light_irradiance(flat, light).reshape(mask.shape) for light in lights])
        irradiance[:, np.isnan(points[..., 0]) | (irradiance.sum(0) <= 0)] = 1.0  # sky: no shadow there anyway
        far = np.array([point_light_irradiance(light) for light in lights])
        coefficients = {
            "pixel_exact": irradiance_fractions(irradiance),
            "shadow_centre": light_coefficients(lights, estimate_object_height(mask)),
            "foot": light_coefficients(lights, 0.0),
            "far_field": far / far.sum(),
        }
        region = (combined > 0.02) | (singles.max(0) > 0.02)
        for name, c in coefficients.items():
            error = compose_light_maps(singles, c) * (mask == 0) - combined
            rows[name].append(float(np.sqrt((error**2).mean())))
            in_shadow[name].append(float(np.sqrt((error[region] ** 2).mean())) if region.any() else 0.0)
        foot = light_weights(lights)
        for i in range(len(lights)):
            inside = singles[i] > 0.05
            if inside.any():
                variation.append(float(np.percentile(np.abs(irradiance[i][inside] / foot[i] - 1.0), 90)))
    return {
        "samples": len(rows["foot"]),
        "rmse_mean": {k: float(np.mean(v)) for k, v in rows.items()},
        "rmse_max": {k: float(np.max(v)) for k, v in rows.items()},
        "rmse_in_shadow_mean": {k: float(np.mean(v)) for k, v in in_shadow.items()},
        "irradiance_variation_p90_over_own_shadow": {
            "median": float(np.median(variation)),
            "max": float(np.max(variation)),
        },
    }


def _same_lights(lights: list[Light], text: str, tolerance: float = 0.5) -> bool:
    """Whether `lights` are the `--light_sets` set `text` (to `tolerance` in every value)."""
    other = [[float(v) for v in part.split(",")] for part in text.split(";")]
    return len(other) == len(lights) and all(
        np.allclose([x.theta, x.phi, x.size, x.power], values, atol=tolerance) for x, values in zip(lights, other)
    )


def _square_crop(region: np.ndarray, margin: int = 6) -> tuple[slice, slice]:
    """A square window around the True pixels of `region` (object and shadows), so that the sheet shows them large."""
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    side = min(max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 + 2 * margin, *region.shape)
    top = int(np.clip((rows[0] + rows[-1] - side) // 2, 0, region.shape[0] - side))
    left = int(np.clip((cols[0] + cols[-1] - side) // 2, 0, region.shape[1] - side))
    return slice(top, top + side), slice(left, left + side)


def irradiance(data: Path, radius: float = 4.0) -> dict:
    rows, ratios = [], []
    found = sorted(data.glob("*.npz"))
    if not found:
        raise ValueError(
            f"--data {data} holds no <light>.npz: give benchmarks/render_ground_irradiance.py's --output_dir."
        )
    for path in found:
        saved = np.load(path)
        theta, phi, size = (float(v) for v in saved["light"])
        light = Light(theta, phi, size, power=500.0)  # the renderer's default watts
        points = saved["points"]
        near = ~np.isnan(points[..., 0]) & (np.linalg.norm(np.nan_to_num(points)[..., :2], axis=-1) <= radius)
        rendered = math.pi * saved["radiance"][near]  # albedo 1: E = pi x radiance
        exact = area_light_irradiance(points[near], light)
        ratios.append(float(np.median(rendered / exact)))
        rows.append((path.stem, rendered, exact, point_light_irradiance(light)))
    scale = float(np.median(ratios))
    lights = {}
    for (name, rendered, exact, far), ratio in zip(rows, ratios):
        shape = rendered / (scale * exact) - 1.0
        far_error = far * scale / rendered - 1.0
        lights[name] = {
            "scale_ratio": ratio / scale,
            "shape_error_rms": float(np.sqrt((shape**2).mean())),
            "shape_error_p95": float(np.percentile(np.abs(shape), 95)),
            "far_field_error_rms": float(np.sqrt((far_error**2).mean())),
            "far_field_error_max": float(np.abs(far_error).max()),
            "pixels": int(len(rendered)),
        }
    return {"blender_over_formula_scale": scale, "radius": radius, "lights": lights}


def _tile(rgb: np.ndarray, size: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(rgb).resize((size, size), PIL.Image.LANCZOS)


def contact_sheet(data: Path, model: str, out: Path, object_index: int = 0, cell: int = 128) -> Path:
    """One object under each light set of `data` (columns; the set equal to the example sky's lights is labelled as
    the environment and gets its ambient share): renderer ground truth above, the model's composed prediction below."""
    light_set_metadata(data)  # the data's mistakes before the model loads
    pipe = load_pipeline(model, torch.float32, "cpu")
    pipe.set_progress_bar_config(disable=True)
    environment, ambient = environment_light_set()
    columns, extent = [], []
    for key, metadata, lights, combined, _ in _samples(data):
        if metadata["object_index"] != object_index:
            continue
        is_environment = _same_lights(lights, environment)
        share = ambient if is_environment else 0.0
        with PIL.Image.open(data / "objects" / f"{key}.png") as image:
            object_rgb = np.array(image.convert("RGB"))
        mask = rsd.load_gray(data / "masks" / f"{key}.png")
        truth = (1.0 - share) * combined  # the renderer's lights; the ambient share lights the ground unshadowed
        prediction = pipe(
            torch.from_numpy(object_rgb).permute(2, 0, 1).float() / 255.0,
            mask=torch.from_numpy(mask)[None],
            lights=lights,
            ambient=share,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).shadow_maps[0]
        label = "environment" if is_environment else f"{len(lights)} light{'s' if len(lights) > 1 else ''}"
        columns.append((label, [rsd.composite(object_rgb, mask, m, FLOOR) for m in (truth, prediction)]))
        extent.append((mask > 0) | (truth > 0.15) | (prediction > 0.15))
    if not columns:
        raise SystemExit(f"No light-set sample of object {object_index} in {data}.")
    crop = _square_crop(np.any(extent, axis=0))
    columns = [(label, [tile[crop] for tile in tiles]) for label, tiles in columns]
    margin, header = 92, 16
    sheet = PIL.Image.new("RGB", (margin + cell * len(columns), header + 2 * cell), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    for r, name in enumerate(("renderer", "model")):
        draw.text((4, header + r * cell + cell // 2 - 5), name, fill=(0, 0, 0))
    for c, (label, tiles) in enumerate(columns):
        draw.text((margin + c * cell + 4, 2), label, fill=(0, 0, 0))
        for r, tile in enumerate(tiles):
            sheet.paste(_tile(tile, cell), (margin + c * cell, header + r * cell))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("environment-lights", help="print the example sky's lights as a --light_sets set")
    table = commands.add_parser("composition", help="composition error table of a rendered light-set folder")
    table.add_argument("--data", type=Path, required=True)
    table.add_argument("--output_json", type=Path, default=None)
    check = commands.add_parser("irradiance", help="Blender's ground irradiance against area_light_irradiance")
    check.add_argument("--data", type=Path, required=True)
    sheet = commands.add_parser("sheet", help="the README's contact sheet")
    sheet.add_argument("--data", type=Path, required=True)
    sheet.add_argument(
        "--pretrained_model_name_or_path", "--model", dest="model", default=str(REPO_ROOT / "models" / "shadow-small")
    )
    sheet.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "images" / "multi_light_contact_sheet.png")
    sheet.add_argument("--object_index", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "environment-lights":
        text, ambient = environment_light_set()
        print(text)
        print(f"ambient {ambient:.3f}", file=sys.stderr)
    elif args.command == "composition":
        result = composition(args.data)
        print(json.dumps(result, indent=1))
        if args.output_json:
            args.output_json.write_text(json.dumps(result, indent=1) + "\n")
    elif args.command == "irradiance":
        print(json.dumps(irradiance(args.data), indent=1))
    else:
        print(contact_sheet(args.data, args.model, args.out, args.object_index))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:
        sys.exit(f"bench_multi_light.py: error: {error}")
