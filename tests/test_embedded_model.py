"""The shipped small model (models/shadow-small) follows the light on objects it never saw in training, measured with
evaluate_shadow.py's estimators (direction, extent, softness)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from evaluate_shadow import shadow_direction_deg, shadow_extent, shadow_softness
from pipeline_shadow import ShadowPipeline

REPO = Path(__file__).resolve().parents[1]
OBJECTS = sorted((REPO / "tests" / "assets" / "unseen_objects").glob("*.png"))


@pytest.fixture(scope="module")
def shipped():
    pipe = ShadowPipeline.from_pretrained(REPO / "models" / "shadow-small")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _maps(pipe, **light) -> tuple[list[np.ndarray], list[np.ndarray]]:
    cutouts = [PIL.Image.open(path) for path in OBJECTS]
    generators = [torch.Generator().manual_seed(0) for _ in cutouts]
    maps = pipe(cutouts, generator=generators, output_type="np", **light).shadow_maps
    masks = [np.asarray(c.getchannel("A"), dtype=np.float32) / 255 for c in cutouts]
    return list(maps), masks


def test_the_shipped_model_is_small_and_loads_at_its_training_resolution(shipped):
    size = sum(f.stat().st_size for f in (REPO / "models" / "shadow-small").rglob("*") if f.is_file())
    assert size <= 30 * 2**20
    assert shipped.default_resolution == 128 and shipped.unet.dtype == torch.float32
    assert len(OBJECTS) == 4


def test_turning_phi_by_180_moves_the_shadow_to_the_other_side(shipped):
    left, masks = _maps(shipped, theta=30.0, phi=0.0, size=2.0)  # light on the right: shadow to the left
    right, _ = _maps(shipped, theta=30.0, phi=180.0, size=2.0)
    for shadow_left, shadow_right, mask in zip(left, right, masks):
        assert np.cos(np.radians(shadow_direction_deg(shadow_left, mask))) < -0.5
        assert np.cos(np.radians(shadow_direction_deg(shadow_right, mask))) > 0.5


def test_raising_theta_lengthens_the_shadow(shipped):
    low, masks = _maps(shipped, theta=10.0, phi=0.0, size=2.0)
    high, _ = _maps(shipped, theta=40.0, phi=0.0, size=2.0)
    extents = [(shadow_extent(a, m), shadow_extent(b, m)) for a, b, m in zip(low, high, masks)]
    assert all(long > short for short, long in extents), extents


def test_raising_size_softens_the_edge(shipped):
    hard, masks = _maps(shipped, theta=30.0, phi=0.0, size=2.0)
    soft, _ = _maps(shipped, theta=30.0, phi=0.0, size=8.0)
    softness = [(shadow_softness(a, m), shadow_softness(b, m)) for a, b, m in zip(hard, soft, masks)]
    assert np.mean([b - a for a, b in softness]) > 0 and sum(b > a for a, b in softness) >= 3, softness


FAMILIES = REPO / "tests" / "assets" / "unseen_families"
# The shipped model scores 0.505 on these ten renders, its predecessors 0.467, 0.478, 0.472, 0.439, 0.434, 0.402 and
# 0.378 (BENCHMARKS.md: 0.534, 0.527, 0.517, 0.497, 0.477, 0.472, 0.457 and 0.431 on all 120): the threshold tells
# the latest version from every earlier one (its lead over the seventh, +0.038 here, is +0.007 on all 120: ten
# images are a noisy sample, so this guards against a regression, it does not measure the gain).
MIN_UNSEEN_FAMILY_IOU = 0.49


def _family_samples():
    import json

    from pipeline_shadow import gray_to_tensor

    metadata = json.loads((FAMILIES / "metadata.json").read_text())
    for key, entry in sorted(metadata.items()):
        cutout = PIL.Image.open(FAMILIES / "objects" / f"{key}.png").convert("RGB")
        mask = PIL.Image.open(FAMILIES / "masks" / f"{key}.png").convert("L")
        truth = gray_to_tensor(PIL.Image.open(FAMILIES / "shadows" / f"{key}.png"))[0].numpy()
        yield entry, cutout, mask, truth


def test_on_object_families_it_never_saw_the_shadow_is_the_objects_own_not_a_generic_blob(shipped):
    """Chairs, poles, rings, fences and arches (none in its training data) against the renderer's clean maps: the
    one-step shadows overlap the true ones far better than the same light's shadow of another object does."""
    from evaluate_shadow import soft_iou

    samples = list(_family_samples())
    assert {entry["family"] for entry, *_ in samples} == {"legged", "pole", "ring", "slats", "bridge"}
    scores, swapped = [], []
    maps = []
    for entry, cutout, mask, truth in samples:
        predicted = shipped(
            cutout, mask, theta=entry["theta"], phi=entry["phi"], size=entry["size"], output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).shadow_maps[0]  # fmt: skip
        assert predicted.shape == truth.shape  # at the input size
        maps.append(predicted)
        scores.append(float(soft_iou(predicted, truth)))
    # the samples come in pairs under the same light (sample 0 and 1 of each family's split differ in light, so
    # compare each prediction with the true map of the OTHER family's object under the same light instead)
    truths = [truth for *_, truth in samples]
    lights = [(e["theta"], e["phi"], e["size"]) for e, *_ in samples]
    for i, predicted in enumerate(maps):
        others = [j for j in range(len(samples)) if lights[j] == lights[i] and j != i]
        swapped.append(max(float(soft_iou(predicted, truths[j])) for j in others))
    assert np.mean(scores) >= MIN_UNSEEN_FAMILY_IOU, scores
    assert np.mean(scores) > np.mean(swapped) + 0.15, (scores, swapped)  # its own object's shape, not a generic blob
