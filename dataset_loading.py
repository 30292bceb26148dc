# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""The one data path that training, evaluation and the demo share (docs/design.md §2, §4, §8).

Three sources, one batch format:

- `custom`: a folder `DATA/` with `objects/*.png`, `masks/*.png`, `shadows/*.png` (same file stem in all three) and
  `metadata.json` = `{stem: {"theta": deg, "phi": deg, "size": s, "object_id": ...}}`, or `metadata.jsonl` (one
  object per line with `file_name` = the file's name inside `objects/`).
- `hf`: any Hugging Face dataset by Hub id or local path (`datasets.load_dataset`), or a folder written by
  `save_to_disk` (`datasets.load_from_disk`).
- `benchmark`: the public test set `jasperai/controllable-shadow-generation-benchmark`, a webdataset tar (or its
  extracted folder) of `<key>.image.png`, `<key>.mask.png`, `<key>.shadow.png`, `<key>.metadata.json`. It is a TEST
  set: it is read whole, in key order, never shuffled, and training on it is warned about loudly.

    from dataset_loading import ShadowDataSource, create_dataloaders, open_shadow_dataset
    source = ShadowDataSource("custom", data_dir="DATA")  # or dataset_type="hf", dataset_name=..., *_column=...
    train_loader, val_loader = create_dataloaders(source, batch_size=2, num_workers=0, image_size=512)
    batch = next(iter(train_loader))
    # object_image [2,3,512,512] in [-1,1] (white outside the mask), mask [2,1,512,512] in [0,1],
    # shadow_map [2,1,512,512] in [0,1], light [2,3] = (theta, phi, size) float32 as the UNet takes it, the same
    # values as theta/phi/size [2], id: list of stems, track: list (None here)

    dataset = open_shadow_dataset(source, image_size=512)  # scanned and checked once ...
    train_loader, val_loader = create_dataloaders(dataset, batch_size=2)  # ... and not again

Every problem in a dataset is reported at once, each naming its file or key:

    python dataset_loading.py verify DATA                        # exit status 1 on any error; warnings alone pass
    python dataset_loading.py verify controllable-shadow-generation-benchmark.tar

Optionally the VAE latents are cached on disk once (safetensors shards keyed by dataset fingerprint + VAE identity +
resolution + dtype) and training reads latents instead of decoding PNGs and running the VAE every step:

    python dataset_loading.py cache --data_dir DATA --pretrained_model_name_or_path SDXL --resolution 512 \\
        --latent_cache_dir latent_cache --random_flip
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import re
import shutil
import sys
import tarfile
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from pipeline_shadow import (
    DEFAULT_RESOLUTION,
    GRAY_MODES,
    LIGHT_KEYS,
    MASK_CHANNELS,
    MIN_IMAGE_SIDE,
    SHADOW_FILL,
    THETA_MAX_DEG,
    check_device,
    check_image_extent,
    check_resolution,
    encode_latents,
    flip_mask_latent,
    gray_to_tensor,
    image_to_tensor,
    mask_samples_per_side,
    mask_to_latent,
    not_gray_reason,
    preprocess_object,
    resize_and_pad,
    shadow_to_vae_input,
    wrap_phi,
)

logger = logging.getLogger(__name__)

DatasetType = Literal["custom", "hf", "benchmark"]
DATASET_TYPES = ("custom", "hf", "benchmark")
VerifyLevel = Literal["metadata", "quick", "full"]
VERIFY_LEVELS = ("metadata", "quick", "full")  # metadata only / + image headers and sizes / + decode and pixel values

BENCHMARK_HUB_ID = "jasperai/controllable-shadow-generation-benchmark"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
ROLES = ("object", "mask", "shadow")
CUSTOM_FOLDERS = {"object": "objects", "mask": "masks", "shadow": "shadows"}
BENCHMARK_SUFFIXES = {"image": "object", "mask": "mask", "shadow": "shadow"}  # `<key>.<suffix>.png` -> role
BENCHMARK_METADATA_SUFFIX = "metadata"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

# The accepted spellings of each light key in benchmark metadata and Hugging Face columns, in order of preference
# (compared case-insensitively): all mean the same convention, degrees from +z, degrees from +x, the square light's
# side (docs/design.md §2). Spellings that name another convention are refused with the reason, never guessed.
LIGHT_KEY_ALIASES = {
    "theta": ("theta", "theta_deg", "light_theta", "polar", "polar_deg", "polar_angle"),
    "phi": ("phi", "phi_deg", "light_phi", "azimuth", "azimuth_deg", "azimuth_angle"),
    "size": ("size", "light_size", "area_light_size"),
}
_FROM_HORIZON = "it is measured from the horizon (theta = 90 - it), not from +z"
REFUSED_LIGHT_KEYS = {
    "theta": {
        "elevation": _FROM_HORIZON,
        "elevation_deg": _FROM_HORIZON,
        "altitude": _FROM_HORIZON,
        "theta_rad": "it is in radians; theta is read in degrees",
        "polar_rad": "it is in radians; theta is read in degrees",
    },
    "phi": {
        "phi_rad": "it is in radians; phi is read in degrees",
        "azimuth_rad": "it is in radians; phi is read in degrees",
    },
    "size": {
        "radius": "a radius is not the square light's side",
        "light_radius": "a radius is not the square light's side",
    },
}

# Candidate column names of a Hugging Face dataset, in order of preference, and the option that overrides each.
HF_COLUMN_DEFAULTS = {
    "object": ("object_image", "image", "object"),
    "mask": ("mask", "object_mask"),
    "shadow": ("shadow_map", "shadow"),
    **LIGHT_KEY_ALIASES,
}
HF_COLUMN_OPTIONS = {
    "object": "image_column",
    "mask": "mask_column",
    "shadow": "shadow_column",
    "theta": "theta_column",
    "phi": "phi_column",
    "size": "size_column",
}
HF_ID_COLUMNS = ("id", "key", "__key__", "file_name", "name")

SOFT_MASK_TOLERANCE = 1.0 / 255.0
INVERTED_SHADOW_MEAN = 0.5  # a shadow map (1 = full shadow) whose mean exceeds this most likely has 0 = shadow

LATENT_CACHE_FORMAT = 1  # bump whenever the preprocessing or the shard layout changes: every old cache then misses


# --------------------------------------------------------------------------------------------------------------------
# 1. Problems, reports and errors
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One finding of a dataset check. `kind` is a stable identifier (e.g. `missing_file`), `where` the file or key."""

    kind: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class VerificationReport:
    """All problems of one dataset. Errors make it unusable; warnings are legal-but-odd data."""

    source: str
    dataset_type: str
    level: str = "full"
    num_samples: int = 0
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # facts about the data worth a line (e.g. samples per track)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, kind: str, where: str, message: str) -> None:
        self.errors.append(Problem(kind, where, message))

    def warn(self, kind: str, where: str, message: str) -> None:
        self.warnings.append(Problem(kind, where, message))

    def kinds(self) -> set[str]:
        return {problem.kind for problem in self.errors + self.warnings}

    def format(self, max_warnings_per_kind: int | None = 10) -> str:
        """Every error, and warnings grouped by kind (at most `max_warnings_per_kind` each; None shows all)."""
        status = "OK" if self.ok else "FAILED"
        lines = [
            f"Dataset check of {self.source} ({self.dataset_type}, {self.level} check): {status}, "
            f"{self.num_samples} sample(s) checked, {len(self.errors)} error(s), {len(self.warnings)} warning(s)."
        ]
        lines.extend(f"  {detail}" for detail in self.details)
        if self.errors:
            lines.append("Errors:")
            lines.extend(f"  - {problem}" for problem in self.errors)
        if self.warnings:
            lines.append("Warnings:")
            shown: dict[str, int] = {}
            for problem in self.warnings:
                shown[problem.kind] = shown.get(problem.kind, 0) + 1
                if max_warnings_per_kind is None or shown[problem.kind] <= max_warnings_per_kind:
                    lines.append(f"  - {problem}")
            for kind, count in shown.items():
                if max_warnings_per_kind is not None and count > max_warnings_per_kind:
                    lines.append(f"  ... and {count - max_warnings_per_kind} more `{kind}` warning(s)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


class DatasetVerificationError(ValueError):
    """Raised by `create_dataloaders` / `open_shadow_dataset` when a dataset has errors; lists all of them."""

    def __init__(self, report: VerificationReport):
        self.report = report
        hint = f"Fix these and rerun, or list them with `python dataset_loading.py verify {report.source}`."
        super().__init__(f"{report.format()}\n{hint}")


class SampleLoadError(ValueError):
    """A sample that passed the quick checks could not be loaded (e.g. a truncated PNG). Never skipped silently."""


class _UnreadableImage(Exception):
    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def _describe_exception(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------------------------
# 2. Records, light values and image sources
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleRecord:
    """The light and identity of one sample; its images live in the dataset's source at the same index."""

    id: str
    theta: float
    phi: float  # raw, wrapped into [0, 360) when loaded
    size: float
    object_id: str | None = None
    track: str | None = None
    extra: dict = field(default_factory=dict)  # metadata the loader does not use (e.g. the benchmark's `r`), kept


def _parse_light(metadata: dict, where: str, report: VerificationReport) -> tuple[float, float, float] | None:
    """theta, phi, size from one metadata entry, or None after reporting every problem with them."""
    values: dict[str, float] = {}
    for key in LIGHT_KEYS:
        value = metadata.get(key)
        if value is None:
            report.error(
                "missing_light",
                where,
                f"`{key}` is missing; every sample needs numbers theta (degrees in [0, {THETA_MAX_DEG:g})), "
                "phi (degrees) and size (> 0).",
            )
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            report.error(
                "non_numeric_light", where, f"`{key}` must be a number, got {value!r} ({type(value).__name__})."
            )
            continue
        if not math.isfinite(float(value)):
            report.error("non_numeric_light", where, f"`{key}` must be a finite number, got {value!r}.")
            continue
        values[key] = float(value)
    if len(values) != len(LIGHT_KEYS):
        return None
    theta, phi, size = (values[key] for key in LIGHT_KEYS)
    valid = True
    if not 0.0 <= theta < THETA_MAX_DEG:
        report.error(
            "light_out_of_range",
            where,
            f"`theta` = {theta:g} is outside [0, {THETA_MAX_DEG:g}) degrees (0 = light straight above the object).",
        )
        valid = False
    if size <= 0.0:
        report.error(
            "light_out_of_range", where, f"`size` = {size:g} must be > 0 (the area light's side; 2..8 in the paper)."
        )
        valid = False
    return (theta, phi, size) if valid else None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


class _ImageSource:
    """Where the object image, mask and shadow map of each sample live; index i lines up with the i-th record."""

    label: str = ""
    cheap_headers = True  # can tell an image's size and mode without decoding it

    def where(self, index: int, role: str) -> str:
        raise NotImplementedError

    def open(self, index: int, role: str) -> PIL.Image.Image | np.ndarray:
        """The decoded image; raises `_UnreadableImage` naming the file."""
        raise NotImplementedError

    def open_all(self, index: int) -> dict[str, PIL.Image.Image | np.ndarray]:
        return {role: self.open(index, role) for role in ROLES}

    def header(self, index: int, role: str) -> tuple[tuple[int, int], str] | None:
        """(width, height), mode without decoding the pixels; None where the source cannot tell cheaply."""
        return None

    def fingerprint(self) -> Any:
        raise NotImplementedError


def _require_regular_file(path: Path, where: str) -> None:
    """A FIFO or a device named as an image would block the read forever (or never end): refused before opening."""
    if not path.is_file():
        kind = "does not exist" if not path.exists() and not path.is_symlink() else "is not a regular file"
        raise _UnreadableImage(where, f"{kind} (a FIFO, device or broken link cannot be read as an image)")


def _open_pil(opener, where: str, load: bool = True) -> PIL.Image.Image:
    if isinstance(opener, (str, Path)):
        _require_regular_file(Path(opener), where)
    try:
        image = PIL.Image.open(opener)
        if load:
            image.load()
        return image
    except Exception as exc:  # PIL raises many types for bad files; each becomes a message naming the file
        raise _UnreadableImage(where, f"unreadable or truncated image ({_describe_exception(exc)})") from None


class _FileSource(_ImageSource):
    def __init__(self, root: Path, refs: list[dict[str, Path]], label: str | None = None):
        self.root = Path(root)
        self.refs = refs
        self.label = label or str(root)

    def where(self, index: int, role: str) -> str:
        return _relative(self.refs[index][role], self.root)

    def open(self, index: int, role: str) -> PIL.Image.Image:
        return _open_pil(self.refs[index][role], self.where(index, role))

    def header(self, index: int, role: str) -> tuple[tuple[int, int], str]:
        where = self.where(index, role)
        _require_regular_file(self.refs[index][role], where)
        try:
            with PIL.Image.open(self.refs[index][role]) as image:
                return image.size, image.mode
        except Exception as exc:
            raise _UnreadableImage(where, f"unreadable image ({_describe_exception(exc)})") from None

    def fingerprint(self) -> Any:
        entries = []
        for ref in self.refs:
            for role in ROLES:
                stat = ref[role].stat()
                entries.append((_relative(ref[role], self.root), stat.st_size, stat.st_mtime_ns))
        return {"files": entries}


@dataclass(frozen=True)
class _TarMember:
    tar_path: str
    name: str
    offset: int
    size: int
    data: bytes | None = None  # members of compressed tars are kept in memory (no random access into them)


class _TarSource(_ImageSource):
    def __init__(self, refs: list[dict[str, _TarMember]], label: str):
        self.refs = refs
        self.label = label

    def where(self, index: int, role: str) -> str:
        member = self.refs[index][role]
        return f"{Path(member.tar_path).name}:{member.name}"

    def _bytes(self, member: _TarMember) -> bytes:
        if member.data is not None:
            return member.data
        with open(member.tar_path, "rb") as handle:  # a fresh handle per read: safe across threads and workers
            handle.seek(member.offset)
            data = handle.read(member.size)
        if len(data) != member.size:
            raise _UnreadableImage(f"{Path(member.tar_path).name}:{member.name}", "the tar archive is truncated")
        return data

    def open(self, index: int, role: str) -> PIL.Image.Image:
        where = self.where(index, role)
        return _open_pil(io.BytesIO(self._bytes(self.refs[index][role])), where)

    def header(self, index: int, role: str) -> tuple[tuple[int, int], str]:
        image = _open_pil(io.BytesIO(self._bytes(self.refs[index][role])), self.where(index, role), load=False)
        return image.size, image.mode

    def fingerprint(self) -> Any:
        tars = sorted({member.tar_path for ref in self.refs for member in ref.values()})
        stats = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in tars]
        return {"tars": stats, "members": [[ref[role].name for role in ROLES] for ref in self.refs]}


class _HFSource(_ImageSource):
    cheap_headers = False

    def __init__(self, dataset, columns: dict[str, str], rows: list[int], label: str):
        import datasets

        image_columns = list(dict.fromkeys(columns[role] for role in ROLES))
        dataset = dataset.select_columns(image_columns)
        for column in image_columns:  # decode ourselves, so that a broken image becomes a message naming its row
            if isinstance(dataset.features[column], datasets.Image):
                dataset = dataset.cast_column(column, datasets.Image(decode=False))
        self.dataset = dataset
        self.columns = columns
        self.rows = rows
        self.label = label

    def where(self, index: int, role: str) -> str:
        return f"row {self.rows[index]}, column '{self.columns[role]}'"

    def open_all(self, index: int) -> dict[str, PIL.Image.Image | np.ndarray]:
        row = self.dataset[self.rows[index]]
        return {role: _hf_value_to_image(row[self.columns[role]], self.where(index, role)) for role in ROLES}

    def open(self, index: int, role: str) -> PIL.Image.Image | np.ndarray:
        return self.open_all(index)[role]

    def fingerprint(self) -> Any:
        return {"hf": getattr(self.dataset, "_fingerprint", None), "rows": self.rows, "columns": self.columns}


def _hf_value_to_image(value: Any, where: str) -> PIL.Image.Image | np.ndarray:
    if isinstance(value, PIL.Image.Image):
        return value
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:
            return _open_pil(io.BytesIO(value["bytes"]), where)
        if value.get("path"):
            return _open_pil(value["path"], where)
    if isinstance(value, (bytes, bytearray)):
        return _open_pil(io.BytesIO(bytes(value)), where)
    if isinstance(value, str):
        return _open_pil(value, where)
    if isinstance(value, (np.ndarray, list)):
        array = np.asarray(value)
        if array.ndim in (2, 3):
            return array
    raise _UnreadableImage(where, f"is not an image (got {type(value).__name__}); expected an image, bytes or a path")


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------------------------------
# 3. Scanning the three kinds of sources (no pixels decoded here)
# --------------------------------------------------------------------------------------------------------------------


def _check_duplicate_keys(pairs: list[tuple[str, Any]], duplicates: list[str]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            duplicates.append(key)
        seen[key] = value
    return seen


def _strip_image_extension(name: str) -> str:
    return Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name


def _read_custom_metadata(root: Path, report: VerificationReport) -> dict[str, tuple[dict, str]] | None:
    """{stem: (entry, where)} from metadata.json or metadata.jsonl; None when it cannot be read at all."""
    json_path, jsonl_path = root / "metadata.json", root / "metadata.jsonl"
    if json_path.exists() and jsonl_path.exists():
        report.error("duplicate", "metadata.json + metadata.jsonl", "both exist; keep exactly one of them.")
        return None
    if not json_path.exists() and not jsonl_path.exists():
        report.error(
            "missing_metadata_file",
            "metadata.json",
            f'missing: expected {json_path} mapping each file stem to {{"theta": deg, "phi": deg, "size": s}} '
            "(or metadata.jsonl with one object per line and a `file_name`).",
        )
        return None
    path = json_path if json_path.exists() else jsonl_path
    if not path.is_file():
        report.error("invalid_json", path.name, "is not a regular file (a FIFO or device would block the read).")
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        report.error("invalid_json", path.name, f"cannot be read as UTF-8 text ({_describe_exception(exc)}).")
        return None
    entries: dict[str, tuple[dict, str]] = {}
    if path is json_path:
        duplicates: list[str] = []
        try:
            data = json.loads(text, object_pairs_hook=lambda pairs: _check_duplicate_keys(pairs, duplicates))
        except json.JSONDecodeError as exc:
            report.error(
                "invalid_json", f"metadata.json line {exc.lineno} column {exc.colno}", f"invalid JSON: {exc.msg}."
            )
            return None
        if not isinstance(data, dict):
            report.error(
                "invalid_metadata",
                "metadata.json",
                f"must be a JSON object mapping each file stem to {{theta, phi, size}}, got a {type(data).__name__}.",
            )
            return None
        for key in dict.fromkeys(duplicates):
            if key in data:
                report.error("duplicate", f"metadata.json key '{key}'", "appears more than once; keep one entry.")
        for key, value in data.items():
            where = f"metadata.json key '{key}'"
            if not isinstance(value, dict):
                report.error("invalid_metadata", where, f"must be an object with theta, phi, size; got {value!r}.")
                continue
            stem = _strip_image_extension(key)
            if stem in entries:
                report.error("duplicate", where, f"names the same sample as {entries[stem][1]}.")
                continue
            entries[stem] = (value, where)
        return entries
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"metadata.jsonl line {line_number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            report.error("invalid_json", f"{where} column {exc.colno}", f"invalid JSON: {exc.msg}.")
            continue
        if not isinstance(value, dict):
            report.error("invalid_metadata", where, f"must be a JSON object, got {value!r}.")
            continue
        file_name = value.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            report.error(
                "invalid_metadata",
                where,
                'needs `file_name`: the object image\'s name inside objects/ (e.g. "0001.png").',
            )
            continue
        stem = Path(file_name).stem
        where = f"{where} ('{file_name}')"
        if stem in entries:
            report.error("duplicate", where, f"names the same sample as {entries[stem][1]}.")
            continue
        entries[stem] = (value, where)
    return entries


def _list_images(folder: Path, folder_name: str, report: VerificationReport) -> dict[str, Path]:
    images: dict[str, Path] = {}
    ignored: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_file():
            report.error(
                "not_a_file",
                f"{folder_name}/{path.name}",
                "is not a regular file (a FIFO, device or broken link): reading it could block forever.",
            )
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            ignored.append(path.name)
            continue
        if path.stem in images:
            report.error(
                "duplicate",
                f"{folder_name}/{path.name}",
                f"has the same stem as {folder_name}/{images[path.stem].name}; keep one file per sample.",
            )
            continue
        images[path.stem] = path
    if ignored:
        shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        report.warn(
            "ignored_file",
            f"{folder_name}/",
            f"ignored {len(ignored)} file(s) that are not images ({', '.join(IMAGE_EXTENSIONS)}): {shown}.",
        )
    return images


def _scan_custom(root: Path, report: VerificationReport) -> tuple[_FileSource | None, list[SampleRecord]]:
    if not root.exists():
        report.error(
            "missing_folder",
            str(root),
            "the data folder does not exist (a custom dataset is a folder with objects/, masks/, shadows/ and "
            "metadata.json).",
        )
        return None, []
    if not root.is_dir():
        report.error(
            "missing_folder", str(root), "is a file, not a folder with objects/, masks/, shadows/, metadata.json."
        )
        return None, []
    images: dict[str, dict[str, Path]] = {}
    for role, folder_name in CUSTOM_FOLDERS.items():
        folder = root / folder_name
        if folder.is_dir():
            images[role] = _list_images(folder, folder_name, report)
        else:
            report.error(
                "missing_folder",
                f"{folder_name}/",
                f"folder is missing: expected {folder} with one image per sample (the same file stem in objects/, "
                "masks/ and shadows/).",
            )
    metadata = _read_custom_metadata(root, report)
    metadata_name = "metadata.jsonl" if (root / "metadata.jsonl").exists() else "metadata.json"
    stems = sorted(set().union(*(files.keys() for files in images.values()))) if images else []
    records, refs = [], []
    for stem in stems:
        present = [role for role in ROLES if role in images and stem in images[role]]
        missing = [role for role in ROLES if role in images and stem not in images[role]]
        if missing:
            have = ", ".join(_relative(images[role][stem], root) for role in present)
            for role in missing:
                report.error(
                    "missing_file",
                    f"{CUSTOM_FOLDERS[role]}/{stem}.*",
                    f"sample '{stem}' has {have} but no file in {CUSTOM_FOLDERS[role]}/ (the three folders must hold "
                    "the same stems).",
                )
        if metadata is not None and stem not in metadata:
            report.error(
                "missing_metadata",
                _relative(images[present[0]][stem], root),
                f"sample '{stem}' has images but no entry in {metadata_name}.",
            )
        if missing or len(present) != len(ROLES) or metadata is None or stem not in metadata:
            continue
        entry, where = metadata[stem]
        light = _parse_light(entry, where, report)
        if light is None:
            continue
        records.append(SampleRecord(stem, *light, object_id=_optional_str(entry.get("object_id")), track=None))
        refs.append({role: images[role][stem] for role in ROLES})
    if metadata is not None and images:
        for stem, (_, where) in metadata.items():
            if not any(stem in files for files in images.values()):
                report.error(
                    "orphan_metadata",
                    where,
                    f"has no images: no objects/{stem}.*, masks/{stem}.* or shadows/{stem}.* exists.",
                )
    return _FileSource(root, refs), records


# The benchmark's tracks (docs/design.md §4, §8). ONE rule reads a track name, whether from a `track` metadata value or
# from a key or folder name: the track whose pattern occurs in it, case-insensitive, so `softness`, `soft`,
# `softness_control`, `direction_control_horz`, `Horizontal` and `vert_012` all name one. A text that names two tracks
# names none.
TRACK_NAMES = ("softness", "horizontal", "vertical")
TRACK_PATTERNS = {"softness": ("soft",), "horizontal": ("horz", "horizontal"), "vertical": ("vert", "vertical")}
TRACK_VARIED_LIGHT = {"size": "softness", "phi": "horizontal", "theta": "vertical"}  # what each track's design varies
_LIGHT_SUFFIX = re.compile(r"[_\-=.]*\d+(?:\.\d+)?$")  # `obj_003_size4` -> `obj_003_size`, `obj_003_4` -> `obj_003`


def track_from_name(text: Any) -> str | None:
    """The track a name or metadata value names (see TRACK_PATTERNS), or None when it names none or several."""
    lowered = str(text).lower()
    named = [track for track, patterns in TRACK_PATTERNS.items() if any(p in lowered for p in patterns)]
    return named[0] if len(named) == 1 else None


def _track_from_key(key: str) -> str | None:
    # Folder by folder, outermost first: the folder (`softness_control/...`) names the track even when a later part
    # happens to contain a pattern too (`.../obj_convert_3`).
    for part in key.split("/"):
        if (track := track_from_name(part)) is not None:
            return track
    return None


def _named_track(key: str, metadata: dict | None) -> tuple[str | None, str | None]:
    """(track, "metadata" | "key") from the sample's own names, or (None, None)."""
    if metadata and metadata.get("track") is not None and (track := track_from_name(metadata["track"])) is not None:
        return track, "metadata"
    track = _track_from_key(key)
    return track, ("key" if track is not None else None)


def detect_track(key: str, metadata: dict | None = None) -> str | None:
    """The benchmark track a sample's own names give: its `track` metadata value when that names one, else its key
    (folders first); None when neither does (then `infer_tracks_from_lights` may still tell it)."""
    return _named_track(key, metadata)[0]


def object_stem(key: str) -> str:
    """The key without its trailing light number: the samples of one object in one track share it."""
    return _LIGHT_SUFFIX.sub("", key)


def infer_tracks_from_lights(records: Sequence[SampleRecord]) -> dict[str, str]:
    """{id: track} from the light design of each object (docs/design.md §4): the samples that share an object stem
    (the key without its trailing light number) form one group; when exactly one light parameter varies in it and the
    other two stay fixed, the group is that parameter's track (size -> softness, phi -> horizontal, theta ->
    vertical). Groups of one sample, or where several parameters vary, stay unknown."""
    groups: dict[str, list[SampleRecord]] = {}
    for record in records:
        groups.setdefault(object_stem(record.id), []).append(record)
    inferred = {}
    for members in groups.values():
        varied = [key for key in LIGHT_KEYS if len({getattr(record, key) for record in members}) > 1]
        if len(varied) == 1:
            inferred.update((record.id, TRACK_VARIED_LIGHT[varied[0]]) for record in members)
    return inferred


def _comparable(value: Any) -> Any:
    """30 and 30.0 are the same light value; anything else compares as its JSON text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return json.dumps(value, default=str)


def _read_light_keys(metadata: dict, where: str, report: VerificationReport) -> tuple[dict, set[str]] | None:
    """({theta, phi, size}: value, the metadata keys read for them) under any spelling of LIGHT_KEY_ALIASES, or None
    after reporting every light key that is missing, spelled in a refused convention, or given twice differently."""
    by_lower = {str(name).lower(): name for name in metadata}
    values, used, valid = {}, set(), True
    for key, aliases in LIGHT_KEY_ALIASES.items():
        found = [
            (by_lower[a], metadata[by_lower[a]]) for a in aliases if a in by_lower and metadata[by_lower[a]] is not None
        ]
        accepted = ", ".join(f"`{alias}`" for alias in aliases)
        if len({_comparable(value) for _, value in found}) > 1:
            listed = ", ".join(f"`{name}` = {value!r}" for name, value in found)
            report.error("light_conflict", where, f"gives `{key}` more than once, with different values: {listed}.")
            valid = False
        elif found:
            values[key] = found[0][1]
            used.update(name for name, _ in found)
        elif refused := [(by_lower[name], why) for name, why in REFUSED_LIGHT_KEYS[key].items() if name in by_lower]:
            reasons = "; ".join(f"`{name}` is not read: {why}" for name, why in refused)
            report.error("unsupported_light_key", where, f"has no `{key}` ({reasons}). Accepted: {accepted}.")
            valid = False
        else:
            report.error("missing_light", where, f"`{key}` is missing; accepted spellings: {accepted}.")
            valid = False
    return (values, used) if valid else None


def _report_tracks(records: list[SampleRecord], sources: dict[str, str], report: VerificationReport) -> None:
    """One line per track (how many samples, found how) and ONE warning for all samples without a track."""
    for track in TRACK_NAMES:
        ids = [record.id for record in records if record.track == track]
        if ids:
            how = Counter(sources[sample_id] for sample_id in ids)
            found = ", ".join(f"{count} from the {source}" for source, count in how.items())
            report.details.append(f"track {track}: {len(ids)} sample(s) ({found})")
    unknown = [record.id for record in records if record.track is None]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        report.warn(
            "unknown_track",
            f"{len(unknown)} sample(s)",
            f"no track: neither a `track` metadata value nor the key names one (soft / horz|horizontal / "
            f"vert|vertical), and the light design of their object does not tell it ({shown}). They are read and "
            "scored under `all`.",
        )


def _split_webdataset_name(name: str) -> tuple[str, str, str] | None:
    """`dir/key.image.png` -> ("dir/key", "image", "image.png"); None for hidden files or names without a suffix."""
    folder, base = posixpath.split(name)
    if not base or base.startswith("."):
        return None
    stem, _, suffix = base.partition(".")
    if not suffix:
        return None
    return (posixpath.join(folder, stem) if folder else stem), suffix.split(".")[0].lower(), suffix


def _open_tar(path: Path) -> tuple[tarfile.TarFile, bool]:
    """The tar and whether it is compressed (compressed members have no random access)."""
    try:
        return tarfile.open(path, mode="r:"), False
    except tarfile.ReadError:
        return tarfile.open(path, mode="r:*"), True


def _download_benchmark(repo_id: str, cache_dir: str | None) -> Path:
    """The benchmark from the Hub (a dataset repo with one webdataset tar). Needs network; tests use local tars."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, repo_type="dataset", cache_dir=cache_dir))
    except Exception as exc:
        raise ValueError(
            f"Could not download the dataset repo {repo_id!r} from the Hugging Face Hub ({_describe_exception(exc)}). "
            "Offline? Download controllable-shadow-generation-benchmark.tar elsewhere and pass its path as `data_dir`."
        ) from None


def _scan_benchmark(path: Path, report: VerificationReport) -> tuple[_ImageSource | None, list[SampleRecord]]:
    # members[key][suffix] = (where, reference or bytes); metadata bytes are read now, images lazily.
    members: dict[str, dict[str, tuple[str, Any]]] = {}
    ignored: dict[str, int] = {}

    def add(key: str, suffix: str, where: str, ref: Any) -> None:
        parts = members.setdefault(key, {})
        if suffix in parts:
            report.error("duplicate", where, f"sample '{key}' already has a `{suffix}` file ({parts[suffix][0]}).")
            return
        parts[suffix] = (where, ref)

    if not path.exists():
        report.error(
            "missing_folder", str(path), "does not exist (expected the benchmark tar or its extracted folder)."
        )
        return None, []
    if path.is_file():
        tars = [path]
    elif not path.is_dir():
        report.error("not_a_file", str(path), "is not a regular file or a folder (a FIFO or device would block).")
        return None, []
    else:
        tars = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(TAR_SUFFIXES))
    from_tar = bool(tars)
    for tar_path in tars:
        try:
            archive, compressed = _open_tar(tar_path)
        except (tarfile.TarError, OSError) as exc:
            report.error(
                "unreadable_archive", str(tar_path), f"is not a readable tar archive ({_describe_exception(exc)})."
            )
            continue
        try:
            with archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    split = _split_webdataset_name(member.name)
                    if split is None:
                        continue
                    key, suffix, full_suffix = split
                    where = f"{tar_path.name}:{member.name}"
                    if suffix == BENCHMARK_METADATA_SUFFIX:
                        add(key, suffix, where, archive.extractfile(member).read())
                    elif suffix in BENCHMARK_SUFFIXES:
                        data = archive.extractfile(member).read() if compressed else None
                        add(
                            key,
                            suffix,
                            where,
                            _TarMember(str(tar_path), member.name, member.offset_data, member.size, data),
                        )
                    else:
                        ignored[full_suffix] = ignored.get(full_suffix, 0) + 1
        except (tarfile.TarError, OSError, EOFError) as exc:
            report.error("unreadable_archive", str(tar_path), f"is truncated or corrupt ({_describe_exception(exc)}).")
    if not from_tar:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            split = _split_webdataset_name(file.relative_to(path).as_posix())
            if split is None:
                continue
            key, suffix, full_suffix = split
            where = file.relative_to(path).as_posix()
            if suffix == BENCHMARK_METADATA_SUFFIX:
                add(key, suffix, where, file)
            elif suffix in BENCHMARK_SUFFIXES:
                add(key, suffix, where, file)
            else:
                ignored[full_suffix] = ignored.get(full_suffix, 0) + 1
    for full_suffix, count in sorted(ignored.items()):
        report.warn(
            "ignored_file",
            f"*.{full_suffix}",
            f"ignored {count} file(s); a benchmark sample is <key>.image.png, <key>.mask.png, <key>.shadow.png and "
            "<key>.metadata.json.",
        )

    records, refs = [], []
    sources: dict[str, str | None] = {}
    unread_track_values: Counter[str] = Counter()
    conflicts: list[str] = []
    extra_keys: set[str] = set()
    for key in sorted(members):
        parts = members[key]
        missing = [suffix for suffix in (*BENCHMARK_SUFFIXES, BENCHMARK_METADATA_SUFFIX) if suffix not in parts]
        if missing:
            have = ", ".join(where for where, _ in parts.values())
            report.error(
                "missing_file",
                key,
                f"sample '{key}' has {have} but no {', '.join(f'{key}.{s}.*' for s in missing)}.",
            )
            continue
        where, raw = parts[BENCHMARK_METADATA_SUFFIX]
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else Path(raw).read_text(encoding="utf-8")
            metadata = json.loads(text)
        except json.JSONDecodeError as exc:
            report.error("invalid_json", f"{where} line {exc.lineno} column {exc.colno}", f"invalid JSON: {exc.msg}.")
            continue
        except (UnicodeDecodeError, OSError) as exc:
            report.error("invalid_json", where, f"cannot be read as UTF-8 text ({_describe_exception(exc)}).")
            continue
        if not isinstance(metadata, dict):
            report.error("invalid_metadata", where, f"must be a JSON object with theta, phi, size; got {metadata!r}.")
            continue
        read = _read_light_keys(metadata, where, report)
        light = _parse_light(read[0], where, report) if read is not None else None
        if light is None:
            continue
        track, sources[key] = _named_track(key, metadata)
        if metadata.get("track") is not None:
            if track_from_name(metadata["track"]) is None:
                unread_track_values[str(metadata["track"])] += 1
            elif (from_key := _track_from_key(key)) is not None and from_key != track:
                conflicts.append(f"{key} (`track` {metadata['track']!r}, key says {from_key})")
        extra = {name: value for name, value in metadata.items() if name not in read[1] | {"track", "object_id"}}
        extra_keys.update(extra)
        object_id = _optional_str(metadata.get("object_id"))
        records.append(SampleRecord(key, *light, object_id=object_id, track=track, extra=extra))
        refs.append({BENCHMARK_SUFFIXES[suffix]: parts[suffix][1] for suffix in BENCHMARK_SUFFIXES})
    inferred = infer_tracks_from_lights([record for record in records if record.track is None])
    for index, record in enumerate(records):
        if record.id in inferred:
            records[index] = dataclasses.replace(record, track=inferred[record.id])
            sources[record.id] = "light design"
    if unread_track_values:
        listed = ", ".join(f"{value!r} ({count})" for value, count in unread_track_values.most_common(5))
        report.warn(
            "unknown_track_value",
            "`track` metadata",
            f"values that name no track: {listed}; the key or the light design was used instead.",
        )
    if conflicts:
        report.warn(
            "track_conflict",
            f"{len(conflicts)} sample(s)",
            f"the `track` metadata value (which wins) and the key name different tracks: {', '.join(conflicts[:5])}.",
        )
    if extra_keys:
        report.details.append(
            f"metadata read: the light ({', '.join(LIGHT_KEYS)}), `track`, `object_id`; kept unread in each "
            f"record's `extra`: {', '.join(sorted(extra_keys))}"
        )
    _report_tracks(records, sources, report)
    if from_tar:
        return _TarSource(refs, str(path)), records
    return _FileSource(path, refs), records


def _load_hf_dataset(dataset_name: str, dataset_config_name: str | None, cache_dir: str | None, split: str):
    import datasets

    path = Path(dataset_name)
    saved_markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if path.is_dir() and any((path / marker).exists() for marker in saved_markers):
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, split=split)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"split {split!r} is not in the dataset; available splits: {', '.join(loaded)}.")
        loaded = loaded[split]
    return loaded


def _scan_hf(
    dataset_name: str,
    report: VerificationReport,
    *,
    dataset_config_name: str | None,
    cache_dir: str | None,
    split: str,
    columns: dict[str, str | None],
    object_id_column: str | None,
) -> tuple[_HFSource | None, list[SampleRecord]]:
    try:
        dataset = _load_hf_dataset(dataset_name, dataset_config_name, cache_dir, split)
    except Exception as exc:  # load_dataset raises many types; the user needs the name and the cause
        report.error("unreadable_dataset", dataset_name, f"could not be loaded ({_describe_exception(exc)}).")
        return None, []
    available = list(dataset.column_names)
    resolved: dict[str, str] = {}
    for role, candidates in HF_COLUMN_DEFAULTS.items():
        option = HF_COLUMN_OPTIONS[role]
        given = columns.get(role)
        if given is not None:
            if given in available:
                resolved[role] = given
            else:
                report.error(
                    "missing_column",
                    f"`{option}`",
                    f"column {given!r} is not in the dataset; available columns: {', '.join(available)}.",
                )
            continue
        found = next((name for name in candidates if name in available), None)
        if found is None:
            report.error(
                "missing_column",
                f"`{option}`",
                f"no {role} column (tried {', '.join(candidates)}); available columns: {', '.join(available)}. "
                f"Pass `{option}=...`.",
            )
        else:
            resolved[role] = found
    if object_id_column is not None and object_id_column not in available:
        report.error(
            "missing_column",
            "`object_id_column`",
            f"column {object_id_column!r} is not in the dataset; available columns: {', '.join(available)}.",
        )
    if not report.ok:
        return None, []
    object_id_column = object_id_column or ("object_id" if "object_id" in available else None)
    id_column = next((name for name in HF_ID_COLUMNS if name in available), None)
    track_column = "track" if "track" in available else None
    wanted = [resolved[key] for key in LIGHT_KEYS] + [c for c in (object_id_column, id_column, track_column) if c]
    table = dataset.select_columns(list(dict.fromkeys(wanted))).to_dict()
    records, rows = [], []
    seen_ids: dict[str, int] = {}
    unread_track_values: Counter[str] = Counter()
    for row in range(len(dataset)):
        sample_id = str(table[id_column][row]) if id_column else f"{row:06d}"
        where = f"row {row}" + (f" ('{sample_id}')" if id_column else "")
        if sample_id in seen_ids:
            report.warn("duplicate", where, f"has the same id as row {seen_ids[sample_id]}.")
        seen_ids.setdefault(sample_id, row)
        light = _parse_light({key: table[resolved[key]][row] for key in LIGHT_KEYS}, where, report)
        track = None
        if track_column and table[track_column][row] is not None:
            track = track_from_name(table[track_column][row])
            if track is None:
                unread_track_values[str(table[track_column][row])] += 1
        if light is None:
            continue
        object_id = _optional_str(table[object_id_column][row]) if object_id_column else None
        records.append(SampleRecord(sample_id, *light, object_id=object_id, track=track))
        rows.append(row)
    if unread_track_values:
        listed = ", ".join(f"{value!r} ({count})" for value, count in unread_track_values.most_common(5))
        report.warn("unknown_track_value", "column 'track'", f"values that name no track: {listed}; read as None.")
    return _HFSource(dataset, resolved, rows, dataset_name), records


# --------------------------------------------------------------------------------------------------------------------
# 4. Image checks (headers for `quick`, decoded pixels for `full`)
# --------------------------------------------------------------------------------------------------------------------

_MAP_MODES = (*GRAY_MODES, "RGB", "P", "LA", "La", "PA", "RGBA", "RGBa")  # modes a mask / shadow map may have


def _not_gray_reason(image: PIL.Image.Image | np.ndarray) -> str | None:
    """Why a mask / shadow map is not a gray image; the rule lives with the image readers (pipeline_shadow)."""
    return not_gray_reason(image)


def _image_size(image: PIL.Image.Image | np.ndarray) -> tuple[int, int]:
    return image.size if isinstance(image, PIL.Image.Image) else (image.shape[1], image.shape[0])


def _size_mismatch(sizes: dict[str, tuple[int, int]], wheres: dict[str, str], sample_id: str) -> Problem | None:
    if len(set(sizes.values())) <= 1:
        return None
    listed = ", ".join(f"{wheres[role]} is {w}x{h}" for role, (w, h) in sizes.items())
    return Problem("size_mismatch", wheres["object"], f"sample '{sample_id}': {listed} (W x H); all three must match.")


def _too_small(size: tuple[int, int], where: str) -> Problem | None:
    width, height = size
    try:
        check_image_extent(height, width, "the image")
    except ValueError as exc:
        return Problem("too_small", where, f"{exc} (MIN_IMAGE_SIDE = {MIN_IMAGE_SIDE}).")
    return None


def _map_problems(source: _ImageSource, index: int, role: str, where: str) -> list[tuple[str, Problem]]:
    try:
        image = source.open(index, role)
    except _UnreadableImage as exc:
        return [("error", Problem("unreadable_image", exc.where, f"{exc.reason}."))]
    reason = _not_gray_reason(image)
    return [] if reason is None else [("error", Problem("not_gray", where, f"{reason}."))]


def _check_sample(source: _ImageSource, record: SampleRecord, index: int, level: str) -> list[tuple[str, Problem]]:
    problems: list[tuple[str, Problem]] = []
    wheres = {role: source.where(index, role) for role in ROLES}
    if level == "quick":
        sizes = {}
        for role in ROLES:
            try:
                header = source.header(index, role)
            except _UnreadableImage as exc:
                problems.append(("error", Problem("unreadable_image", exc.where, f"{exc.reason}.")))
                continue
            if header is None:
                return problems
            sizes[role], mode = header
            if role != "object" and mode not in _MAP_MODES:
                problems.append(
                    ("error", Problem("not_gray", wheres[role], f"has image mode {mode}, not a gray image."))
                )
            elif role != "object" and mode not in GRAY_MODES:
                # Coloured or transparent maps only show in the pixels; decoding just these maps (not the gray
                # ones) keeps the start-up check cheap and applies the same rule as `full`.
                problems.extend(_map_problems(source, index, role, wheres[role]))
        if len(sizes) == len(ROLES) and (mismatch := _size_mismatch(sizes, wheres, record.id)):
            problems.append(("error", mismatch))
        if "object" in sizes and (small := _too_small(sizes["object"], wheres["object"])):
            problems.append(("error", small))
        return problems
    try:
        images = source.open_all(index)
    except _UnreadableImage:
        images = {}
        for role in ROLES:  # find every broken image of the sample, not just the first
            try:
                images[role] = source.open(index, role)
            except _UnreadableImage as exc:
                problems.append(("error", Problem("unreadable_image", exc.where, f"{exc.reason}.")))
        if len(images) != len(ROLES):
            return problems
    if mismatch := _size_mismatch({role: _image_size(images[role]) for role in ROLES}, wheres, record.id):
        problems.append(("error", mismatch))
    if small := _too_small(_image_size(images["object"]), wheres["object"]):
        problems.append(("error", small))
    try:
        image_to_tensor(images["object"])
    except (ValueError, OSError) as exc:
        problems.append(("error", Problem("unreadable_image", wheres["object"], f"is not an RGB image ({exc}).")))
    for role in ("mask", "shadow"):
        reason = _not_gray_reason(images[role])
        if reason is not None:
            problems.append(("error", Problem("not_gray", wheres[role], f"{reason}.")))
            continue
        try:
            values = gray_to_tensor(images[role], name="shadow_map" if role == "shadow" else "mask")
        except ValueError as exc:
            problems.append(("error", Problem("out_of_range", wheres[role], f"{exc} (1 = full shadow / object).")))
            continue
        if role == "mask":
            soft = ((values > SOFT_MASK_TOLERANCE) & (values < 1.0 - SOFT_MASK_TOLERANCE)).float().mean().item()
            if soft > 0:
                problems.append(
                    (
                        "warning",
                        Problem(
                            "non_binary_mask",
                            wheres[role],
                            f"is not binary ({soft:.1%} of pixels strictly between 0 and 1); it is binarised at 0.5 "
                            "(pass binarize_masks=False to keep soft edges).",
                        ),
                    )
                )
            if not bool((values >= 0.5).any()):
                problems.append(
                    ("warning", Problem("empty_mask", wheres[role], "is empty (no pixel >= 0.5): no object."))
                )
        else:
            mean = values.mean().item()
            if mean > INVERTED_SHADOW_MEAN:
                problems.append(
                    (
                        "warning",
                        Problem(
                            "inverted_shadow",
                            wheres[role],
                            f"looks inverted (mean {mean:.2f} > {INVERTED_SHADOW_MEAN}): shadow maps must be 1 = full "
                            "shadow, 0 = none. If the whole dataset is stored the other way, pass invert_shadow_maps=True.",
                        ),
                    )
                )
    return problems


def _check_images(
    source: _ImageSource, records: list[SampleRecord], report: VerificationReport, level: str, num_threads: int | None
) -> None:
    if level == "metadata" or not records:
        return
    if level == "quick" and not source.cheap_headers:  # e.g. HF datasets: reading a header means reading the row
        return
    num_threads = num_threads or min(16, 2 * (os.cpu_count() or 1))
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=num_threads) as pool:  # PIL releases the GIL while decoding
        results = list(pool.map(lambda i: _check_sample(source, records[i], i, level), range(len(records))))
    for problems in results:
        for severity, problem in problems:
            (report.errors if severity == "error" else report.warnings).append(problem)
    logger.debug("Checked %d samples (%s) in %.1f s.", len(records), level, time.perf_counter() - started)


# --------------------------------------------------------------------------------------------------------------------
# 5. Transforms: one resize for image, mask and shadow; flip mirrors phi
# --------------------------------------------------------------------------------------------------------------------


def check_image_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0 or image_size % 8:
        hint = f" Try {max(8, int(image_size) // 8 * 8)}." if isinstance(image_size, (int, float)) else ""
        raise ValueError(
            f"`image_size` must be a positive multiple of 8 (the VAE downsamples by 8), got {image_size!r}.{hint}"
        )


def preprocess_sample(
    object_image,
    mask,
    shadow_map=None,
    image_size: int = DEFAULT_RESOLUTION,
    *,
    binarize_masks: bool = True,
    invert_shadow_map: bool = False,
) -> dict[str, torch.Tensor]:
    """One sample (PIL / numpy / tensor, same size) -> model-ready tensors at `image_size` x `image_size`:

    - `object_image` [3,S,S] float32 in [-1, 1], every pixel outside the mask WHITE (docs/design.md §8);
    - `mask` [1,S,S] in [0, 1] (binarised at 0.5 at the source size when `binarize_masks`; resizing softens edges);
    - `shadow_map` [1,S,S] in [0, 1], 1 = full shadow (only when given).

    Long side to `image_size`, aspect kept, padded (object white, mask 0, shadow 0): never squashed, never cropped.
    """
    check_image_size(image_size)
    rgb = image_to_tensor(object_image, name="object_image")[:3]  # an alpha channel is ignored: the mask decides
    mask_tensor = gray_to_tensor(mask, name="mask")
    sizes = {"object_image": tuple(rgb.shape[-2:]), "mask": tuple(mask_tensor.shape[-2:])}
    shadow_tensor = None
    if shadow_map is not None:
        shadow_tensor = gray_to_tensor(shadow_map, name="shadow_map")
        sizes["shadow_map"] = tuple(shadow_tensor.shape[-2:])
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"`{name}` is {w}x{h}" for name, (h, w) in sizes.items())
        raise ValueError(f"The images of one sample must have the same size: {listed} (W x H).")
    check_image_extent(*rgb.shape[-2:], "`object_image`")
    target = (image_size, image_size)
    object_tensor, mask_tensor, _ = preprocess_object(rgb, mask_tensor, target, binarize=binarize_masks)
    sample = {"object_image": object_tensor, "mask": mask_tensor}
    if shadow_tensor is not None:
        if invert_shadow_map:
            shadow_tensor = 1.0 - shadow_tensor
        shadow_tensor, _ = resize_and_pad(shadow_tensor, target, SHADOW_FILL)
        sample["shadow_map"] = shadow_tensor.clamp(0.0, 1.0)
    return sample


SKIPPED_KEY = "skipped"  # a batch's list of "why" messages for the samples `skip_bad_samples` left out


def collate_samples(samples: list[dict]) -> dict:
    """Stacks tensors ([B,...]: `light` [B,3], theta/phi/size [B]) and keeps `id` and `track` as lists (track may
    hold None). Samples that `skip_bad_samples` replaced by a marker are left out and listed under `skipped` (only
    present when there are any), so the training loop counts and logs them in the main process; a batch may then be
    empty (`id` = [])."""
    skipped = [sample[SKIPPED_KEY] for sample in samples if SKIPPED_KEY in sample]
    samples = [sample for sample in samples if SKIPPED_KEY not in sample]
    batch: dict = {"id": []} if not samples else {}
    for key in samples[0] if samples else ():
        values = [sample[key] for sample in samples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    if skipped:
        batch[SKIPPED_KEY] = skipped
    return batch


def mirror_phi(phi):
    """The azimuth of the light after a horizontal image flip: phi -> (180 - phi) mod 360 (docs/design.md §2)."""
    return wrap_phi(180.0 - phi)


def _light_tensors(record: SampleRecord, flip: bool) -> dict[str, torch.Tensor]:
    """`light` [3] = (theta, phi, size) as the UNet takes it (float32, phi wrapped, mirrored for a flip), and the same
    values as `theta`/`phi`/`size` scalars for metrics and captions."""
    phi = wrap_phi(record.phi)
    if flip:
        phi = mirror_phi(phi)
    light = torch.tensor([record.theta, phi, record.size], dtype=torch.float32)
    return {"light": light, **{key: value for key, value in zip(LIGHT_KEYS, light.unbind())}}


def _with_light_and_id(sample: dict, record: SampleRecord, flip: bool) -> dict:
    """An item's images or latents plus its light, `id` and `track`: the part every dataset item shares."""
    return {**sample, **_light_tensors(record, flip), "id": record.id, "track": record.track}


# --------------------------------------------------------------------------------------------------------------------
# 6. Datasets
# --------------------------------------------------------------------------------------------------------------------


class FlipSchedule:
    """Which items are flipped: a pure function of (seed, epoch, dataset index), so a resumed run flips exactly the
    samples the uninterrupted run would have. The epoch lives in shared memory, so persistent DataLoader workers see
    `set_epoch` from the main process."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __call__(self, index: int) -> bool:
        digest = hashlib.blake2b(f"{self.seed}:{int(self._epoch)}:{index}".encode(), digest_size=1).digest()
        return bool(digest[0] & 1)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tells the loader's dataset (through Subset wrappers) which epoch it serves, for reproducible flips; an
    `EpochDataLoader` also starts its next pass at that epoch. The training script calls it (its loaders are
    accelerate's copies, which do not advance by themselves); a plain loop does not need to."""
    if isinstance(loader, EpochDataLoader):
        loader.next_epoch = int(epoch)
    _set_flip_epoch(loader.dataset, epoch)


def _set_flip_epoch(dataset, epoch: int) -> None:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if hasattr(dataset, "flips"):
        dataset.flips.set_epoch(epoch)


def epoch_shuffle_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle order: a pure function of (seed, epoch), not of how many passes ran before."""
    return int.from_bytes(hashlib.blake2b(f"shuffle:{seed}:{epoch}".encode(), digest_size=8).digest(), "little") >> 1


class EpochDataLoader(DataLoader):
    """A DataLoader whose every new pass (`iter(loader)`, i.e. each `for batch in loader`) is the next epoch, as
    users of PyTorch's loaders expect from `shuffle=True`: the flips and the shuffle order change from epoch to epoch,
    and both stay a pure function of (seed, epoch, index), so a resumed run replays them exactly. `next_epoch` is the
    epoch of the next pass; `set_epoch(loader, n)` sets it explicitly (what the training script does)."""

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.next_epoch = 0

    def __iter__(self):
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        _set_flip_epoch(self.dataset, epoch)
        if self.generator is not None:  # the RandomSampler draws this epoch's order from it
            self.generator.manual_seed(epoch_shuffle_seed(self.seed, epoch))
        return super().__iter__()


class ShadowDataset(Dataset):
    """The samples of one source in a fixed order, loaded as model-ready tensors (docs/design.md §8). One item:
    `object_image` [3,S,S] in [-1,1], `mask` [1,S,S], `shadow_map` [1,S,S], `light` [3] float32 (theta, phi, size),
    `theta`/`phi`/`size` float32 scalars, `id` (str), `track` (str or None). Build it with `open_shadow_dataset`."""

    def __init__(
        self,
        image_source: _ImageSource,
        records: list[SampleRecord],
        image_size: int = DEFAULT_RESOLUTION,
        *,
        random_flip: bool = False,
        binarize_masks: bool = True,
        invert_shadow_maps: bool = False,
        dataset_type: str = "custom",
        report: VerificationReport | None = None,
        flip_seed: int = 0,
        skip_bad_samples: bool = False,
    ):
        check_image_size(image_size)
        self.skip_bad_samples = skip_bad_samples  # opt-in: a sample that fails to load becomes a `skipped` marker
        self.image_source = image_source
        self.records = list(records)
        self.image_size = image_size
        self.random_flip = random_flip
        self.flips = FlipSchedule(flip_seed)
        self.binarize_masks = binarize_masks
        self.invert_shadow_maps = invert_shadow_maps
        self.dataset_type = dataset_type
        self.report = report

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [record.id for record in self.records]

    def load_sample(self, index: int, flip: bool = False) -> dict:
        record = self.records[index]
        try:
            images = self.image_source.open_all(index)
            sample = preprocess_sample(
                images["object"],
                images["mask"],
                images["shadow"],
                self.image_size,
                binarize_masks=self.binarize_masks,
                invert_shadow_map=self.invert_shadow_maps,
            )
        except _UnreadableImage as exc:
            raise SampleLoadError(
                f"Sample '{record.id}': {exc.where} {exc.reason}. Run `python dataset_loading.py verify "
                f"{self.image_source.label}` to list every problem at once."
            ) from None
        except ValueError as exc:
            files = ", ".join(self.image_source.where(index, role) for role in ROLES)
            raise SampleLoadError(
                f"Sample '{record.id}' ({files}): {exc} Run `python dataset_loading.py verify {self.image_source.label}`."
            ) from None
        if flip:
            sample = {key: torch.flip(value, dims=[-1]) for key, value in sample.items()}
        return _with_light_and_id(sample, record, flip)

    def __getitem__(self, index: int) -> dict:
        try:
            return self.load_sample(index, flip=self.random_flip and self.flips(index))
        except SampleLoadError as exc:
            if not self.skip_bad_samples:
                raise
            return {SKIPPED_KEY: str(exc)}

    def without_flip(self) -> ShadowDataset:
        return self.with_flips(False)

    def with_flips(self, random_flip: bool, flip_seed: int | None = None) -> ShadowDataset:
        """The same samples (no new scan) with random flips on or off, and a fresh flip schedule for `flip_seed`."""
        view = copy.copy(self)
        view.random_flip = random_flip
        if flip_seed is not None:
            view.flips = FlipSchedule(flip_seed)
        return view

    def fingerprint(self) -> str:
        """Changes whenever a file (name, size, mtime), a metadata value or a preprocessing option changes."""
        payload = {
            "source": self.image_source.fingerprint(),
            "records": [[r.id, r.theta, r.phi, r.size, r.object_id, r.track] for r in self.records],
            "binarize_masks": self.binarize_masks,
            "invert_shadow_maps": self.invert_shadow_maps,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _build_report(dataset_type: str, label: str, level: str) -> VerificationReport:
    return VerificationReport(source=label, dataset_type=dataset_type, level=level)


@dataclass(frozen=True)
class ShadowDataSource:
    """Where a shadow dataset is and how to read its fields: the one description that `open_shadow_dataset`,
    `verify_dataset` and `create_dataloaders` take (or build from the same keyword arguments).

    `data_dir` is a custom folder, a benchmark tar or folder, or a local `save_to_disk` folder (hf); `dataset_name` a
    Hub id (hf, or the benchmark's). `cache_dir` is the Hugging Face download cache, never the latent cache
    (`latent_cache_dir`). The `*_column` fields override the Hugging Face column names (`HF_COLUMN_DEFAULTS`)."""

    dataset_type: DatasetType = "custom"
    data_dir: str | Path | None = None
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    cache_dir: str | None = None
    split: str = "train"
    image_column: str | None = None
    mask_column: str | None = None
    shadow_column: str | None = None
    theta_column: str | None = None
    phi_column: str | None = None
    size_column: str | None = None
    object_id_column: str | None = None

    @classmethod
    def from_path(cls, path: str | Path, dataset_type: DatasetType | None = None, **fields) -> ShadowDataSource:
        """A source named by one path or Hub id (what `python dataset_loading.py verify PATH` takes); `dataset_type`
        is inferred when None."""
        dataset_type = dataset_type or infer_dataset_type(path)
        on_hub = dataset_type == "hf" or (
            dataset_type == "benchmark" and str(path) == BENCHMARK_HUB_ID and not Path(path).exists()
        )
        if on_hub:
            return cls(dataset_type, dataset_name=str(path), **fields)
        return cls(dataset_type, data_dir=path, **fields)

    @property
    def columns(self) -> dict[str, str | None]:
        """Role (object, mask, shadow, theta, phi, size) -> the column name override, or None."""
        return {role: getattr(self, option) for role, option in HF_COLUMN_OPTIONS.items()}

    @property
    def label(self) -> str:
        """The source as a person names it: the folder or file, else the Hub id."""
        return str(self.data_dir if self.data_dir is not None else self.dataset_name or BENCHMARK_HUB_ID)

    def resolved(self) -> ShadowDataSource:
        """Checks the description and fills in what follows from it: the benchmark's Hub id read as the benchmark, a
        local `data_dir` as the name of an hf dataset. Raises ValueError naming the missing field."""
        if self.dataset_type not in DATASET_TYPES:
            raise ValueError(f"Unknown `dataset_type` {self.dataset_type!r}; allowed: {', '.join(DATASET_TYPES)}.")
        if self.dataset_type == "hf" and self.dataset_name == BENCHMARK_HUB_ID:
            logger.info("`dataset_name` is the public benchmark: reading it with dataset_type='benchmark'.")
            return dataclasses.replace(self, dataset_type="benchmark").resolved()
        if self.dataset_type == "custom" and self.data_dir is None:
            raise ValueError(
                "`data_dir` is required for dataset_type='custom' (a folder with objects/, masks/, shadows/)."
            )
        if self.dataset_type == "hf" and self.dataset_name is None:
            if self.data_dir is None:
                raise ValueError("`dataset_name` (a Hub id or a local path) is required for dataset_type='hf'.")
            return dataclasses.replace(self, dataset_name=str(self.data_dir))
        return self


def as_data_source(
    source: ShadowDataSource | DatasetType, data_dir: str | Path | None, dataset_name: str | None, fields: dict
) -> ShadowDataSource:
    """`source` itself, or a ShadowDataSource built from a dataset type (`source`, or `dataset_type=` among `fields`)
    and the same keywords as its fields, so the functions that take a source keep their keyword interface."""
    if isinstance(source, ShadowDataSource):
        extra = [name for name, value in (("data_dir", data_dir), ("dataset_name", dataset_name)) if value is not None]
        if extra or fields:
            raise ValueError(
                f"Pass either a ShadowDataSource or its fields, not both: got {', '.join(extra + sorted(fields))} too."
            )
        return source
    fields = dict(fields)
    source = fields.pop("dataset_type", source)  # `dataset_type=` is the keyword spelling of a type as `source`
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(ShadowDataSource)})
    if unknown:
        raise TypeError(
            f"Unexpected argument(s) {', '.join(unknown)}; a data source takes the fields of ShadowDataSource."
        )
    return ShadowDataSource(source, data_dir=data_dir, dataset_name=dataset_name, **fields)


def _scan(
    source: ShadowDataSource, *, level: str, num_threads: int | None = None
) -> tuple[_ImageSource | None, list[SampleRecord], VerificationReport]:
    """Reads the structure and metadata of a resolved `source` and checks its images to `level`: the one scan."""
    if source.dataset_type == "custom":
        root = Path(source.data_dir)
        report = _build_report(source.dataset_type, str(root), level)
        image_source, records = _scan_custom(root, report)
    elif source.dataset_type == "benchmark":
        if source.data_dir is not None:
            path = Path(source.data_dir)
        else:
            path = _download_benchmark(source.dataset_name or BENCHMARK_HUB_ID, source.cache_dir)
        report = _build_report(source.dataset_type, str(path), level)
        image_source, records = _scan_benchmark(path, report)
    else:
        report = _build_report(source.dataset_type, str(source.dataset_name), level)
        image_source, records = _scan_hf(
            str(source.dataset_name),
            report,
            dataset_config_name=source.dataset_config_name,
            cache_dir=source.cache_dir,
            split=source.split,
            columns=source.columns,
            object_id_column=source.object_id_column,
        )
    if image_source is not None:
        _check_images(image_source, records, report, level, num_threads)
    if report.ok and not records:
        report.error("empty_dataset", report.source, "contains no samples.")
    if not records and source.data_dir is not None and Path(source.data_dir).exists():
        looks_like = infer_dataset_type(source.data_dir)
        if looks_like != source.dataset_type:  # the usual cause of an "empty" or "missing folders" dataset
            hint = (
                f"is read as `--dataset_type {source.dataset_type}` but looks like the {looks_like} layout: "
                f"pass `--dataset_type {looks_like}`."
            )
            report.errors.insert(0, Problem("wrong_dataset_type", report.source, hint))  # first: it explains the rest
    report.num_samples = len(records)
    return image_source, records, report


def warn_benchmark_training() -> None:
    """Loud on purpose: the benchmark is the paper's test set (docs/design.md §4)."""
    message = (
        f"You are TRAINING on the public benchmark ({BENCHMARK_HUB_ID}). It is the paper's TEST set: a model trained on "
        "it can no longer be evaluated on it, and every benchmark number it produces becomes meaningless. Train on "
        "your own renders (dataset_type='custom' or 'hf') and keep the benchmark for evaluation."
    )
    logger.warning(message)
    warnings.warn(message, UserWarning, stacklevel=3)


def open_shadow_dataset(
    source: ShadowDataSource | DatasetType = "custom",
    data_dir: str | Path | None = None,
    dataset_name: str | None = None,
    image_size: int = DEFAULT_RESOLUTION,
    *,
    random_flip: bool = False,
    binarize_masks: bool = True,
    invert_shadow_maps: bool = False,
    verify: VerifyLevel = "quick",
    for_training: bool = False,
    num_threads: int | None = None,
    **source_fields,
) -> ShadowDataset:
    """The whole dataset (no split) as a `ShadowDataset`, after checking it; raises `DatasetVerificationError` listing
    every problem. `source`: a `ShadowDataSource`, or its `dataset_type` with the other fields as keywords.
    `verify`: "metadata" (structure and metadata only), "quick" (+ image headers and sizes) or "full" (+ decode every
    image and check its values: what `python dataset_loading.py verify` does). The result can go straight to
    `create_dataloaders`, which then does not scan again."""
    check_image_size(image_size)
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"Unknown `verify` {verify!r}; allowed: {', '.join(VERIFY_LEVELS)}.")
    source = as_data_source(source, data_dir, dataset_name, source_fields).resolved()
    image_source, records, report = _scan(source, level=verify, num_threads=num_threads)
    if not report.ok:
        raise DatasetVerificationError(report)
    if report.warnings:
        logger.warning("%s", report.format())
    if source.dataset_type == "benchmark" and for_training:
        warn_benchmark_training()
    return ShadowDataset(
        image_source,
        records,
        image_size,
        random_flip=random_flip,
        binarize_masks=binarize_masks,
        invert_shadow_maps=invert_shadow_maps,
        dataset_type=source.dataset_type,
        report=report,
    )


def verify_dataset(
    source: ShadowDataSource | str | Path | None = None,
    dataset_type: DatasetType | None = None,
    *,
    level: VerifyLevel = "full",
    num_threads: int | None = None,
    raise_on_error: bool = False,
    **source_fields,
) -> VerificationReport:
    """Every problem of a dataset at once. `source`: a `ShadowDataSource`, or a path or Hub id (a custom folder, a
    benchmark tar or folder, a `save_to_disk` folder) with the other fields as keywords, or None with `data_dir` /
    `dataset_name` as create_dataloaders takes them; `dataset_type` is inferred when None. `level="full"` decodes
    every image; "quick" reads headers only. Returns the report; with `raise_on_error` raises
    `DatasetVerificationError` (listing every problem) when there is any error."""
    if level not in VERIFY_LEVELS:
        raise ValueError(f"Unknown `level` {level!r}; allowed: {', '.join(VERIFY_LEVELS)}.")
    if isinstance(source, ShadowDataSource):
        if dataset_type is not None:
            raise ValueError("Pass either a ShadowDataSource or a `dataset_type`, not both.")
        source = as_data_source(source, None, None, source_fields)
    elif source is not None:
        source = ShadowDataSource.from_path(source, dataset_type, **source_fields)
    else:
        data_dir, dataset_name = source_fields.pop("data_dir", None), source_fields.pop("dataset_name", None)
        named = data_dir if data_dir is not None else dataset_name
        if named is None and dataset_type != "benchmark":
            raise ValueError("`verify_dataset` needs `source` (a path or Hub id), or `data_dir` / `dataset_name`.")
        source = as_data_source(dataset_type or infer_dataset_type(named), data_dir, dataset_name, source_fields)
    source = source.resolved()
    try:
        _, _, report = _scan(source, level=level, num_threads=num_threads)
    except ValueError as exc:  # e.g. the Hub could not be reached
        report = _build_report(source.dataset_type, source.label, level)
        report.error("unreadable_dataset", source.label, str(exc))
    if raise_on_error and not report.ok:
        raise DatasetVerificationError(report)
    return report


def merge_custom_datasets(sources: Sequence[str | Path], output: str | Path) -> int:
    """Custom folders `sources` joined into ONE custom folder `output`, so that training reads them as one set: sample
    `key` of the i-th source becomes `<i>-<key>` (files hard-linked where the file system allows, else copied), and its
    `object_id` `<i>-<object_id>`, so that objects of different sources never share an id (training splits its
    validation by object). Every source is verified first (headers and metadata); any error stops the merge before
    anything is written. Returns the number of samples merged."""
    if len(sources) < 2:
        raise ValueError(f"`merge` needs at least two source folders, got {len(sources)}.")
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"Output folder {output} is not empty; merge into a new folder.")
    scanned = []
    for source in sources:
        report = _build_report("custom", str(source), "quick")
        files, records = _scan_custom(Path(source), report)
        if not report.ok:
            raise DatasetVerificationError(report)
        metadata = {key: entry for key, (entry, _) in _read_custom_metadata(Path(source), report).items()}
        scanned.append((files, records, metadata))
    for folder_name in CUSTOM_FOLDERS.values():
        (output / folder_name).mkdir(parents=True, exist_ok=True)
    merged = {}
    for index, (files, records, metadata) in enumerate(scanned):
        for record, refs in zip(records, files.refs):
            key = f"{index}-{record.id}"
            for role, path in refs.items():
                target = output / CUSTOM_FOLDERS[role] / f"{key}{path.suffix}"
                try:
                    os.link(path, target)
                except OSError:  # another file system, or links not allowed
                    shutil.copy2(path, target)
            entry = dict(metadata[record.id])
            entry.pop("file_name", None)  # metadata.jsonl's link to the images: the key says it in metadata.json
            if entry.get("object_id") is not None:
                entry["object_id"] = f"{index}-{entry['object_id']}"
            merged[key] = entry
    partial = output / "metadata.json.partial"
    partial.write_text(json.dumps(merged, indent=1))
    os.replace(partial, output / "metadata.json")  # the folder is a dataset only once its metadata is whole
    return len(merged)


def infer_dataset_type(path: str | Path) -> DatasetType:
    """custom / hf / benchmark from what a path looks like (a Hub id that is not a local path means hf)."""
    candidate = Path(path)
    if str(path) == BENCHMARK_HUB_ID and not candidate.exists():
        return "benchmark"
    if candidate.is_file():
        return "benchmark" if candidate.name.lower().endswith(TAR_SUFFIXES) else "custom"
    if candidate.is_dir():
        if any(
            (candidate / name).exists() for name in ("objects", "masks", "shadows", "metadata.json", "metadata.jsonl")
        ):
            return "custom"
        if any((candidate / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "hf"
        for file in candidate.rglob("*"):
            if file.name.lower().endswith(TAR_SUFFIXES) or ".image." in file.name:
                return "benchmark"
        return "custom"
    text = str(path)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return "hf"
    return "custom"


# --------------------------------------------------------------------------------------------------------------------
# 7. Split: deterministic, by object when an object id is present
# --------------------------------------------------------------------------------------------------------------------


def split_indices(records: Sequence[SampleRecord], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, validation) indices. Samples sharing an `object_id` stay on one side (no object in both splits, as the
    paper splits by mesh); samples without one are split individually. Each group's rank comes from a hash of
    (seed, group), so the split is the same on every machine, and adding data moves few existing samples."""
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction!r}.")
    indices = list(range(len(records)))
    if val_fraction == 0:
        return indices, []
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        key = f"object:{record.object_id}" if record.object_id is not None else f"sample:{record.id}"
        groups.setdefault(key, []).append(index)
    if len(groups) < 2:
        raise ValueError(
            f"`val_fraction`={val_fraction} needs at least 2 objects/samples to split, found {len(groups)}; pass "
            "val_fraction=0."
        )
    ranked = sorted(groups, key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).hexdigest())
    target = val_fraction * len(records)
    validation: list[int] = []
    for key in ranked[:-1]:  # the last group always stays in training
        if len(validation) >= target:
            break
        validation.extend(groups[key])
    validation_set = set(validation)
    return [i for i in indices if i not in validation_set], sorted(validation)


# --------------------------------------------------------------------------------------------------------------------
# 8. Latent cache
# --------------------------------------------------------------------------------------------------------------------

_CACHE_TENSORS = ("object_latents", "shadow_latents", "mask_latent")
# Safe to share between datasets: every cache lives in its own folder named by its key.
DEFAULT_LATENT_CACHE_DIR = Path(os.environ.get("SHADOW_LATENT_CACHE", Path.home() / ".cache" / "shadow_latents"))
_CACHE_FLIPPED_TENSORS = ("object_latents_flipped", "shadow_latents_flipped")


def vae_identity(vae) -> str:
    """Class, config hash, weight checksum and dtype of a VAE: any change rebuilds a latent cache."""
    config = {key: value for key, value in dict(vae.config).items() if not key.startswith("_")}
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    weights = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        weights.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        weights.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    dtype = next(vae.parameters()).dtype
    return f"{type(vae).__name__}:{config_hash[:16]}:{weights.hexdigest()[:16]}:{str(dtype).removeprefix('torch.')}"


def latent_cache_key(
    dataset: ShadowDataset, vae, dtype: torch.dtype, with_flip: bool, mask_channels: int = MASK_CHANNELS
) -> dict:
    key = {
        "format": LATENT_CACHE_FORMAT,
        "dataset": dataset.fingerprint(),
        "vae": vae_identity(vae),
        "resolution": dataset.image_size,
        "dtype": str(dtype).removeprefix("torch."),
        "orientations": ["original", "flipped"] if with_flip else ["original"],
    }
    if mask_channels != MASK_CHANNELS:  # named only when not the area-averaged mask: earlier caches keep their key
        key["mask_channels"] = mask_channels
    return key


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class LatentCache:
    """Read-only view of one built cache folder: `manifest.json` + `shard-XXXXX.safetensors` (memory-mapped)."""

    def __init__(self, folder: Path, manifest: dict, hit: bool, reason: str | None = None):
        self.folder = Path(folder)
        self.manifest = manifest
        self.hit = hit  # True: reused; False: built by this call
        self.reason = reason  # why it was (re)built
        self._handles: dict[int, Any] = {}

    @property
    def num_samples(self) -> int:
        return self.manifest["num_samples"]

    @property
    def with_flip(self) -> bool:
        return "flipped" in self.manifest["key"]["orientations"]

    @property
    def shard_size(self) -> int:
        return self.manifest["shard_size"]

    def __len__(self) -> int:
        return self.num_samples

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}  # memory maps are per process
        return state

    def _handle(self, shard: int):
        from safetensors import safe_open

        if shard not in self._handles:
            path = self.folder / self.manifest["shards"][shard]
            try:
                self._handles[shard] = safe_open(str(path), framework="pt", device="cpu")
            except Exception as exc:
                raise SampleLoadError(
                    f"Latent cache shard {path} is unreadable ({_describe_exception(exc)}); delete {self.folder} to "
                    "rebuild it."
                ) from None
        return self._handles[shard]

    def read(self, index: int, flipped: bool = False) -> dict[str, torch.Tensor]:
        """`object_latents` [4,h,w], `shadow_latents` [4,h,w], `mask_latent` [k*k,h,w] (`mask_to_latent`), float32."""
        if flipped and not self.with_flip:
            raise ValueError(
                f"The latent cache at {self.folder} holds no flipped latents; rebuild it with with_flip=True."
            )
        shard, row = divmod(index, self.shard_size)
        handle = self._handle(shard)
        names = (
            ("object_latents_flipped", "shadow_latents_flipped") if flipped else ("object_latents", "shadow_latents")
        )
        sample = {
            "object_latents": handle.get_slice(names[0])[row : row + 1][0].float(),
            "shadow_latents": handle.get_slice(names[1])[row : row + 1][0].float(),
            "mask_latent": handle.get_slice("mask_latent")[row : row + 1][0].float(),
        }
        if flipped:  # area averaging over aligned blocks commutes with the flip exactly
            sample["mask_latent"] = flip_mask_latent(sample["mask_latent"])
        return sample


def _open_cache(folder: Path, key_hash: str, hit: bool, reason: str | None = None) -> LatentCache | None:
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("key_hash") != key_hash or not all((folder / name).exists() for name in manifest["shards"]):
        return None
    if broken := _broken_shards(folder, manifest, key_hash):
        # a truncated or overwritten shard would fail (or with --skip_bad_samples, drop) every sample it holds
        # mid-run: the cache is derived data, so it is a miss and those shards are encoded again
        logger.warning("Latent cache %s: %s truncated or unreadable; encoding it again.", folder, ", ".join(broken))
        return None
    return LatentCache(folder, manifest, hit=hit, reason=reason)


def _broken_shards(folder: Path, manifest: dict, key_hash: str) -> list[str]:
    """The shards of a cache whose header does not say they are complete (or that cannot be read at all)."""
    total, size = manifest.get("num_samples"), manifest.get("shard_size")
    if not isinstance(total, int) or not isinstance(size, int) or size < 1:
        return list(manifest["shards"])
    return [
        name
        for index, name in enumerate(manifest["shards"])
        if not _shard_is_complete(folder / name, key_hash, min(total, (index + 1) * size) - index * size)
    ]


def _explain_miss(cache_dir: Path, key: dict, label: str) -> str:
    """Why no cache matched: the key parts that differ from the nearest earlier cache of the same source."""
    best: tuple[int, list[str], Path] | None = None
    for manifest_path in sorted(cache_dir.glob("*/manifest.json")):
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if manifest.get("source") != label:
            continue
        old = manifest.get("key", {})
        differing = [part for part in key if old.get(part) != key[part]]
        if not differing:
            return f"{manifest_path.parent.name} is incomplete (a shard is missing, truncated or unreadable)"
        if differing and (best is None or len(differing) < best[0]):
            best = (len(differing), differing, manifest_path.parent)
    if best is None:
        return "no earlier cache of this dataset"
    names = {
        "format": "cache format",
        "dataset": "dataset files or metadata",
        "vae": "VAE (config or weights)",
        "resolution": "resolution",
        "dtype": "dtype",
        "orientations": "flip orientations",
        "mask_channels": "mask channels",
    }
    return f"changed since {best[2].name}: {', '.join(names.get(part, part) for part in best[1])}"


@torch.no_grad()
def _encode_batch(vae, batch: dict, spec: _CacheBuild) -> dict[str, torch.Tensor]:
    object_images = batch["object_image"]
    shadow_inputs = shadow_to_vae_input(batch["shadow_map"])
    encoded = {
        "object_latents": encode_latents(vae, object_images),
        "shadow_latents": encode_latents(vae, shadow_inputs),
    }
    latent_hw = tuple(encoded["object_latents"].shape[-2:])
    encoded["mask_latent"] = mask_to_latent(batch["mask"], latent_hw, spec.mask_channels)
    if spec.with_flip:  # encode the flipped images: flipping a latent is not the latent of the flipped image
        encoded["object_latents_flipped"] = encode_latents(vae, torch.flip(object_images, dims=[-1]))
        encoded["shadow_latents_flipped"] = encode_latents(vae, torch.flip(shadow_inputs, dims=[-1]))
    return {name: tensor.to("cpu", spec.dtype) for name, tensor in encoded.items()}


def _shard_is_complete(path: Path, key_hash: str, rows: int) -> bool:
    from safetensors import safe_open

    if not path.exists():
        return False
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
    except Exception:
        return False
    return metadata.get("key_hash") == key_hash and metadata.get("rows") == str(rows)


@dataclass(frozen=True)
class _CacheBuild:
    """How `build_latent_cache` encodes: storage dtype, flipped copies, encode batch, loading workers, shard rows,
    the mask's channels (`mask_to_latent`)."""

    dtype: torch.dtype
    with_flip: bool
    batch_size: int
    num_workers: int
    shard_size: int
    mask_channels: int = MASK_CHANNELS


def _write_cache(dataset: ShadowDataset, vae, folder: Path, key: dict, key_hash: str, spec: _CacheBuild) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    images = dataset.without_flip()
    total = len(images)
    shards = [f"shard-{i:05d}.safetensors" for i in range(math.ceil(total / spec.shard_size))]
    was_training = vae.training
    vae.eval()
    started = time.perf_counter()
    latent_shape = None
    try:
        for shard_index, name in enumerate(shards):
            start, stop = shard_index * spec.shard_size, min(total, (shard_index + 1) * spec.shard_size)
            path = folder / name
            if _shard_is_complete(path, key_hash, stop - start):  # resume an interrupted build
                continue
            loader = DataLoader(
                Subset(images, range(start, stop)),
                batch_size=spec.batch_size,
                num_workers=spec.num_workers,
                collate_fn=collate_samples,
            )
            parts: dict[str, list[torch.Tensor]] = {}
            for batch in loader:
                for tensor_name, tensor in _encode_batch(vae, batch, spec).items():
                    parts.setdefault(tensor_name, []).append(tensor)
            tensors = {tensor_name: torch.cat(chunks).contiguous() for tensor_name, chunks in parts.items()}
            latent_shape = list(tensors["object_latents"].shape[1:])
            tmp = path.with_name(f"{name}.tmp-{os.getpid()}")
            save_file(
                tensors, str(tmp), metadata={"key_hash": key_hash, "rows": str(stop - start), "start": str(start)}
            )
            os.replace(tmp, path)  # readers never see a half-written shard
            logger.info("Latent cache: %d/%d samples encoded (%.1f s).", stop, total, time.perf_counter() - started)
    finally:
        vae.train(was_training)
    manifest = {
        "key": key,
        "key_hash": key_hash,
        "source": dataset.image_source.label,
        "num_samples": total,
        "shard_size": spec.shard_size,
        "shards": shards,
        "ids": dataset.ids,
        "latent_shape": latent_shape,
        "tensors": list(_CACHE_TENSORS) + (list(_CACHE_FLIPPED_TENSORS) if spec.with_flip else []),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=1))  # written last: marks completion


def build_latent_cache(
    dataset: ShadowDataset,
    vae,
    latent_cache_dir: str | Path = DEFAULT_LATENT_CACHE_DIR,
    *,
    dtype: torch.dtype = torch.float16,
    with_flip: bool = False,
    batch_size: int = 8,
    num_workers: int = 0,
    shard_size: int = 1024,
    mask_channels: int = MASK_CHANNELS,
    accelerator=None,
) -> LatentCache:
    """Encodes every sample of `dataset` with `vae` once and stores the latents in `latent_cache_dir`, or reuses a cache
    with the same key (dataset fingerprint + VAE identity + resolution + dtype + orientations). `with_flip` also encodes
    the flipped images (the latent of a flipped image is not the flipped latent). `mask_channels` is the UNet's
    (`ShadowUNet.mask_channels`): the mask latent it takes, 1 = area-averaged (the key names it when not 1). With an
    `accelerate` Accelerator only the local main process encodes and writes; the others wait, then read. The one
    latent-cache API: `create_dataloaders(..., cache_latents=True)` calls it."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"`shard_size` must be a positive integer, got {shard_size!r}.")
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"`dtype` must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}.")
    if next(vae.parameters()).dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        logger.warning("This VAE asks for float32 (force_upcast): encoding in float16 may overflow to NaN.")
    mask_samples_per_side(mask_channels)
    spec = _CacheBuild(dtype, with_flip, batch_size, num_workers, shard_size, mask_channels)
    cache_dir = Path(latent_cache_dir)
    key = latent_cache_key(dataset, vae, dtype, with_flip, mask_channels)
    key_hash = _key_hash(key)
    folder = cache_dir / f"latents-{dataset.image_size}px-{key_hash[:16]}"

    def load_or_build(writer: bool) -> LatentCache:
        cache = _open_cache(folder, key_hash, hit=True)
        if cache is not None:
            logger.info("Latent cache hit: %s (%d samples).", folder, cache.num_samples)
            return cache
        if not writer:
            raise RuntimeError(
                f"The main process did not leave a latent cache at {folder}. Is `latent_cache_dir` on a disk that every "
                "process sees?"
            )
        reason = (
            _explain_miss(cache_dir, key, dataset.image_source.label) if cache_dir.exists() else "no cache folder yet"
        )
        logger.info("Latent cache miss (%s): encoding %d samples into %s.", reason, len(dataset), folder)
        _write_cache(dataset, vae, folder, key, key_hash, spec)
        cache = _open_cache(folder, key_hash, hit=False, reason=reason)
        if cache is None:
            raise RuntimeError(f"The latent cache at {folder} could not be read back after writing it.")
        return cache

    if accelerator is None or getattr(accelerator, "num_processes", 1) == 1:
        return load_or_build(writer=True)
    with accelerator.local_main_process_first():  # the writer goes first; the others wait at the barrier, then read
        return load_or_build(writer=accelerator.is_local_main_process)


class CachedLatentDataset(Dataset):
    """Cached latents + the light of each sample: `object_latents` [4,h,w], `shadow_latents` [4,h,w], `mask_latent`
    [k*k,h,w], `light` [3], `theta`/`phi`/`size`, `id`, `track` (docs/design.md §8). With `random_flip` half the items
    read the latents of the flipped images, with phi mirrored."""

    def __init__(self, cache: LatentCache, records: list[SampleRecord], random_flip: bool = False, flip_seed: int = 0):
        if len(records) != cache.num_samples or [r.id for r in records] != cache.manifest["ids"]:
            raise ValueError(f"The latent cache at {cache.folder} does not hold these samples; rebuild it.")
        if random_flip and not cache.with_flip:
            raise ValueError(
                f"`random_flip` needs flipped latents, but the cache at {cache.folder} was built without them; build it "
                "with with_flip=True (create_dataloaders does when random_flip=True)."
            )
        self.cache = cache
        self.records = list(records)
        self.random_flip = random_flip
        self.flips = FlipSchedule(flip_seed)

    def __len__(self) -> int:
        return len(self.records)

    def load_sample(self, index: int, flip: bool = False) -> dict:
        record = self.records[index]
        return _with_light_and_id(self.cache.read(index, flipped=flip), record, flip)

    def __getitem__(self, index: int) -> dict:
        return self.load_sample(index, flip=self.random_flip and self.flips(index))


# --------------------------------------------------------------------------------------------------------------------
# 9. Data loaders
# --------------------------------------------------------------------------------------------------------------------


def create_dataloaders(
    source: ShadowDataSource | ShadowDataset | DatasetType = "custom",
    data_dir: str | Path | None = None,
    dataset_name: str | None = None,
    batch_size: int = 8,
    num_workers: int = 4,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    random_flip: bool = False,
    *,
    split_seed: int | None = None,
    binarize_masks: bool = True,
    invert_shadow_maps: bool = False,
    verify: VerifyLevel = "quick",
    for_training: bool = False,
    shuffle: bool | None = None,
    cache_latents: bool = False,
    vae=None,
    latent_cache_dir: str | Path | None = None,
    mask_channels: int = MASK_CHANNELS,
    accelerator=None,
    drop_last: bool = False,
    pin_memory: bool = False,
    skip_bad_samples: bool = False,
    **source_fields,
) -> tuple[DataLoader, DataLoader | None]:
    """(train_loader, val_loader) over one dataset (see the module docstring for batches and sources).

    `source`: a `ShadowDataSource` (or its `dataset_type` with the other fields as keywords), opened and checked here;
    or a `ShadowDataset` that `open_shadow_dataset` already opened and checked, which is used as it is (no second
    scan; `image_size` must then be None or its own, and the reading options are its own).

    The split is deterministic for `split_seed` (default: `seed`), by `object_id` when present; `val_fraction=0` gives
    (all, None); `seed` also drives the shuffling and the flips. The training loader is shuffled (`shuffle=None`)
    except for the benchmark, which is never split or shuffled: (its samples in key order, None); pass `shuffle=False`
    to read any dataset in order (evaluation). `for_training=True` (what the training script passes) warns loudly when
    that is the benchmark.

    `cache_latents=True` with the `vae` (and `latent_cache_dir`, default DEFAULT_LATENT_CACHE_DIR): both loaders yield
    cached latents instead of images (built once by `build_latent_cache`; with an `accelerator` only the local main
    process writes, the others wait and read; `mask_channels`: the UNet's, `ShadowUNet.mask_channels`). Raises
    `DatasetVerificationError` listing every problem of the dataset.

    A sample that passed the checks but fails to load later (e.g. a truncated PNG) raises `SampleLoadError` naming its
    files; with `skip_bad_samples=True` it is left out of its batch instead and listed in the batch's `skipped`.
    """
    for name, value, minimum in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction!r}.")
    if cache_latents and vae is None:
        raise ValueError("`cache_latents=True` needs the `vae` that encodes the latents.")
    if isinstance(source, ShadowDataset):
        if image_size is not None and image_size != source.image_size:
            raise ValueError(f"`image_size`={image_size} differs from the opened dataset's ({source.image_size}).")
        if data_dir is not None or dataset_name is not None or source_fields:
            raise ValueError("An opened ShadowDataset already names its data: pass no source fields with it.")
        dataset = source.with_flips(random_flip)  # `for_training` warned (or not) when it was opened
        image_size = dataset.image_size
    else:
        image_size = DEFAULT_RESOLUTION if image_size is None else image_size
        dataset = open_shadow_dataset(
            as_data_source(source, data_dir, dataset_name, source_fields),
            image_size=image_size,
            random_flip=random_flip,
            binarize_masks=binarize_masks,
            invert_shadow_maps=invert_shadow_maps,
            verify=verify,
            for_training=for_training,
        )
    is_benchmark = dataset.dataset_type == "benchmark"
    if is_benchmark:
        if val_fraction:
            logger.info("The benchmark is read whole and in order: `val_fraction` is ignored.")
        train_indices, val_indices = list(range(len(dataset))), []
    else:
        train_indices, val_indices = split_indices(
            dataset.records, val_fraction, seed if split_seed is None else split_seed
        )

    if cache_latents:
        cache = build_latent_cache(
            dataset,
            vae,
            latent_cache_dir or DEFAULT_LATENT_CACHE_DIR,
            with_flip=random_flip,
            mask_channels=mask_channels,
            accelerator=accelerator,
        )
        train_dataset: Dataset = CachedLatentDataset(cache, dataset.records, random_flip=random_flip, flip_seed=seed)
        val_dataset: Dataset = CachedLatentDataset(cache, dataset.records, random_flip=False)
    else:
        train_dataset = dataset.with_flips(random_flip, flip_seed=seed)
        val_dataset = dataset.without_flip()
        for loader_dataset in (train_dataset, val_dataset):  # opt-in: a failed sample becomes a `skipped` marker
            loader_dataset.skip_bad_samples = skip_bad_samples

    generator = torch.Generator().manual_seed(seed)
    common = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "collate_fn": collate_samples,
        "pin_memory": pin_memory,
    }
    if num_workers > 0:
        common["persistent_workers"] = True
    if shuffle and is_benchmark:
        raise ValueError("The benchmark is read in order for evaluation: `shuffle=True` is not allowed for it.")
    train_loader = EpochDataLoader(
        train_dataset if is_benchmark else Subset(train_dataset, train_indices),
        shuffle=(not is_benchmark) if shuffle is None else shuffle,
        drop_last=drop_last and not is_benchmark,
        generator=generator,
        seed=seed,
        **common,
    )
    val_loader = None
    if val_indices:
        val_loader = DataLoader(Subset(val_dataset, val_indices), shuffle=False, **common)
    groups = {record.object_id for record in dataset.records if record.object_id is not None}
    # Without a validation split the one loader serves every sample (evaluation, caching): say so, not "N train".
    split = f"{len(train_indices)} train / {len(val_indices)} validation" if val_indices else "one loader, no split"
    logger.info(
        "Data: %s (%s), %d samples at %dpx: %s%s%s.",
        dataset.image_source.label,
        dataset.dataset_type,
        len(dataset),
        image_size,
        split,
        f", split by object ({len(groups)} objects)" if groups and val_indices else "",
        ", cached latents" if cache_latents else "",
    )
    return train_loader, val_loader


# --------------------------------------------------------------------------------------------------------------------
# 10. Command line
# --------------------------------------------------------------------------------------------------------------------


def _add_column_arguments(parser: argparse.ArgumentParser) -> None:
    for option in (*HF_COLUMN_OPTIONS.values(), "object_id_column"):
        parser.add_argument(f"--{option}", default=None, help="Hugging Face datasets: column name override.")
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--cache_dir", default=None, help="Hugging Face download cache.")
    parser.add_argument("--split", default="train")


def _source_fields(args: argparse.Namespace) -> dict:
    """The ShadowDataSource fields that `_add_column_arguments` adds to a command."""
    names = (*HF_COLUMN_OPTIONS.values(), "object_id_column", "dataset_config_name", "cache_dir", "split")
    return {name: getattr(args, name) for name in names}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    verify_parser = commands.add_parser("verify", help="Report every problem of a dataset; exit status 1 on errors.")
    verify_parser.add_argument("path", help="custom folder, benchmark tar/folder, save_to_disk folder or Hub id")
    verify_parser.add_argument("--dataset_type", choices=DATASET_TYPES, default=None, help="inferred when omitted")
    verify_parser.add_argument("--quick", action="store_true", help="headers and metadata only (no pixel checks)")
    verify_parser.add_argument("--num_threads", type=int, default=None)
    verify_parser.add_argument("--all_warnings", action="store_true", help="list every warning, not 10 per kind")
    _add_column_arguments(verify_parser)

    merge_parser = commands.add_parser(
        "merge", help="Join custom folders into one (keys and object ids prefixed by the source's number)."
    )
    merge_parser.add_argument("output", help="the new custom folder (must not exist, or be empty)")
    merge_parser.add_argument("sources", nargs="+", help="two or more custom folders")

    cache_parser = commands.add_parser("cache", help="Build (or check) the latent cache that training will reuse.")
    cache_parser.add_argument("--dataset_type", choices=DATASET_TYPES, default="custom")
    cache_parser.add_argument("--train_data_dir", "--data_dir", dest="data_dir", default=None)
    cache_parser.add_argument("--dataset_name", default=None)
    cache_parser.add_argument("--pretrained_model_name_or_path", required=True, help="SDXL base (its vae/ is used)")
    cache_parser.add_argument("--vae_subfolder", default="vae")
    cache_parser.add_argument("--resolution", "--image_size", dest="resolution", type=int, default=DEFAULT_RESOLUTION)
    cache_parser.add_argument("--latent_cache_dir", required=True, help="where the latent shards are written")
    cache_parser.add_argument("--random_flip", action="store_true", help="also encode the flipped images")
    cache_parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    cache_parser.add_argument(
        "--mask_channels", type=int, default=MASK_CHANNELS, help="the UNet's mask channels (train --mask_channels)"
    )
    cache_parser.add_argument("--vae_dtype", choices=("float16", "bfloat16", "float32"), default="float32")
    cache_parser.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    cache_parser.add_argument("--encode_batch_size", dest="batch_size", type=int, default=8, help="images per VAE call")
    cache_parser.add_argument("--dataloader_num_workers", "--num_workers", dest="num_workers", type=int, default=4)
    _add_column_arguments(cache_parser)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "verify":
        report = verify_dataset(
            ShadowDataSource.from_path(args.path, args.dataset_type, **_source_fields(args)),
            level="quick" if args.quick else "full",
            num_threads=args.num_threads,
        )
        print(report.format(max_warnings_per_kind=None if args.all_warnings else 10))
        return 0 if report.ok else 1
    if args.command == "merge":
        try:
            count = merge_custom_datasets(args.sources, args.output)
        except (DatasetVerificationError, ValueError) as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"Merged {count} samples of {len(args.sources)} folders into {args.output}.")
        return 0

    from diffusers import AutoencoderKL

    try:
        check_resolution(args.resolution, "--resolution")
        device = check_device(args.device)
        for name in ("batch_size", "num_workers"):
            if getattr(args, name) < (1 if name == "batch_size" else 0):
                flag = "--encode_batch_size" if name == "batch_size" else "--dataloader_num_workers"
                raise ValueError(f"`{flag}` must be >= {1 if name == 'batch_size' else 0}, got {getattr(args, name)}.")
        mask_samples_per_side(args.mask_channels, "--mask_channels")
        # The scripts' shared rules for a folder they write and a model they load ("Cannot load FLAG NAME as WHAT:
        # reason"); imported here, not at the top, so that the data module itself stays free of the scripts.
        from generate_shadows import is_local_model, named_load_errors, prepare_output_dir

        prepare_output_dir(args.latent_cache_dir, "--latent_cache_dir")
        source = ShadowDataSource(args.dataset_type, args.data_dir, args.dataset_name, **_source_fields(args))
        dataset = open_shadow_dataset(source, image_size=args.resolution, random_flip=args.random_flip)
    except (DatasetVerificationError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    flag, name = "--pretrained_model_name_or_path", args.pretrained_model_name_or_path
    what = f"a model folder with an AutoencoderKL in {args.vae_subfolder}/ (--vae_subfolder)"
    try:
        is_local_model(name, flag, what)
        with named_load_errors(flag, name, what):
            vae = AutoencoderKL.from_pretrained(
                name, subfolder=args.vae_subfolder, torch_dtype=getattr(torch, args.vae_dtype)
            ).to(device)
    except (FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    cache = build_latent_cache(
        dataset,
        vae,
        args.latent_cache_dir,
        dtype=getattr(torch, args.dtype),
        with_flip=args.random_flip,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        mask_channels=args.mask_channels,
    )
    print(f"{'Reused' if cache.hit else 'Built'} latent cache: {cache.folder} ({cache.num_samples} samples).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
