# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Tiny synthetic datasets in every layout `dataset_loading.py` reads, for tests of the loader, training and evaluation.

Content is plausible, not rendered: an object blob (colored, on a gray background that the loader must whiten), its
binary mask, and a shadow blob cast from the object's ground contact point AWAY from the light, as docs/design.md §2 has
it (phi = 0: light on the image right, shadow to the LEFT; larger theta: longer shadow; larger size: softer edge).

    from data_factory import make_custom_dataset, make_benchmark_tar
    root = make_custom_dataset(tmp_path / "data", n=8, size=64)
    tar = make_benchmark_tar(tmp_path / "benchmark.tar", n_per_track=2, size=64)
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import PIL.Image

THETAS = tuple(range(5, 50, 5))  # 5..45, the paper's grid
PHIS = tuple(range(0, 360, 20))
SIZES = (2, 4, 8)
BENCHMARK_TRACK_FOLDERS = {
    "softness": "softness_control",
    "horizontal": "direction_control_horz",
    "vertical": "direction_control_vert",
}


def synthetic_sample(
    theta: float, phi: float, size: float, image_size: int | tuple[int, int] = 64, seed: int = 0
) -> tuple[PIL.Image.Image, PIL.Image.Image, PIL.Image.Image]:
    """(object RGB, mask L, shadow map L) for one light. `image_size` is an int (square) or (height, width)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    center_col, center_row = width / 2.0, 0.55 * height
    half_width, half_height = 0.12 * min(width, height), 0.2 * height
    mask = ((cols - center_col) / half_width) ** 2 + ((rows - center_row) / half_height) ** 2 <= 1.0

    # Shadow: a capsule from the ground contact point along the ground direction opposite to the light, seen by a
    # camera on the -y side (image x = world x, image up = world +y foreshortened by half).
    contact_col, contact_row = center_col, center_row + half_height
    length = min(2.0 * half_height * math.tan(math.radians(theta)), 0.45 * min(width, height))
    phi_rad = math.radians(phi)
    end_col = contact_col - length * math.cos(phi_rad)
    end_row = contact_row + 0.5 * length * math.sin(phi_rad)  # world -y (toward the camera) is image down
    seg_col, seg_row = end_col - contact_col, end_row - contact_row
    seg_len2 = seg_col**2 + seg_row**2
    if seg_len2 > 0:
        along = np.clip(((cols - contact_col) * seg_col + (rows - contact_row) * seg_row) / seg_len2, 0.0, 1.0)
    else:
        along = np.zeros_like(cols)
    distance = np.hypot(cols - (contact_col + along * seg_col), rows - (contact_row + along * seg_row))
    core, softness = 0.1 * min(width, height), max(0.5, 0.01 * size * min(width, height))
    shadow = np.clip((core + softness - distance) / (2.0 * softness), 0.0, 1.0) * 0.85
    shadow[mask] = 0.0  # 0 inside the object (docs/design.md §8)

    color = rng.uniform(0.1, 0.9, size=3)
    rgb = np.empty((height, width, 3))
    rgb[:] = 0.5 + rng.normal(0.0, 0.05, size=(height, width, 1))  # a gray, noisy background the loader must whiten
    rgb[mask] = color
    object_image = PIL.Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    mask_image = PIL.Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    shadow_image = PIL.Image.fromarray(np.round(shadow * 255.0).astype(np.uint8), mode="L")
    return object_image, mask_image, shadow_image


def random_light(rng: np.random.Generator) -> dict[str, int]:
    return {"theta": int(rng.choice(THETAS)), "phi": int(rng.choice(PHIS)), "size": int(rng.choice(SIZES))}


def make_custom_dataset(
    root: str | Path,
    n: int = 8,
    size: int | tuple[int, int] = 64,
    with_object_id: bool = True,
    metadata_format: str = "json",
    seed: int = 0,
) -> Path:
    """DATA/objects, masks, shadows (PNG, stems sample_000 ...) + metadata.json (or .jsonl). With `with_object_id`,
    two consecutive samples share an `object_id` (the same object under two lights), so a split can leak objects."""
    if metadata_format not in ("json", "jsonl"):
        raise ValueError(f"`metadata_format` must be 'json' or 'jsonl', got {metadata_format!r}.")
    root = Path(root)
    for folder in ("objects", "masks", "shadows"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    metadata = {}
    for index in range(n):
        stem = f"sample_{index:03d}"
        light = random_light(rng)
        object_image, mask, shadow = synthetic_sample(**light, image_size=size, seed=seed * 1000 + index)
        object_image.save(root / "objects" / f"{stem}.png")
        mask.save(root / "masks" / f"{stem}.png")
        shadow.save(root / "shadows" / f"{stem}.png")
        metadata[stem] = {**light, **({"object_id": f"object_{index // 2:03d}"} if with_object_id else {})}
    if metadata_format == "json":
        (root / "metadata.json").write_text(json.dumps(metadata, indent=1))
    else:
        lines = [json.dumps({"file_name": f"{stem}.png", **entry}) for stem, entry in metadata.items()]
        (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def benchmark_lights(n_per_track: int) -> list[tuple[str, str, dict]]:
    """(key, track, metadata) following the benchmark's tracks (docs/design.md §4)."""
    samples = []
    for index in range(n_per_track):
        samples.append(("softness", index, {"theta": 30, "phi": 0, "size": SIZES[index % 3]}))
        samples.append(("horizontal", index, {"theta": 35, "phi": (20 * index) % 360, "size": 2}))
        samples.append(("vertical", index, {"theta": min(45, 5 * (index + 1)), "phi": 0, "size": 2}))
    return [(f"{BENCHMARK_TRACK_FOLDERS[track]}/{index:03d}", track, light) for track, index, light in samples]


def _png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def benchmark_files(n_per_track: int = 2, size: int = 64, track_in_metadata: bool = False) -> dict[str, bytes]:
    """{member name: bytes} of a benchmark webdataset: <key>.image.png, .mask.png, .shadow.png, .metadata.json."""
    files = {}
    for number, (key, track, light) in enumerate(benchmark_lights(n_per_track)):
        object_image, mask, shadow = synthetic_sample(**light, image_size=size, seed=number)
        metadata = {**light, **({"track": track} if track_in_metadata else {})}
        files[f"{key}.image.png"] = _png_bytes(object_image)
        files[f"{key}.mask.png"] = _png_bytes(mask)
        files[f"{key}.shadow.png"] = _png_bytes(shadow)
        files[f"{key}.metadata.json"] = json.dumps(metadata).encode()
    return files


def write_tar(path: str | Path, files: dict[str, bytes], compression: str = "") -> Path:
    """A tar of `files` in the given order (`compression`: "", "gz", "bz2" or "xz")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode=f"w:{compression}") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            archive.addfile(info, io.BytesIO(data))
    return path


def make_benchmark_tar(
    path: str | Path, n_per_track: int = 2, size: int = 64, track_in_metadata: bool = False, compression: str = ""
) -> Path:
    """A webdataset tar in the benchmark's format with `n_per_track` samples in each of the three tracks."""
    return write_tar(path, benchmark_files(n_per_track, size, track_in_metadata), compression)


def make_benchmark_folder(
    root: str | Path, n_per_track: int = 2, size: int = 64, track_in_metadata: bool = False
) -> Path:
    """The same samples as `make_benchmark_tar`, extracted into a folder."""
    root = Path(root)
    for name, data in benchmark_files(n_per_track, size, track_in_metadata).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def make_hf_dataset(
    root: str | Path,
    n: int = 8,
    size: int = 64,
    with_object_id: bool = True,
    columns: dict[str, str] | None = None,
    splits: tuple[str, ...] | None = None,
    seed: int = 0,
) -> Path:
    """A `datasets` dataset with Image features (object_image, mask, shadow_map) and theta/phi/size/object_id/id
    columns, written with `save_to_disk` (a DatasetDict when `splits` is given). `columns` renames columns."""
    import datasets

    rng = np.random.default_rng(seed)
    data: dict[str, list] = {name: [] for name in ("id", "object_image", "mask", "shadow_map", "theta", "phi", "size")}
    if with_object_id:
        data["object_id"] = []
    for index in range(n):
        light = random_light(rng)
        object_image, mask, shadow = synthetic_sample(**light, image_size=size, seed=seed * 1000 + index)
        data["id"].append(f"sample_{index:03d}")
        data["object_image"].append(object_image)
        data["mask"].append(mask)
        data["shadow_map"].append(shadow)
        for key, value in light.items():
            data[key].append(float(value))
        if with_object_id:
            data["object_id"].append(f"object_{index // 2:03d}")
    features = {
        "id": datasets.Value("string"),
        "object_image": datasets.Image(),
        "mask": datasets.Image(),
        "shadow_map": datasets.Image(),
        "theta": datasets.Value("float32"),
        "phi": datasets.Value("float32"),
        "size": datasets.Value("float32"),
    }
    if with_object_id:
        features["object_id"] = datasets.Value("string")
    dataset = datasets.Dataset.from_dict(data, features=datasets.Features(features))
    if columns:
        dataset = dataset.rename_columns(columns)
    if splits:
        dataset = datasets.DatasetDict({split: dataset for split in splits})
    dataset.save_to_disk(str(root))
    return Path(root)
