# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Scores a trained ShadowPipeline the way the paper does (Table 2), and checks how well the light controls the shadow.

    python evaluate_shadow.py --pretrained_model_name_or_path PATH_OR_REPO --dataset_type benchmark \\
        [--data_dir benchmark.tar | --dataset_name jasperai/controllable-shadow-generation-benchmark] \\
        [--num_seeds 10] [--num_inference_steps 1] [--resolution 1024] [--eval_batch_size 8] [--limit N] [--output_dir eval/]

Every image is predicted once per seed; soft IoU, RMSE, s-RMSE and ZNCC are computed over the whole image against the
ground truth (docs/design.md §8), averaged over seeds, then reported per benchmark track as mean ± std over images, beside
the paper's Table 2. Beyond the paper, simple estimators read the shadow's direction in the image, its extent and its
edge softness from each map, so that we can tell whether theta, phi and size actually steer the prediction; the same
estimators run on the ground truth to check them.

Several lights (`--light_sets_dir DIR`, a folder rendered by `render_shadow_dataset.py --light_sets ...
--single_light_maps`): each sample is predicted with `pipe(lights=...)`; the composed map is scored against the
rendered multi-light map and each light's own prediction against that light's rendered map (the single-light numbers
for the same objects), with the direction estimator per light; `light_sets.json` and `light_sets.md` in
`--output_dir`.

Outputs in `--output_dir`: `records.jsonl` (one line per image and seed, appended as the run goes, so a stopped run
resumes where it stopped), `settings.json`, `metrics.json` (settings, every record and the summaries), `report.md`,
`plot_size.png` (track 1), `plot_phi.png` (track 2), `plot_theta.png` (track 3), `contact_sheet.png` and `samples/`.

As a library (training validation, the demo):

    results = evaluate(pipe, loader, num_seeds=2, num_inference_steps=1)
    summary = summarize(results.records)          # {track: {metric: {"mean", "std", ...}}}
    write_reports(results, "eval/")
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dataset_loading import BENCHMARK_HUB_ID, DATASET_TYPES, TRACK_NAMES, create_dataloaders
from generate_shadows import load_pipeline, open_image, prepare_output_dir
from pipeline_shadow import (
    Light,
    ObjectLatents,
    check_device,
    check_resolution,
    compose_light_maps,
    estimate_object_height,
    gray_to_tensor,
    image_to_tensor,
    light_coefficients,
    wrap_phi,
)

logger = logging.getLogger(__name__)

DEFAULT_BENCHMARK_DATASET = BENCHMARK_HUB_ID
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
MASK_THRESHOLD = 0.5  # docs/design.md §8: masks are binarised at 0.5 where a binary mask is required
ALL_TRACK = "all"  # records without a benchmark track (custom / hf data) are grouped under this name

METRIC_NAMES = ("iou", "rmse", "s_rmse", "zncc")
METRIC_LABELS = {"iou": "IoU ↑", "rmse": "RMSE ↓", "s_rmse": "s-RMSE ↓", "zncc": "ZNCC ↑"}

# Paper, Table 2, rectified flow, per track (docs/design.md §5). THEIR figures, printed beside ours, never mixed with them.
PAPER_TABLE2 = {
    1: {
        "softness": {"iou": 0.768, "rmse": 0.020, "s_rmse": 0.019, "zncc": 0.982},
        "horizontal": {"iou": 0.732, "rmse": 0.027, "s_rmse": 0.026, "zncc": 0.968},
        "vertical": {"iou": 0.736, "rmse": 0.026, "s_rmse": 0.025, "zncc": 0.971},
    },
    20: {
        "softness": {"iou": 0.818, "rmse": 0.021, "s_rmse": 0.020, "zncc": 0.979},
        "horizontal": {"iou": 0.780, "rmse": 0.030, "s_rmse": 0.028, "zncc": 0.958},
        "vertical": {"iou": 0.776, "rmse": 0.028, "s_rmse": 0.027, "zncc": 0.960},
    },
}
TRACK_TITLES = {
    "softness": "Track 1 — softness (theta 30, phi 0, size varies)",
    "horizontal": "Track 2 — horizontal direction (theta 35, size 2, phi varies)",
    "vertical": "Track 3 — vertical direction (phi 0, size 2, theta varies)",
    ALL_TRACK: "All images",
}

# Settings that change the numbers: a resumed run must match them exactly.
RESUME_KEYS = (
    "model",
    "model_fingerprint",
    "num_inference_steps",
    "resolution",
    "seed",
    "dtype",
    "dataset",
    "dataset_fingerprint",
)

# --------------------------------------------------------------------------------------------------------------------
# 1. Metrics: pure functions on maps in [0, 1]. Each takes [H,W] or a batch [...,H,W] (numpy or torch; a [B,1,H,W]
#    batch is fine) and reduces over the last two axes, in float64.
# --------------------------------------------------------------------------------------------------------------------


def _as_maps(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(array, dtype=np.float64)
    if array.ndim < 2:
        raise ValueError(f"A shadow map must be at least 2-D ([H,W] or [...,H,W]), got shape {array.shape}.")
    return array


def _pair(prediction, target) -> tuple[np.ndarray, np.ndarray]:
    prediction, target = _as_maps(prediction), _as_maps(target)
    if prediction.shape != target.shape:
        raise ValueError(f"`prediction` {prediction.shape} and `target` {target.shape} must have the same shape.")
    return prediction, target


def soft_iou(prediction, target):
    """Soft (fuzzy, Ruzicka) IoU: sum(min(p, g)) / sum(max(p, g)) over the image.

    The Jaccard index with min/max in place of intersection/union, as used for shadow maps by the paper (Tasar et al.
    2024, Table 2) and defined in docs/design.md §8. Identical maps give 1; two empty maps give 1 by definition.
    """
    prediction, target = _pair(prediction, target)
    intersection = np.minimum(prediction, target).sum(axis=(-2, -1))
    union = np.maximum(prediction, target).sum(axis=(-2, -1))
    iou = np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 1.0)
    return iou[()] if iou.ndim == 0 else iou


def rmse(prediction, target):
    """Root mean squared error: sqrt(mean((p - g)^2)) over the image."""
    prediction, target = _pair(prediction, target)
    value = np.sqrt(np.mean((prediction - target) ** 2, axis=(-2, -1)))
    return value[()] if value.ndim == 0 else value


def scale_invariant_rmse(prediction, target):
    """Scale-invariant RMSE: min over a >= 0 of RMSE(a * p, g) (docs/design.md §8).

    Closed form: a* = max(0, <p, g> / <p, p>), the least-squares scale clipped to be non-negative (a* = 0 when p is
    empty). It forgives a shadow that is right in shape but wrong in intensity, which the paper's compositing step
    rescales anyway. After Sun et al. 2019 ("Single Image Portrait Relighting", ACM TOG 38(4)), as cited by the paper.
    """
    prediction, target = _pair(prediction, target)
    dot = (prediction * target).sum(axis=(-2, -1), keepdims=True)
    norm = (prediction * prediction).sum(axis=(-2, -1), keepdims=True)
    scale = np.where(norm > 0, np.maximum(0.0, dot / np.where(norm > 0, norm, 1.0)), 0.0)
    value = np.sqrt(np.mean((scale * prediction - target) ** 2, axis=(-2, -1)))
    return value[()] if value.ndim == 0 else value


def zncc(prediction, target, eps: float = 1e-8):
    """Zero-normalised cross-correlation: mean((p - mean p)(g - mean g)) / (std p * std g), in [-1, 1].

    The Pearson correlation of the two maps' pixels (e.g. Lewis 1995, "Fast Normalized Cross-Correlation"); invariant
    to any gain and offset. 1 = same pattern, -1 = inverted. If either map is constant (std <= eps) it is 0 by
    definition (docs/design.md §8), even when both are the same constant.
    """
    prediction, target = _pair(prediction, target)
    p = prediction - prediction.mean(axis=(-2, -1), keepdims=True)
    g = target - target.mean(axis=(-2, -1), keepdims=True)
    std_p, std_g = np.sqrt((p * p).mean(axis=(-2, -1))), np.sqrt((g * g).mean(axis=(-2, -1)))
    covariance = (p * g).mean(axis=(-2, -1))
    defined = (std_p > eps) & (std_g > eps)
    value = np.where(defined, covariance / np.where(defined, std_p * std_g, 1.0), 0.0)
    value = np.clip(value, -1.0, 1.0)
    return value[()] if value.ndim == 0 else value


METRICS = {"iou": soft_iou, "rmse": rmse, "s_rmse": scale_invariant_rmse, "zncc": zncc}


def compute_metrics(prediction, target) -> dict[str, np.ndarray]:
    """All four metrics for a batch: {name: [B]} (or scalars for a single [H,W] pair)."""
    return {name: function(prediction, target) for name, function in METRICS.items()}


# --------------------------------------------------------------------------------------------------------------------
# 2. Control estimators on one map [H,W] and its object mask [H,W] (docs/design.md §8 "Directions in the image"): x to the
#    right, y UP (pixel rows flipped: y = H - 1 - row), angles in degrees, 0 = right, counter-clockwise, in [0, 360).
#    They return NaN when undefined (empty mask, no shadow).
# --------------------------------------------------------------------------------------------------------------------

SHADOW_FLOOR = 0.05  # shadow values at or below this are ignored by the estimators: a faint haze over the whole
# background would otherwise drag every centroid toward the image centre.


def _as_map(array, name: str) -> np.ndarray:
    array = _as_maps(array)
    array = array.reshape(array.shape[-2:]) if array.ndim > 2 and math.prod(array.shape[:-2]) == 1 else array
    if array.ndim != 2:
        raise ValueError(f"`{name}` must be one map [H,W] (or [1,H,W]), got shape {array.shape}.")
    return array


def _binary(mask) -> np.ndarray:
    return _as_map(mask, "mask") >= MASK_THRESHOLD


def contact_point(mask, bottom_fraction: float = 0.1) -> np.ndarray:
    """The object's ground contact point (x, y) in the y-up frame: the centroid of the mask pixels in the lowest 10 %
    of the rows the mask spans (at least one row). NaN for an empty mask."""
    binary = _binary(mask)
    rows = np.flatnonzero(binary.any(axis=1))
    if rows.size == 0:
        return np.array([np.nan, np.nan])
    top, bottom = rows[0], rows[-1]
    num_rows = max(1, math.ceil(bottom_fraction * (bottom - top + 1)))
    band_rows, band_cols = np.nonzero(binary[bottom - num_rows + 1 : bottom + 1])
    height = binary.shape[0]
    return np.array([band_cols.mean(), height - 1 - (band_rows.mean() + bottom - num_rows + 1)])


def object_height(mask) -> float:
    """The object's height in pixels: the number of rows the mask spans (NaN for an empty mask)."""
    rows = np.flatnonzero(_binary(mask).any(axis=1))
    return float(rows[-1] - rows[0] + 1) if rows.size else float("nan")


def _shadow_weights(shadow, mask, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Shadow mass outside the object (values above `floor`) and the pixel coordinates in the y-up frame."""
    shadow, binary = _as_map(shadow, "shadow"), _binary(mask)
    if shadow.shape != binary.shape:
        raise ValueError(f"`shadow` {shadow.shape} and `mask` {binary.shape} must have the same shape.")
    weights = np.where((shadow > floor) & ~binary, shadow, 0.0)
    rows, cols = np.nonzero(weights)
    coords = np.stack([cols.astype(np.float64), shadow.shape[0] - 1.0 - rows], axis=1)  # [N, 2] (x, y up)
    return weights[rows, cols], coords


def shadow_direction_deg(shadow, mask, floor: float = SHADOW_FLOOR) -> float:
    """Direction of the shadow in the image: the angle of the vector from the contact point to the centroid of the
    shadow mass outside the object, in [0, 360) degrees (0 = right, counter-clockwise, y up). NaN when there is no
    shadow or the centroid sits on the contact point. A light at phi = 0 (image right) gives ~180 (shadow to the left)."""
    weights, coords = _shadow_weights(shadow, mask, floor)
    contact = contact_point(mask)
    if weights.sum() <= 1e-6 or np.isnan(contact).any():
        return float("nan")
    dx, dy = (weights[:, None] * coords).sum(axis=0) / weights.sum() - contact
    if math.hypot(dx, dy) < 1e-6:
        return float("nan")
    return math.degrees(math.atan2(dy, dx)) % 360.0


def shadow_extent(shadow, mask, quantile: float = 0.95, floor: float = SHADOW_FLOOR) -> float:
    """How far the shadow reaches, in pixels: the `quantile` (default 95 %) of the distance from the contact point
    over the shadow mass (weighted by the shadow value), i.e. the far end of the shadow robust to stray pixels. NaN
    when there is no shadow. Divide by `object_height(mask)` to compare objects of different image size."""
    weights, coords = _shadow_weights(shadow, mask, floor)
    contact = contact_point(mask)
    if weights.sum() <= 1e-6 or np.isnan(contact).any():
        return float("nan")
    distances = np.hypot(*(coords - contact).T)
    order = np.argsort(distances)
    cumulative = np.cumsum(weights[order])
    position = np.searchsorted(cumulative, quantile * cumulative[-1])
    return float(distances[order][min(position, len(order) - 1)])


def shadow_softness(shadow, mask=None, low: float = 0.05, high: float = 0.95) -> float:
    """Edge softness: the share of penumbra pixels among shadow pixels, with the map first divided by its peak so that
    a faint but hard shadow is still hard: count(low < s/peak < high) / count(s/peak > low), outside the object if a
    mask is given. 0 = a hard shadow (all umbra), towards 1 = all penumbra; larger lights (size) give softer edges.
    NaN when the map has no shadow (peak <= low)."""
    shadow = _as_map(shadow, "shadow")
    values = shadow[~_binary(mask)] if mask is not None else shadow.ravel()
    peak = values.max() if values.size else 0.0
    if peak <= low:
        return float("nan")
    values = values / peak
    shadowed = values > low
    return float((shadowed & (values < high)).sum() / shadowed.sum())


def angle_error_deg(angle, reference):
    """Smallest signed angle from `reference` to `angle`, in [-180, 180) degrees (NaN propagates). |error| > 90 means
    the shadow points to the wrong side (docs/design.md §8)."""
    difference = (np.asarray(angle, dtype=np.float64) - np.asarray(reference, dtype=np.float64) + 180.0) % 360.0 - 180.0
    return difference[()] if difference.ndim == 0 else difference


def expected_direction_deg(phi):
    """The shadow's direction if the camera looked straight down: opposite the light, phi + 180 (mod 360). With the
    camera raised on the -y side the image direction is this one foreshortened vertically, which never moves it to
    another quadrant: the ground truth's direction must stay within 90 degrees of it."""
    return wrap_phi(np.asarray(phi, dtype=np.float64) + 180.0)


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]  # ties get their average rank


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson correlation of the ranks, ties averaged), ignoring pairs with a NaN. NaN
    when fewer than 3 pairs remain or either side is constant."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size < 3:
        return float("nan")
    rank_x, rank_y = _ranks(x) - (x.size + 1) / 2, _ranks(y) - (y.size + 1) / 2
    denominator = math.sqrt((rank_x**2).sum() * (rank_y**2).sum())
    return float((rank_x * rank_y).sum() / denominator) if denominator > 0 else float("nan")


def control_estimates(shadow, mask) -> dict[str, float]:
    """Direction (deg), extent (px and relative to the object's height) and softness of one map."""
    extent = shadow_extent(shadow, mask)
    return {
        "direction_deg": shadow_direction_deg(shadow, mask),
        "extent_px": extent,
        "extent_rel": extent / object_height(mask),
        "softness": shadow_softness(shadow, mask),
    }


# --------------------------------------------------------------------------------------------------------------------
# 3. The evaluation loop: batched, one prediction per image and seed, records appended to records.jsonl (resumable).
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationResults:
    """`records`: one dict per (image, seed), ordered by (image index, seed). `samples`: a few images per track for the contact sheet,
    {id: {"track", "light", "object" uint8 HxWx3, "prediction" / "ground_truth" uint8 HxW}}."""

    settings: dict
    records: list[dict]
    samples: dict[str, dict] = field(default_factory=dict)


def generator_seed(seed: int, index: int, seed_index: int) -> int:
    """The noise seed of image `index` (its position in the data, in order) under seed number `seed_index`: derived
    from (seed, index, seed_index) alone, so results do not depend on the batch size or on resuming."""
    # Shifted as a Python int (a numpy uint64 >> int is a TypeError with numpy 1.x): 63 bits, a valid torch seed.
    return int(np.random.SeedSequence([seed, index, seed_index]).generate_state(1, dtype=np.uint64)[0]) >> 1


def _to_builtin(value):
    """JSON-safe scalars: numpy -> python, NaN -> None."""
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _from_json(value):
    return float("nan") if value is None else value


def _record_key(record: dict) -> tuple[int, str, int]:
    return int(record["index"]), str(record["id"]), int(record["seed"])


def load_records(path: str | Path) -> list[dict]:
    """Reads records.jsonl, dropping a truncated last line (a run killed mid-write) and rewriting the file without it."""
    path = Path(path)
    if not path.exists():
        return []
    records, lines, broken = [], path.read_text(errors="replace").splitlines(), 0
    for line in lines:
        try:
            record = {key: _from_json(value) for key, value in json.loads(line).items()}
            _record_key(record)  # a line that is JSON but not a record (edited by hand, another file) is broken too
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            broken += 1
            continue
        records.append(record)
    if broken:
        logger.warning(
            "Dropped %d unreadable line(s) from %s (a run stopped mid-write); they will be recomputed.", broken, path
        )
        path.write_text("".join(json.dumps({k: _to_builtin(v) for k, v in r.items()}) + "\n" for r in records))
    return records


def _check_resume(output_dir: Path, settings: dict, overwrite: bool) -> dict[tuple[str, int], dict]:
    """Previous records of the same settings, keyed by (index, id, seed index); a clear error if settings differ."""
    settings_path, records_path = output_dir / "settings.json", output_dir / "records.jsonl"
    if overwrite:
        for path in (settings_path, records_path):
            path.unlink(missing_ok=True)
    if settings_path.exists():
        try:
            previous = json.loads(settings_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            previous = error
        if not isinstance(previous, dict):
            raise ValueError(
                f"{settings_path} is not the settings of an earlier run ({previous}). Pass `--overwrite` to start "
                "afresh there, or choose another `--output_dir`."
            )
        changed = [key for key in RESUME_KEYS if previous.get(key) != settings.get(key)]
        if changed:
            details = "; ".join(f"`{key}`: {previous.get(key)!r} before, {settings.get(key)!r} now" for key in changed)
            raise ValueError(
                f"{output_dir} holds a run with other settings ({details}). Pass `--overwrite` to start afresh there, "
                "or choose another `--output_dir`."
            )
    done = {_record_key(record): record for record in load_records(records_path)}
    if done:
        logger.info("Resuming: %d (image, seed) predictions already in %s.", len(done), records_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps({k: _to_builtin(v) for k, v in settings.items()}, indent=2) + "\n")
    return done


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _light_list(values) -> list[float]:
    return [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]


@torch.no_grad()
def evaluate(
    pipe,
    loader: Iterable[dict],
    *,
    num_seeds: int = 10,
    num_inference_steps: int = 1,
    seed: int = 0,
    limit: int | None = None,
    output_dir: str | Path | None = None,
    settings: dict | None = None,
    overwrite: bool = False,
    samples_per_track: int = 4,
    progress: bool = True,
) -> EvaluationResults:
    """Predicts every image of `loader` (batches as in docs/design.md §8, read in order) once per seed and scores it.

    With `output_dir`, records are appended to `output_dir/records.jsonl` after every batch and seed, and the sample
    predictions saved under `output_dir/samples/`; a rerun with the same `settings` (RESUME_KEYS) skips what is done
    (raising `num_seeds` or `limit` adds only the missing predictions). `settings` is stored with the results; the
    caller fills in what it knows (model, dataset, resolution, hardware, ...).
    """
    if not callable(getattr(pipe, "encode_preprocessed", None)):
        raise ValueError(
            f"`pipe` ({type(pipe).__name__}) has no `encode_preprocessed`: evaluation feeds the loader's preprocessed "
            "tensors to the latents. Load the model with this project's `ShadowPipeline.from_pretrained`, or refresh "
            "the pipeline_shadow.py saved beside its weights."
        )
    if num_seeds < 1:
        raise ValueError(f"`num_seeds` must be >= 1, got {num_seeds}.")
    if num_inference_steps < 1:
        raise ValueError(f"`num_inference_steps` must be >= 1, got {num_inference_steps}.")
    if limit is not None and limit < 1:
        raise ValueError(f"`limit` must be >= 1 (or None for the whole set), got {limit}.")
    settings = {**(settings or {}), "num_seeds": num_seeds, "num_inference_steps": num_inference_steps, "seed": seed}
    settings["limit"] = limit
    output_dir = Path(output_dir) if output_dir is not None else None
    run = _Run(pipe, num_seeds, num_inference_steps, seed, samples_per_track)
    if output_dir is not None:
        run.done = _check_resume(output_dir, settings, overwrite)
        run.samples_dir = output_dir / "samples"
    total = len(loader.dataset) if hasattr(loader, "dataset") and hasattr(loader.dataset, "__len__") else None
    total = min(total, limit) if total is not None and limit is not None else (total or limit)

    records: list[dict] = []
    index, start = 0, time.perf_counter()
    bar = tqdm(total=total, unit="img", desc="evaluate", disable=not progress)
    try:
        if output_dir is not None:
            run.records_file = open(output_dir / "records.jsonl", "a")
        for batch in loader:
            if limit is not None and index >= limit:
                break
            keep = len(batch["id"]) if limit is None else min(len(batch["id"]), limit - index)
            records.extend(run.evaluate_batch(batch, keep, index))
            index += keep
            bar.update(keep)
    finally:
        bar.close()
        if run.records_file is not None:
            run.records_file.close()
    # One prediction alone costs its image's encoding too (encoded once per batch, for every seed).
    seconds = [r["seconds"] + (r.get("encode_seconds") or 0.0) for r in records if r.get("seconds") is not None]
    seconds = [value for value in seconds if not math.isnan(value)]
    settings.update(
        num_images=index,
        seconds_per_prediction_median=float(np.median(seconds)) if seconds else None,
        wall_seconds_this_session=round(time.perf_counter() - start, 1),
    )
    return EvaluationResults(settings=settings, records=records, samples=run.samples)


@dataclass
class _Run:
    """The state of one evaluation: what is done (for resuming), where records and samples go."""

    pipe: object
    num_seeds: int
    num_inference_steps: int
    seed: int
    samples_per_track: int
    done: dict = field(default_factory=dict)  # (index, id, seed index) -> record
    records_file: object = None
    samples_dir: Path | None = None
    samples: dict = field(default_factory=dict)

    def evaluate_batch(self, batch: dict, keep: int, start_index: int) -> list[dict]:
        """The first `keep` images of `batch`, whose first image is number `start_index` in the data."""
        missing = [
            key for key in ("object_image", "mask", "shadow_map", "theta", "phi", "size", "id") if key not in batch
        ]
        if missing:
            raise ValueError(
                f"Evaluation needs image batches (docs/design.md §8); this one lacks {', '.join(missing)}. Cached-latent "
                "batches carry no images: evaluate with a loader built without `cache_latents`."
            )
        ids = [str(key) for key in batch["id"][:keep]]
        indices = list(range(start_index, start_index + keep))
        tracks = [track if track is not None else ALL_TRACK for track in list(batch.get("track") or [None] * keep)]
        object_image = ((batch["object_image"][:keep].float() + 1.0) / 2.0).clamp(0.0, 1.0)  # [B,3,H,W] in [0, 1]
        mask = batch["mask"][:keep].float()  # [B,1,H,W]
        masks, target = mask[:, 0].numpy(), batch["shadow_map"][:keep].float()[:, 0].numpy()  # [B,H,W] each
        theta, phi, size = (_light_list(batch[key][:keep]) for key in ("theta", "phi", "size"))
        self._pick_samples(ids, tracks[:keep], object_image, target, (theta, phi, size))

        # The loader's tensors go straight to the latents, once per batch for every seed: the object and mask are
        # preprocessed once, by the loader, exactly as for training (docs/design.md §8), never resized or re-binarised.
        prepared, encode_seconds = None, float("nan")
        records, ground_truth = {}, {}
        for seed_index in range(self.num_seeds):
            todo = []
            for i, key in enumerate(ids):
                previous = self.done.get((indices[i], key, seed_index))
                if previous is not None:
                    records[i, seed_index] = previous
                else:
                    todo.append(i)
            if not todo:
                continue
            generators = [
                torch.Generator("cpu").manual_seed(generator_seed(self.seed, indices[i], seed_index)) for i in todo
            ]
            if prepared is None:
                start = time.perf_counter()
                prepared = self.pipe.encode_preprocessed(batch["object_image"][:keep], batch["mask"][:keep])
                encode_seconds = (time.perf_counter() - start) / keep
            start = time.perf_counter()
            output = self.pipe(
                object_latents=_take(prepared, todo),
                theta=[theta[i] for i in todo],
                phi=[phi[i] for i in todo],
                size=[size[i] for i in todo],
                num_inference_steps=self.num_inference_steps,
                generator=generators,
                output_type="pt",
            )
            prediction = output.shadow_maps.float().cpu()[:, 0].numpy()  # [b,H,W] in [0, 1]
            seconds = (time.perf_counter() - start) / len(todo)
            metrics = compute_metrics(prediction, target[todo])
            for j, i in enumerate(todo):
                if i not in ground_truth:
                    ground_truth[i] = {f"gt_{k}": v for k, v in control_estimates(target[i], masks[i]).items()}
                records[i, seed_index] = {
                    "index": indices[i],
                    "id": ids[i],
                    "track": tracks[i],
                    "seed": seed_index,
                    "generator_seed": generator_seed(self.seed, indices[i], seed_index),
                    "theta": theta[i],
                    "phi": phi[i],
                    "size": size[i],
                    **{name: float(values[j]) for name, values in metrics.items()},
                    **control_estimates(prediction[j], masks[i]),
                    **ground_truth[i],
                    "seconds": seconds,
                    "encode_seconds": encode_seconds,
                }
                if seed_index == 0 and ids[i] in self.samples:
                    self.samples[ids[i]]["prediction"] = _to_uint8(prediction[j])
                    if self.samples_dir is not None:
                        _save_sample(self.samples_dir, ids[i], self.samples[ids[i]])
            if self.records_file is not None:
                lines = (json.dumps({k: _to_builtin(v) for k, v in records[i, seed_index].items()}) for i in todo)
                self.records_file.write("".join(line + "\n" for line in lines))
                self.records_file.flush()
        for i, key in enumerate(ids):
            if key in self.samples and (i, 0) in records:
                self.samples[key]["iou"] = records[i, 0]["iou"]
        return [records[key] for key in sorted(records)]  # by (image, seed): the same order for any batch size

    def _pick_samples(self, ids, tracks, object_image, target, lights) -> None:
        """The first `samples_per_track` images of each track go on the contact sheet (a resumed run reloads their
        saved seed-0 prediction)."""
        for i, (key, track) in enumerate(zip(ids, tracks)):
            if key in self.samples or sum(s["track"] == track for s in self.samples.values()) >= self.samples_per_track:
                continue
            self.samples[key] = {
                "track": track,
                "light": tuple(values[i] for values in lights),
                "object": _to_uint8(object_image[i].permute(1, 2, 0).numpy()),
                "ground_truth": _to_uint8(target[i]),
            }
            saved = self.samples_dir / f"{_safe_name(key)}_prediction.png" if self.samples_dir is not None else None
            if saved is not None and saved.exists():
                self.samples[key]["prediction"] = np.asarray(PIL.Image.open(saved))


def _take(prepared: ObjectLatents, indices: list[int]) -> ObjectLatents:
    """The encoded objects at `indices` (those a seed still has to predict)."""
    if indices == list(range(len(prepared.boxes))):
        return prepared
    return dataclasses.replace(
        prepared,
        object_latents=prepared.object_latents[indices],
        mask_latent=prepared.mask_latent[indices],
        **{name: [getattr(prepared, name)[i] for i in indices] for name in ("boxes", "sizes", "objects", "masks")},
    )


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


def _save_sample(samples_dir: Path, key: str, sample: dict) -> None:
    samples_dir.mkdir(parents=True, exist_ok=True)
    for part in ("object", "prediction", "ground_truth"):
        PIL.Image.fromarray(sample[part]).save(samples_dir / f"{_safe_name(key)}_{part}.png")


def load_light_set_samples(data_dir: str | Path) -> list[dict]:
    """The samples of a `render_shadow_dataset.py --light_sets` folder: {id, lights, object [3,H,W], mask [1,H,W],
    shadow [H,W] (all lights), light_shadows [K,H,W] or None}, in key order."""
    data_dir = Path(data_dir)
    metadata_path = data_dir / "metadata.json"
    if not metadata_path.is_file():
        raise ValueError(f"`--light_sets_dir {data_dir}` has no metadata.json (render it with --light_sets).")
    try:
        entries = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{metadata_path} is not valid JSON ({type(error).__name__}: {error}).") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{metadata_path} must map each sample key to its entry, got a {type(entries).__name__}.")
    samples = []
    for key, metadata in sorted(entries.items()):
        lights = metadata.get("lights") if isinstance(metadata, dict) else None
        if lights is None:
            raise ValueError(f"{metadata_path} sample {key!r} has no `lights`: not a --light_sets rendering.")
        light_shadows = metadata.get("light_shadows") or []
        if not isinstance(lights, list) or not lights or not isinstance(light_shadows, list):
            raise ValueError(
                f"{metadata_path} sample {key!r}: `lights` must be a non-empty list of {{theta, phi, size, power}} "
                "and `light_shadows` a list of file names."
            )
        parsed_lights = []
        for index, light in enumerate(lights):
            missing = [k for k in ("theta", "phi", "size", "power") if not isinstance(light, dict) or k not in light]
            if missing:
                raise ValueError(f"{metadata_path} sample {key!r} `lights[{index}]` lacks {', '.join(missing)}.")
            name = f"{metadata_path.name} {key!r} lights[{index}]"
            parsed_lights.append(Light.from_any({k: light[k] for k in ("theta", "phi", "size", "power")}, name))
        object_image = image_to_tensor(
            open_image(data_dir / "objects" / f"{key}.png", "--light_sets_dir"), f"objects/{key}.png"
        )[:3]
        maps = {}
        for name, path in [("mask", f"masks/{key}.png"), ("shadow", f"shadows/{key}.png")] + [
            (f"light{i}", p) for i, p in enumerate(light_shadows)
        ]:
            maps[name] = gray_to_tensor(open_image(data_dir / str(path), "--light_sets_dir"), str(path))
        count = len(light_shadows)
        samples.append(
            {
                "id": key,
                "lights": parsed_lights,
                "object": object_image,
                "mask": maps["mask"],
                "shadow": maps["shadow"][0].numpy(),
                "light_shadows": np.stack([maps[f"light{i}"][0].numpy() for i in range(count)]) if count else None,
            }
        )
    return samples


@torch.no_grad()
def evaluate_light_sets(pipe, samples: list[dict], *, num_seeds: int = 1, seed: int = 0, num_inference_steps: int = 1):
    """One record per (sample, seed): the composed prediction's metrics against the rendered multi-light map
    (`composed_*`), each light's prediction against its rendered single-light map (`light_*`, lists over lights),
    the direction error per light, and the composition floor: the TRUE single-light maps composed with the same
    coefficients against the true multi-light map (`oracle_rmse`, no model involved)."""
    records = []
    for index, sample in enumerate(samples):
        mask = sample["mask"][0].numpy()
        coefficients = light_coefficients(sample["lights"], estimate_object_height(mask))
        for seed_index in range(num_seeds):
            output = pipe(
                sample["object"],
                mask=sample["mask"],
                lights=sample["lights"],
                num_inference_steps=num_inference_steps,
                generator=torch.Generator("cpu").manual_seed(generator_seed(seed, index, seed_index)),
                output_type="np",
                return_light_maps=True,
            )
            composed, light_maps = output.shadow_maps[0], output.light_maps[0]
            record = {"index": index, "id": sample["id"], "seed": seed_index, "num_lights": len(sample["lights"])}
            record.update({f"composed_{k}": float(v) for k, v in compute_metrics(composed, sample["shadow"]).items()})
            truth = sample["light_shadows"]
            if truth is not None:
                per_light = compute_metrics(light_maps, truth)
                record.update({f"light_{k}": [float(v) for v in values] for k, values in per_light.items()})
                record["light_direction_error_deg"] = [
                    float(angle_error_deg(shadow_direction_deg(p, mask), shadow_direction_deg(t, mask)))
                    for p, t in zip(light_maps, truth)
                ]
                oracle = compose_light_maps(truth, coefficients) * (mask < MASK_THRESHOLD)
                record["oracle_rmse"] = float(rmse(oracle, sample["shadow"]))
            records.append(record)
    return records


def _light_set_metrics(by_sample: dict[int, list[dict]], group: str) -> dict:
    entry = {}
    for name in METRIC_NAMES:
        values = [
            np.mean([np.mean(r[f"{group}_{name}"]) for r in sample_records])
            for sample_records in by_sample.values()
            if f"{group}_{name}" in sample_records[0]
        ]
        if values:
            entry[name] = _nan_stats(values)
    return entry


def light_set_summary(records: Sequence[dict]) -> dict[str, dict]:
    """Seed-averaged per sample, then mean +- std over samples: "composed" (all samples) and "composed_<K>_lights"
    (the samples with K lights), "single" (each light's own map against its rendered map), direction, oracle."""
    by_sample = _by_image(records)
    summary = {"num_samples": len(by_sample), "num_seeds": max((r["seed"] for r in records), default=-1) + 1}
    summary["composed"] = _light_set_metrics(by_sample, "composed")
    for count in sorted({r["num_lights"] for r in records}):
        subset = {k: v for k, v in by_sample.items() if v[0]["num_lights"] == count}
        summary[f"composed_{count}_lights"] = {"samples": len(subset), **_light_set_metrics(subset, "composed")}
    summary["single"] = _light_set_metrics(by_sample, "light")
    errors = [abs(e) for r in records if r.get("seed") == 0 for e in r.get("light_direction_error_deg", [])]
    errors = [e for e in errors if not math.isnan(e)]
    if errors:
        summary["light_direction"] = {
            "median_abs_error_deg": float(np.median(errors)),
            "wrong_side_rate": float(np.mean(np.array(errors) > 90)),
            "count": len(errors),
        }
    oracle = [r["oracle_rmse"] for r in records if r.get("seed") == 0 and "oracle_rmse" in r]
    if oracle:
        summary["oracle_composition_rmse"] = _nan_stats(oracle)
    return summary


def render_light_set_report(settings: dict, summary: dict) -> str:
    lines = [
        "# Several lights: composed predictions against the renderer",
        "",
        f"Model `{settings.get('model')}`, data `{settings.get('data_dir')}`, {summary['num_samples']} samples x "
        f"{summary['num_seeds']} seed(s), {settings.get('hardware')}.",
        "",
        "| maps | " + " | ".join(METRIC_LABELS[m] for m in METRIC_NAMES) + " |",
        "|---|" + "---|" * len(METRIC_NAMES),
    ]
    groups = [("composed", "composed (all lights)")]
    groups += [
        (k, f"composed, {k.split('_')[1]} light(s): {summary[k]['samples']} samples")
        for k in summary
        if k.endswith("_lights")
    ]
    groups += [("single", "each light alone (same objects)")]
    for group, title in groups:
        if summary.get(group) and "rmse" in summary[group]:
            lines.append(f"| {title} | " + " | ".join(_pm(summary[group][m]) for m in METRIC_NAMES) + " |")
    if "oracle_composition_rmse" in summary:
        lines += [
            "",
            f"Composition floor (true single-light maps composed, no model): RMSE "
            f"{_pm(summary['oracle_composition_rmse'], 4)}.",
        ]
    if "light_direction" in summary:
        direction = summary["light_direction"]
        lines += [
            "",
            f"Direction per light: median |error| {direction['median_abs_error_deg']:.1f} deg, wrong side "
            f"{_percent(direction['wrong_side_rate'])} of {direction['count']} lights.",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# 4. Summaries: per track, mean ± std over images of the seed-averaged value, the per-seed spread, control accuracy.
# --------------------------------------------------------------------------------------------------------------------


def _by_image(records: Sequence[dict]) -> dict[int, list[dict]]:
    images: dict[int, list[dict]] = {}
    for record in records:
        images.setdefault(int(record["index"]), []).append(record)
    return images


def _track_order(records: Sequence[dict]) -> list[str]:
    present = {record["track"] for record in records}
    return [t for t in TRACK_NAMES if t in present] + sorted(present - set(TRACK_NAMES))


def _nan_stats(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    valid = values[~np.isnan(values)]
    if valid.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(valid.mean()), "std": float(valid.std()), "n": int(valid.size)}


def _nan_mean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if (~np.isnan(values)).any() else float("nan")


def _seed_mean(image_records: list[dict], key: str) -> float:
    return _nan_mean([record[key] for record in image_records])


def summarize(records: Sequence[dict]) -> dict[str, dict]:
    """{track: {metric: {"mean", "std" (over images, after averaging seeds), "n" (images), "seed_std" (mean over
    images of the std across seeds), "seed_means_std" (std across seeds of the track mean)}}}."""
    summary = {}
    for track in _track_order(records):
        track_records = [r for r in records if r["track"] == track]
        images = _by_image(track_records)
        seeds = sorted({int(r["seed"]) for r in track_records})
        entry = {"num_images": len(images), "num_seeds": len(seeds)}
        for name in METRIC_NAMES:
            per_image = [_seed_mean(rs, name) for rs in images.values()]
            per_image_std = [float(np.std([r[name] for r in rs])) for rs in images.values()]
            per_seed = [float(np.mean([r[name] for r in track_records if int(r["seed"]) == s])) for s in seeds]
            entry[name] = {
                **_nan_stats(per_image),
                "seed_std": float(np.mean(per_image_std)),
                "seed_means_std": float(np.std(per_seed)),
            }
        summary[track] = entry
    return summary


def _circular_mean_deg(angles) -> float:
    angles = np.radians(np.asarray(angles, dtype=np.float64))
    angles = angles[~np.isnan(angles)]
    if angles.size == 0:
        return float("nan")
    return math.degrees(math.atan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360.0


def control_summary(records: Sequence[dict]) -> dict[str, dict]:
    """Per track: how well the light steers the prediction, and the same estimators on the ground truth.

    - direction error: prediction vs the ground truth's estimated direction (smallest signed angle), mean |error|
      over images (seed-averaged |error|), median, and the wrong-side rate (|error| > 90) over all (image, seed) pairs.
    - ground-truth check: the ground truth's direction vs phi + 180 (must stay within 90 degrees, see
      `expected_direction_deg`); the prediction's against the same reference.
    - rank correlations (Spearman, over images, seed-averaged): theta vs extent (meaningful on track 3) and size vs
      softness (track 1), for the prediction and for the ground truth.
    """
    summary = {}
    for track in _track_order(records):
        track_records = [r for r in records if r["track"] == track]
        images = list(_by_image(track_records).values())
        errors = np.array(
            [angle_error_deg(r["direction_deg"], r["gt_direction_deg"]) for r in track_records], dtype=float
        )
        valid = errors[~np.isnan(errors)]
        image_abs_error = [
            _nan_mean([abs(angle_error_deg(r["direction_deg"], r["gt_direction_deg"])) for r in rs]) for rs in images
        ]
        gt_vs_phi = np.array(
            [angle_error_deg(rs[0]["gt_direction_deg"], expected_direction_deg(rs[0]["phi"])) for rs in images]
        )
        pred_vs_phi = np.array(
            [angle_error_deg(r["direction_deg"], expected_direction_deg(r["phi"])) for r in track_records]
        )
        light = {key: [rs[0][key] for rs in images] for key in ("theta", "phi", "size")}
        predicted = {key: [_seed_mean(rs, key) for rs in images] for key in ("extent_rel", "softness")}
        truth = {key: [rs[0][f"gt_{key}"] for rs in images] for key in ("extent_rel", "softness")}
        summary[track] = {
            "direction_abs_error_deg": _nan_stats(image_abs_error),
            "direction_abs_error_median_deg": float(np.median(np.abs(valid))) if valid.size else None,
            "wrong_side_rate": float((np.abs(valid) > 90.0).mean()) if valid.size else None,
            "direction_undetermined": int(errors.size - valid.size),
            "gt_vs_phi_abs_error_deg": _nan_stats(np.abs(gt_vs_phi)),
            "gt_within_90_of_phi_rate": _rate(np.abs(gt_vs_phi) <= 90.0, gt_vs_phi),
            "pred_vs_phi_abs_error_deg": _nan_stats(np.abs(pred_vs_phi)),
            "pred_within_90_of_phi_rate": _rate(np.abs(pred_vs_phi) <= 90.0, pred_vs_phi),
            "spearman_theta_extent": _to_builtin(spearman(light["theta"], predicted["extent_rel"])),
            "gt_spearman_theta_extent": _to_builtin(spearman(light["theta"], truth["extent_rel"])),
            "spearman_size_softness": _to_builtin(spearman(light["size"], predicted["softness"])),
            "gt_spearman_size_softness": _to_builtin(spearman(light["size"], truth["softness"])),
            "extent_rel": _nan_stats(predicted["extent_rel"]),
            "gt_extent_rel": _nan_stats(truth["extent_rel"]),
            "softness": _nan_stats(predicted["softness"]),
            "gt_softness": _nan_stats(truth["softness"]),
        }
    return summary


def _rate(hits: np.ndarray, values: np.ndarray) -> float | None:
    valid = ~np.isnan(values)
    return float(hits[valid].mean()) if valid.any() else None


# --------------------------------------------------------------------------------------------------------------------
# 5. Reports: metrics.json, report.md, plots (matplotlib, Agg backend) and a contact sheet (PIL).
# --------------------------------------------------------------------------------------------------------------------


def _format(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pm(stats: dict, digits: int = 3) -> str:
    if stats.get("mean") is None:
        return "n/a"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def write_reports(results: EvaluationResults, output_dir: str | Path) -> dict[str, Path]:
    """Writes metrics.json, report.md, the plots and the contact sheet; returns {name: path}."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary, control = summarize(results.records), control_summary(results.records)
    paths = {"metrics": output_dir / "metrics.json", "report": output_dir / "report.md"}
    metrics = {
        "settings": {k: _to_builtin(v) for k, v in results.settings.items()},
        "summary": summary,
        "control": control,
        "paper_table2": {str(steps): rows for steps, rows in PAPER_TABLE2.items()},
        "records": [{k: _to_builtin(v) for k, v in record.items()} for record in results.records],
    }
    paths["metrics"].write_text(json.dumps(metrics, indent=1) + "\n")
    paths.update(write_plots(results.records, output_dir))
    if results.samples:
        paths["contact_sheet"] = write_contact_sheet(results.samples, output_dir / "contact_sheet.png")
    paths["report"].write_text(render_report(results.settings, summary, control, {k: p.name for k, p in paths.items()}))
    return paths


def render_report(settings: dict, summary: dict, control: dict, files: dict[str, str] | None = None) -> str:
    files = files or {}
    steps = settings.get("num_inference_steps")
    lines = [f"# Shadow evaluation: `{settings.get('model', 'model')}`", "", "| setting | value |", "|---|---|"]
    seconds = settings.get("seconds_per_prediction_median")
    for label, value in (
        ("model", settings.get("model")),
        ("model fingerprint", settings.get("model_fingerprint")),
        ("dataset", settings.get("dataset")),
        ("images", settings.get("num_images")),
        ("seeds per image", settings.get("num_seeds")),
        ("inference steps", steps),
        ("resolution", settings.get("resolution")),
        ("dtype", settings.get("dtype")),
        ("hardware", settings.get("hardware")),
        ("time per prediction (median, incl. VAE)", None if seconds is None else f"{seconds * 1000:.1f} ms"),
        ("date", settings.get("date")),
    ):
        if value is not None:
            lines.append(f"| {label} | {value} |")
    lines += [
        "",
        "Metrics over the whole image at the evaluation resolution; each image is averaged over its seeds, then "
        "mean ± std over images. The paper's rows are **the paper's published figures** (Table 2, rectified flow), "
        "copied for comparison; they were not produced by this run.",
    ]
    for track, entry in summary.items():
        lines += ["", f"## {TRACK_TITLES.get(track, track)}", ""]
        lines.append(f"{entry['num_images']} images × {entry['num_seeds']} seeds.")
        lines += ["", "| | " + " | ".join(METRIC_LABELS[m] for m in METRIC_NAMES) + " |", "|---" * 5 + "|"]
        lines.append(f"| **this run, {steps} step(s)** | " + " | ".join(_pm(entry[m]) for m in METRIC_NAMES) + " |")
        for paper_steps, rows in PAPER_TABLE2.items():
            if track in rows:
                cells = " | ".join(_format(rows[track][m]) for m in METRIC_NAMES)
                lines.append(f"| paper's figure, {paper_steps} step(s) (not ours) | {cells} |")
        lines.append(
            "| seed spread: mean per-image std over seeds | "
            + " | ".join(_format(entry[m]["seed_std"], 4) for m in METRIC_NAMES)
            + " |"
        )
        lines.append(
            "| seed spread: std of the track mean across seeds | "
            + " | ".join(_format(entry[m]["seed_means_std"], 4) for m in METRIC_NAMES)
            + " |"
        )
    lines += [
        "",
        "## Control accuracy (beyond the paper)",
        "",
        "Estimated on each map (docs/design.md §8): direction = contact point → shadow centroid (0° = right, CCW, y up); "
        "extent = 95th percentile of the shadow mass's distance from the contact point ÷ object height; softness = "
        "share of penumbra pixels (0.05 < s/peak < 0.95). Direction error = prediction vs the same estimate on the "
        "ground truth; wrong side = |error| > 90°. The GT rows check the estimators themselves: the ground truth's "
        "direction must stay within 90° of phi + 180 (foreshortened, never another quadrant), its extent must rise "
        "with theta and its softness with size.",
        "",
        "| track | dir. error mean ± std | median | wrong side | pred within 90° of φ+180 | GT within 90° of φ+180 "
        "| GT abs. error vs φ+180 | ρ(θ, extent) pred / GT | ρ(size, softness) pred / GT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for track, entry in control.items():
        lines.append(
            f"| {track} | {_pm(entry['direction_abs_error_deg'], 1)}° | {_format(entry['direction_abs_error_median_deg'], 1)}° "
            f"| {_percent(entry['wrong_side_rate'])} | {_percent(entry['pred_within_90_of_phi_rate'])} "
            f"| {_percent(entry['gt_within_90_of_phi_rate'])} | {_pm(entry['gt_vs_phi_abs_error_deg'], 1)}° "
            f"| {_format(entry['spearman_theta_extent'], 2)} / {_format(entry['gt_spearman_theta_extent'], 2)} "
            f"| {_format(entry['spearman_size_softness'], 2)} / {_format(entry['gt_spearman_size_softness'], 2)} |"
        )
    lines += [
        "",
        "Read ρ(θ, extent) on track 3 and ρ(size, softness) on track 1; elsewhere that light parameter is fixed.",
    ]
    figures = [
        (key, title)
        for key, title in (
            ("plot_size", "Track 1: metrics and softness vs size"),
            ("plot_phi", "Track 2: metrics and direction over phi"),
            ("plot_theta", "Track 3: metrics and extent vs theta"),
            ("contact_sheet", "Samples: object / prediction (seed 0) / ground truth"),
        )
        if key in files
    ]
    if figures:
        lines += ["", "## Figures"]
        for key, title in figures:
            lines += ["", f"### {title}", "", f"![{title}]({files[key]})"]
    lines += ["", "Produced by `evaluate_shadow.py`; every number above is in `metrics.json`.", ""]
    return "\n".join(lines)


def _percent(value) -> str:
    return "n/a" if value is None else f"{100.0 * value:.0f} %"


def _grouped(records: Sequence[dict], track: str, by: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x values of `by` and mean/std over images (seed-averaged) of `key`, for one track."""
    images = list(_by_image([r for r in records if r["track"] == track]).values())
    groups: dict[float, list[float]] = {}
    for rs in images:
        groups.setdefault(float(rs[0][by]), []).append(_seed_mean(rs, key))
    xs = np.array(sorted(groups))
    means = np.array([np.nanmean(groups[x]) if not np.isnan(groups[x]).all() else np.nan for x in xs])
    stds = np.array([np.nanstd(groups[x]) if not np.isnan(groups[x]).all() else np.nan for x in xs])
    return xs, means, stds


def write_plots(records: Sequence[dict], output_dir: str | Path) -> dict[str, Path]:
    """plot_size.png (track 1), plot_phi.png (track 2, polar), plot_theta.png (track 3), for the tracks present."""
    tracks = {r["track"] for r in records}
    if not tracks & {"softness", "horizontal", "vertical"}:
        return {}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: skipping the plots (pip install matplotlib).")
        return {}
    output_dir, paths = Path(output_dir), {}
    for track, by, extra, name in (
        ("softness", "size", "softness", "plot_size"),
        ("vertical", "theta", "extent_rel", "plot_theta"),
    ):
        if track not in tracks:
            continue
        figure, axes = plt.subplots(1, 5, figsize=(20, 3.6))
        for axis, metric in zip(axes, (*METRIC_NAMES, extra)):
            xs, means, stds = _grouped(records, track, by, metric)
            axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label="prediction")
            if metric == extra:
                xs, means, stds = _grouped(records, track, by, f"gt_{metric}")
                axis.errorbar(xs, means, yerr=stds, marker="s", capsize=3, label="ground truth")
                axis.legend()
            axis.set_xlabel(by)
            axis.set_title(METRIC_LABELS.get(metric, metric.replace("_rel", " / object height")))
            axis.grid(alpha=0.3)
        figure.suptitle(f"{TRACK_TITLES[track]} — mean ± std over images")
        figure.tight_layout()
        paths[name] = output_dir / f"{name}.png"
        figure.savefig(paths[name], dpi=80)
        plt.close(figure)
    if "horizontal" in tracks:
        figure = plt.figure(figsize=(14, 4.8))
        polar = figure.add_subplot(1, 2, 1, projection="polar")
        for metric in ("iou", "zncc"):
            xs, means, _ = _grouped(records, "horizontal", "phi", metric)
            closed = np.append(xs, xs[:1]) if xs.size else xs
            polar.plot(
                np.radians(closed),
                np.append(means, means[:1]) if means.size else means,
                marker="o",
                label=METRIC_LABELS[metric],
            )
        polar.set_title("metric over phi (radius)")
        polar.legend(loc="lower left", bbox_to_anchor=(-0.2, -0.15))
        axis = figure.add_subplot(1, 2, 2)
        images = list(_by_image([r for r in records if r["track"] == "horizontal"]).values())
        by_phi: dict[float, dict[str, list]] = {}
        for rs in images:
            group = by_phi.setdefault(float(rs[0]["phi"]), {"pred": [], "gt": []})
            group["pred"] += [r["direction_deg"] for r in rs]
            group["gt"].append(rs[0]["gt_direction_deg"])
        phis = np.array(sorted(by_phi))
        reference = phis + 180.0  # unwrapped, so the curves do not jump at 360
        for part, marker, label in (("pred", "o", "prediction (circular mean)"), ("gt", "s", "ground truth")):
            directions = np.array([_circular_mean_deg(by_phi[p][part]) for p in phis])
            axis.plot(phis, reference + angle_error_deg(directions, reference), marker, label=label)
        axis.plot(phis, reference, "--", color="gray", label="phi + 180 (no foreshortening)")
        axis.fill_between(phis, reference - 90.0, reference + 90.0, color="gray", alpha=0.1, label="right side (±90°)")
        axis.set_xlabel("phi (deg)")
        axis.set_ylabel("shadow direction in the image (deg, unwrapped)")
        axis.grid(alpha=0.3)
        axis.legend()
        figure.suptitle(TRACK_TITLES["horizontal"])
        figure.tight_layout()
        paths["plot_phi"] = output_dir / "plot_phi.png"
        figure.savefig(paths["plot_phi"], dpi=80)
        plt.close(figure)
    return paths


def write_contact_sheet(samples: dict[str, dict], path: str | Path, tile: int = 192) -> Path:
    """One row per sample: object | prediction (seed 0) | ground truth, with the id, track and light as caption."""
    caption, gap = 14, 4
    order = {track: i for i, track in enumerate(TRACK_NAMES)}
    rows = sorted(
        ((key, s) for key, s in samples.items() if "prediction" in s),
        key=lambda item: order.get(item[1]["track"], len(order)),  # stable: data order within a track
    )
    sheet = PIL.Image.new("RGB", (3 * tile + 4 * gap, max(1, len(rows)) * (tile + caption + gap) + gap), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    for row, (key, sample) in enumerate(rows):
        top = gap + row * (tile + caption + gap)
        theta, phi, size = sample["light"]
        iou = f", IoU {sample['iou']:.3f}" if "iou" in sample else ""
        draw.text((gap, top), f"{key} [{sample['track']}] theta {theta:g} phi {phi:g} size {size:g}{iou}", fill="black")
        for column, part in enumerate(("object", "prediction", "ground_truth")):
            image = PIL.Image.fromarray(sample[part]).convert("RGB").resize((tile, tile), PIL.Image.BILINEAR)
            sheet.paste(image, (gap + column * (tile + gap), top + caption))
    sheet.save(path)
    return Path(path)


# --------------------------------------------------------------------------------------------------------------------
# 6. Command line.
# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pretrained_model_name_or_path",
        "--model",
        dest="model",
        required=True,
        help="A trained shadow pipeline: a training run's --output_dir (or its best/), a folder or a Hub id.",
    )
    parser.add_argument("--dataset_type", choices=DATASET_TYPES, default="benchmark")
    parser.add_argument(
        "--train_data_dir",
        "--data_dir",
        dest="data_dir",
        default=None,
        help="Local data: the custom layout, or a benchmark tar/folder.",
    )
    parser.add_argument(
        "--dataset_name",
        default=None,
        help=f"Hub dataset id (default for `benchmark` without --data_dir: {DEFAULT_BENCHMARK_DATASET}).",
    )
    parser.add_argument("--split", default="train", help="Hugging Face datasets: the split to read.")
    parser.add_argument(
        "--invert_shadow_maps", action="store_true", help="Read ground-truth maps as 1 - value (0 = full shadow data)."
    )
    parser.add_argument("--num_seeds", type=int, default=10, help="Predictions per image (the paper uses 10).")
    parser.add_argument("--num_inference_steps", type=int, default=1)
    parser.add_argument(
        "--resolution",
        "--image_size",
        dest="resolution",
        type=int,
        default=None,
        help="Processing resolution (default: the model's training resolution).",
    )
    parser.add_argument("--eval_batch_size", type=int, default=8, help="Images per pipeline call.")
    parser.add_argument(
        "--dataloader_num_workers", "--num_workers", dest="num_workers", type=int, default=2, help="Loader processes."
    )
    parser.add_argument("--limit", type=int, default=None, help="Evaluate only the first N images.")
    parser.add_argument("--seed", type=int, default=0, help="Base seed; image i, seed k uses a seed derived from both.")
    parser.add_argument("--output_dir", default="eval")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="auto: bfloat16 on GPU, float32 on CPU.")
    parser.add_argument("--device", default=None, help="Default: cuda if available, else cpu.")
    parser.add_argument("--samples_per_track", type=int, default=4, help="Rows per track on the contact sheet.")
    parser.add_argument("--overwrite", action="store_true", help="Discard a previous run in --output_dir.")
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument(
        "--light_sets_dir",
        default=None,
        help="Instead: score a folder rendered with render_shadow_dataset.py --light_sets --single_light_maps.",
    )
    args = parser.parse_args(argv)
    if args.dataset_type in ("custom",) and args.data_dir is None:
        parser.error("`--dataset_type custom` needs `--train_data_dir` (`--data_dir`).")
    if args.dataset_type == "hf" and args.dataset_name is None and args.data_dir is None:
        parser.error("`--dataset_type hf` needs `--dataset_name` (or `--train_data_dir`).")
    if args.dataset_type == "benchmark" and args.data_dir is None and args.dataset_name is None:
        args.dataset_name = DEFAULT_BENCHMARK_DATASET
    for name in ("num_seeds", "num_inference_steps", "eval_batch_size", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"`--{name}` must be >= 1, got {getattr(args, name)}.")
    for name, flag in (("num_workers", "--dataloader_num_workers"), ("samples_per_track", "--samples_per_track")):
        if getattr(args, name) < 0:
            parser.error(f"`{flag}` must be >= 0, got {getattr(args, name)}.")
    try:
        if args.resolution is not None:
            check_resolution(args.resolution, "--resolution")
        args.device = str(check_device(args.device))
    except ValueError as error:
        parser.error(str(error))
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"`--output_dir` {args.output_dir} exists and is not a folder.")
    return args


def model_fingerprint(path: str | Path) -> str | None:
    """A quick fingerprint of a model folder: sha256 over every file's relative path, size and first and last MiB.
    Tells checkpoints apart without reading gigabytes. For a Hub id: "hub:<commit>" of the cached snapshot that
    `from_pretrained` loaded; None when neither is found."""
    path = Path(path)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            return "hub:" + Path(snapshot_download(str(path), local_files_only=True)).name
        except Exception:  # not a Hub id, or not in the local cache: nothing to fingerprint
            return None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix()}:{size}".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def evaluation_loader(args: argparse.Namespace, resolution: int) -> DataLoader:
    """Every sample of the source, in order, through dataset_loading (the one data path): image i is the same image in
    every run, since its noise seeds depend on i."""
    loader, _ = create_dataloaders(
        dataset_type=args.dataset_type,
        data_dir=args.data_dir,
        dataset_name=args.dataset_name,
        batch_size=args.eval_batch_size,
        num_workers=args.num_workers,
        image_size=resolution,
        val_fraction=0.0,
        seed=args.seed,
        random_flip=False,
        split=args.split,
        invert_shadow_maps=args.invert_shadow_maps,
        shuffle=False,
    )
    return loader


def main(argv: Sequence[str] | None = None) -> EvaluationResults:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    prepare_output_dir(args.output_dir)  # before the model loads: an unwritable folder fails now, not after the run
    pipe = load_pipeline(args.model, dtype, str(device))
    pipe.set_progress_bar_config(disable=True)
    if args.light_sets_dir is not None:
        return main_light_sets(args, pipe, device)
    resolution = args.resolution or pipe.default_resolution
    loader = evaluation_loader(args, resolution)
    dataset = getattr(loader.dataset, "dataset", loader.dataset)  # a Subset over everything for custom / hf
    settings = {
        "model": args.model,
        "model_fingerprint": model_fingerprint(args.model),
        "dataset": f"{args.dataset_type}:{args.data_dir or args.dataset_name}",
        "dataset_fingerprint": dataset.fingerprint()[:16] if hasattr(dataset, "fingerprint") else None,
        "resolution": resolution,
        "dtype": str(dtype).removeprefix("torch."),
        "hardware": hardware_description(device),
        "batch_size": args.eval_batch_size,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    count = len(loader.dataset) if args.limit is None else min(args.limit, len(loader.dataset))
    logger.info(
        "Evaluating %s on %d test images of %s x %d seeds, %d step(s) at %d px.",
        args.model,
        count,
        settings["dataset"],
        args.num_seeds,
        args.num_inference_steps,
        resolution,
    )
    results = evaluate(
        pipe,
        loader,
        num_seeds=args.num_seeds,
        num_inference_steps=args.num_inference_steps,
        seed=args.seed,
        limit=args.limit,
        output_dir=args.output_dir,
        settings=settings,
        overwrite=args.overwrite,
        samples_per_track=args.samples_per_track,
        progress=not args.no_progress,
    )
    paths = write_reports(results, args.output_dir)
    for track, entry in summarize(results.records).items():
        logger.info("%s: %s", track, ", ".join(f"{m} {_pm(entry[m])}" for m in METRIC_NAMES))
    logger.info("Wrote %s", ", ".join(str(p) for p in paths.values()))
    return results


def main_light_sets(args: argparse.Namespace, pipe, device: torch.device) -> dict:
    samples = load_light_set_samples(args.light_sets_dir)[: args.limit]
    records = evaluate_light_sets(
        pipe, samples, num_seeds=args.num_seeds, seed=args.seed, num_inference_steps=args.num_inference_steps
    )
    settings = {
        "model": args.model,
        "data_dir": str(args.light_sets_dir),
        "hardware": hardware_description(device),
        "num_inference_steps": args.num_inference_steps,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    summary = light_set_summary(records)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {"settings": settings, "summary": summary, "records": records}
    (output_dir / "light_sets.json").write_text(json.dumps(payload, indent=1, default=_to_builtin) + "\n")
    report = render_light_set_report(settings, summary)
    (output_dir / "light_sets.md").write_text(report)
    logger.info("\n%s", report)
    return payload


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:  # bad input, named in the message: no traceback
        print(f"evaluate_shadow.py: error: {error}", file=sys.stderr)
        sys.exit(2)
