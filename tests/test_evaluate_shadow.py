"""evaluate_shadow.py: metrics on hand-computed cases, estimators on maps whose direction/extent/softness are known by
construction, summaries, the resumable loop (with a fake pipeline and with the tiny real one), reports, and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import evaluate_shadow as ev
from dataset_loading import detect_track
from pipeline_shadow import ObjectLatents

# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


def _random_map(seed=0, shape=(16, 16)):
    return np.random.default_rng(seed).random(shape)


def test_identical_maps_are_perfect():
    g = _random_map()
    assert ev.soft_iou(g, g) == pytest.approx(1.0)
    assert ev.rmse(g, g) == pytest.approx(0.0)
    assert ev.scale_invariant_rmse(g, g) == pytest.approx(0.0, abs=1e-12)
    assert ev.zncc(g, g) == pytest.approx(1.0)


def test_hand_computed_iou_and_rmse():
    p = np.array([[0.0, 0.5], [1.0, 1.0]])
    g = np.array([[0.0, 1.0], [0.5, 1.0]])
    assert ev.soft_iou(p, g) == pytest.approx((0 + 0.5 + 0.5 + 1) / (0 + 1 + 1 + 1))
    assert ev.rmse(p, g) == pytest.approx(math.sqrt((0.25 + 0.25) / 4))


def test_scaled_prediction_has_zero_s_rmse_but_positive_rmse():
    g = _random_map(1)
    p = 0.5 * g
    assert ev.rmse(p, g) > 0.1
    assert ev.scale_invariant_rmse(p, g) == pytest.approx(0.0, abs=1e-12)
    assert ev.zncc(p, g) == pytest.approx(1.0)


def test_s_rmse_scale_is_clipped_at_zero_and_never_exceeds_rmse():
    p, g = np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 0.0]])  # <p, g> = 0 -> a* = 0
    assert ev.scale_invariant_rmse(p, g) == pytest.approx(math.sqrt(1 / 4))
    for seed in range(5):
        p, g = _random_map(seed), _random_map(seed + 10)
        assert ev.scale_invariant_rmse(p, g) <= ev.rmse(p, g) + 1e-12


def test_inverted_prediction_has_zncc_minus_one():
    g = _random_map(2)
    assert ev.zncc(1.0 - g, g) == pytest.approx(-1.0)


def test_empty_and_constant_cases():
    empty = np.zeros((8, 8))
    g = _random_map(3, (8, 8))
    assert ev.soft_iou(empty, empty) == 1.0  # both empty -> 1 by definition
    assert ev.soft_iou(empty, g) == 0.0
    assert ev.rmse(empty, empty) == 0.0
    assert ev.scale_invariant_rmse(empty, g) == pytest.approx(ev.rmse(empty, g))  # a* = 0 for an empty prediction
    assert ev.zncc(np.full((8, 8), 0.3), g) == 0.0  # constant map -> 0 by definition
    assert ev.zncc(g, np.full((8, 8), 0.3)) == 0.0
    assert ev.zncc(empty, empty) == 0.0


def test_metrics_are_batched_and_accept_torch():
    g = np.stack([_random_map(4), _random_map(5), np.zeros((16, 16))])[:, None]  # [3,1,H,W]
    p = np.stack([_random_map(4), 1.0 - _random_map(5), np.zeros((16, 16))])[:, None]
    metrics = ev.compute_metrics(torch.from_numpy(p).float(), torch.from_numpy(g).float())
    assert {name: values.shape for name, values in metrics.items()} == {name: (3, 1) for name in ev.METRIC_NAMES}
    np.testing.assert_allclose(metrics["iou"][[0, 2], 0], [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(metrics["zncc"][:, 0], [1.0, -1.0, 0.0], atol=1e-6)
    for i in range(3):  # batched = one by one
        assert metrics["s_rmse"][i, 0] == pytest.approx(ev.scale_invariant_rmse(p[i, 0], g[i, 0]), abs=1e-6)


def test_metric_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        ev.rmse(np.zeros((4, 4)), np.zeros((4, 5)))


# --------------------------------------------------------------------------------------------------------------------
# Estimators: a thin vertical pole seen by a raised orthographic camera on -y (docs/design.md §2), with the ground shadow of
# a light at (theta, phi) rasterised as a thick segment; penumbra as a linear ramp of known width.
# --------------------------------------------------------------------------------------------------------------------

SIZE, ELEVATION_DEG = 160, 20.0


def _pixel_grid(size=SIZE):
    rows, cols = np.mgrid[0:size, 0:size]
    return np.stack([cols, size - 1.0 - rows], axis=-1).astype(np.float64)  # (x, y up)


def _segment_distance(points, start, end):
    direction = end - start
    t = np.clip(((points - start) @ direction) / max(direction @ direction, 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (start + t[..., None] * direction), axis=-1)


def _pole_scene(theta, phi, penumbra=0.0, size=SIZE):
    """(shadow, mask, foot, image-space end of the shadow) for a pole of height size/4 whose foot is at (size/2, size/4)
    in the y-up frame; the ground point (x, y) maps to (x, y sin e) in the image (orthographic camera on -y)."""
    scale = size / SIZE
    foot, height, half_width = np.array([size / 2, size / 4]), size / 4, 3.0 * scale
    points = _pixel_grid(size)
    top = foot + np.array([0.0, height * math.cos(math.radians(ELEVATION_DEG))])
    mask = (_segment_distance(points, foot, top) <= 2.0 * scale).astype(np.float64)
    length = height * math.tan(math.radians(theta))
    ground = -length * np.array([math.cos(math.radians(phi)), math.sin(math.radians(phi))])  # away from the light
    end = foot + ground * np.array([1.0, math.sin(math.radians(ELEVATION_DEG))])
    distance = _segment_distance(points, foot, end)
    if penumbra > 0:
        shadow = np.clip((half_width + penumbra * scale / 2 - distance) / (penumbra * scale), 0.0, 1.0)
    else:
        shadow = (distance <= half_width).astype(np.float64)
    return shadow * (1.0 - mask), mask, foot, end


def test_contact_point_is_the_bottom_band_centroid():
    mask = np.zeros((64, 64))
    mask[10:30, 20:30] = 1.0  # 20 rows -> the lowest 2 rows (28, 29)
    np.testing.assert_allclose(ev.contact_point(mask), [24.5, 63 - 28.5])
    assert ev.object_height(mask) == 20
    assert np.isnan(ev.contact_point(np.zeros((8, 8)))).all()


@pytest.mark.parametrize("angle", [0, 30, 90, 135, 180, 200, 270, 315])
def test_direction_of_a_blob_placed_at_a_known_angle(angle):
    mask = np.zeros((128, 128))
    mask[60:68, 60:68] = 1.0  # contact point (63.5, 128 - 1 - 67) = (63.5, 60)
    contact = ev.contact_point(mask)
    center = contact + 30.0 * np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
    points = _pixel_grid(128)
    shadow = np.exp(-np.sum((points - center) ** 2, axis=-1) / (2 * 3.0**2))
    assert ev.angle_error_deg(ev.shadow_direction_deg(shadow, mask), angle) == pytest.approx(0.0, abs=0.5)


@pytest.mark.parametrize("phi", [0, 45, 90, 135, 180, 225, 315])
def test_pole_shadow_direction_is_phi_plus_180_foreshortened(phi):
    shadow, mask, foot, end = _pole_scene(theta=35, phi=phi)
    expected = math.degrees(math.atan2(*(end - foot)[::-1])) % 360
    direction = ev.shadow_direction_deg(shadow, mask)
    # The contact point is the centroid of the bottom 10 % of mask rows, a pixel or two off the pole's foot: a few degrees.
    assert ev.angle_error_deg(direction, expected) == pytest.approx(0.0, abs=5.0)
    assert abs(ev.angle_error_deg(direction, ev.expected_direction_deg(phi))) < 90.0  # never another quadrant
    if phi == 0:  # light on the image's right -> shadow to the left
        assert direction == pytest.approx(180.0, abs=5.0)


def test_pole_shadow_extent_follows_theta():
    thetas = [5, 15, 25, 35, 45]
    extents = []
    for theta in thetas:
        shadow, mask, foot, end = _pole_scene(theta=theta, phi=0)
        extents.append(ev.shadow_extent(shadow, mask))
        far_end = np.linalg.norm(end - foot) + 3.0  # the segment plus its rounded cap
        assert 0.85 * far_end <= extents[-1] <= far_end
    assert ev.spearman(thetas, extents) == pytest.approx(1.0)
    relative = ev.control_estimates(*_pole_scene(theta=45, phi=0)[:2])["extent_rel"]
    assert relative == pytest.approx(extents[-1] / ev.object_height(_pole_scene(45, 0)[1]))


def test_softness_hard_ramp_known_share_and_scale_invariance():
    points = _pixel_grid()
    distance = np.linalg.norm(points - np.array([80.0, 80.0]), axis=-1)
    radius = 40.0
    hard = (distance <= radius).astype(np.float64)
    assert ev.shadow_softness(hard) == 0.0
    shares = []
    for width in (4.0, 10.0, 20.0):
        ramp = np.clip((radius - distance) / width, 0.0, 1.0)  # s > 0.05 inside R - .05w, s < 0.95 beyond R - .95w
        expected = ((radius - 0.05 * width) ** 2 - (radius - 0.95 * width) ** 2) / (radius - 0.05 * width) ** 2
        shares.append(ev.shadow_softness(ramp))
        assert shares[-1] == pytest.approx(expected, abs=0.03)
        assert ev.shadow_softness(0.5 * ramp) == pytest.approx(shares[-1], abs=1e-9)  # a faint map: same softness
    assert shares == sorted(shares)
    sizes = [2, 4, 8]
    softness = [ev.shadow_softness(_pole_scene(30, 0, penumbra=2.0 * s)[0]) for s in sizes]
    assert ev.spearman(sizes, softness) == pytest.approx(1.0)
    assert math.isnan(ev.shadow_softness(np.zeros((8, 8))))


def test_estimators_are_nan_without_shadow():
    mask = np.zeros((32, 32))
    mask[10:20, 10:20] = 1.0
    estimates = ev.control_estimates(np.zeros((32, 32)), mask)
    assert all(math.isnan(value) for value in estimates.values())


def test_angle_error_is_the_smallest_signed_angle():
    assert ev.angle_error_deg(10, 350) == pytest.approx(20)
    assert ev.angle_error_deg(350, 10) == pytest.approx(-20)
    assert ev.angle_error_deg(180, 0) == pytest.approx(-180)
    np.testing.assert_allclose(ev.angle_error_deg([90, 270], [0, 0]), [90, -90])
    assert ev.expected_direction_deg(0) == 180 and ev.expected_direction_deg(270) == 90


def test_spearman():
    assert ev.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24)
    assert ev.spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert ev.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert ev.spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(
        np.corrcoef([1.5, 1.5, 3.5, 3.5], [1, 2, 3, 4])[0, 1]
    )
    assert ev.spearman([1, 2, float("nan"), 3, 4], [1, 2, 0, 3, 4]) == pytest.approx(1.0)
    assert math.isnan(ev.spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(ev.spearman([1, 2], [1, 2]))


# --------------------------------------------------------------------------------------------------------------------
# The loop, summaries and reports with a fake pipeline (fast) and with the tiny real one
# --------------------------------------------------------------------------------------------------------------------

TRACK_LIGHTS = {
    "softness": [(30.0, 0.0, s) for s in (2.0, 4.0, 8.0)],
    "horizontal": [(35.0, p, 2.0) for p in (0.0, 90.0, 180.0)],
    "vertical": [(t, 0.0, 2.0) for t in (5.0, 25.0, 45.0)],
}


def _samples(tracks=True, size=SIZE):
    """Benchmark-like samples: the pole scene per light, key, track."""
    samples = []
    for track, lights in TRACK_LIGHTS.items():
        for i, (theta, phi, light_size) in enumerate(lights):
            shadow, mask, _, _ = _pole_scene(theta, phi, penumbra=2.0 * light_size, size=size)
            samples.append(
                {
                    "id": f"{track[:4]}_{i:03d}",
                    "track": track if tracks else None,
                    "shadow": shadow,
                    "mask": mask,
                    "light": (theta, phi, light_size),
                }
            )
    return samples


def _batches(samples, batch_size):
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        mask = torch.tensor(np.stack([s["mask"] for s in chunk]), dtype=torch.float32)[:, None]
        yield {
            "object_image": (1.0 - 2.0 * mask * 0.6).expand(-1, 3, -1, -1).clone(),  # gray object on white, [-1, 1]
            "mask": mask,
            "shadow_map": torch.tensor(np.stack([s["shadow"] for s in chunk]), dtype=torch.float32)[:, None],
            "theta": torch.tensor([s["light"][0] for s in chunk]),
            "phi": torch.tensor([s["light"][1] for s in chunk]),
            "size": torch.tensor([s["light"][2] for s in chunk]),
            "id": [s["id"] for s in chunk],
            "track": [s["track"] for s in chunk],
        }


class FakePipe:
    """Returns the pole shadow for the requested light, plus noise from each image's own generator; counts calls.
    Takes the loader's preprocessed objects through `encode_preprocessed`, as the real pipeline does."""

    def __init__(self):
        self.predicted = 0
        self.encoded = 0

    def encode_preprocessed(self, object_image, mask):
        assert -1.0 <= float(object_image.min()) and float(object_image.max()) <= 1.0  # the loader's VAE input
        self.encoded += object_image.shape[0]
        objects = list(((object_image + 1.0) / 2.0).unbind(0))
        sizes = [tuple(o.shape[-2:]) for o in objects]
        return ObjectLatents(object_image, mask, [None] * len(objects), sizes, objects, list(mask.unbind(0)))

    def __call__(self, theta, phi, size, generator, output_type, object_latents, **kwargs):
        assert output_type == "pt" and len(generator) == len(theta) == object_latents.object_latents.shape[0]
        self.predicted += len(theta)
        maps = []
        for t, p, s, g, (height, _) in zip(theta, phi, size, generator, object_latents.sizes):
            shadow = torch.tensor(_pole_scene(t, p, penumbra=2.0 * s, size=height)[0], dtype=torch.float32)
            maps.append((shadow * 0.9 + 0.05 * torch.rand(shadow.shape, generator=g)).clamp(0, 1))

        class Output:
            shadow_maps = torch.stack(maps)[:, None]

        return Output()


def test_evaluate_is_independent_of_batch_size_and_groups_tracks():
    samples = _samples()
    a = ev.evaluate(FakePipe(), _batches(samples, 2), num_seeds=2, progress=False)
    b = ev.evaluate(FakePipe(), _batches(samples, 5), num_seeds=2, progress=False)
    assert len(a.records) == len(samples) * 2
    for ra, rb in zip(a.records, b.records):
        timings = ("seconds", "encode_seconds")
        assert {k: v for k, v in ra.items() if k not in timings} == pytest.approx(
            {k: v for k, v in rb.items() if k not in timings}, nan_ok=True
        )
    assert [r["track"] for r in a.records[::2]] == [s["track"] for s in samples]
    assert [(r["index"], r["seed"]) for r in a.records[:3]] == [(0, 0), (0, 1), (1, 0)]
    assert a.records[0]["generator_seed"] != a.records[1]["generator_seed"]
    no_tracks = ev.evaluate(FakePipe(), _batches(_samples(tracks=False), 4), num_seeds=1, limit=5, progress=False)
    assert {r["track"] for r in no_tracks.records} == {ev.ALL_TRACK} and len(no_tracks.records) == 5
    assert list(ev.summarize(no_tracks.records)) == [ev.ALL_TRACK]


def test_evaluate_resumes_and_refuses_other_settings(tmp_path):
    samples = _samples()
    pipe = FakePipe()
    first = ev.evaluate(pipe, _batches(samples, 4), num_seeds=2, limit=5, output_dir=tmp_path, progress=False)
    assert pipe.predicted == 10 and len(first.records) == 10
    with open(tmp_path / "records.jsonl", "a") as handle:
        handle.write('{"index": 5, "id": "trunc')  # a run killed mid-write
    pipe = FakePipe()
    resumed = ev.evaluate(pipe, _batches(samples, 4), num_seeds=3, output_dir=tmp_path, progress=False)
    assert pipe.predicted == len(samples) * 3 - 10  # only the missing (image, seed) pairs
    assert len(resumed.records) == len(samples) * 3
    assert len(ev.load_records(tmp_path / "records.jsonl")) == len(samples) * 3
    fresh = ev.evaluate(FakePipe(), _batches(samples, 3), num_seeds=3, progress=False)
    for ra, rb in zip(resumed.records, fresh.records):
        assert ra["iou"] == pytest.approx(rb["iou"]) and ra["id"] == rb["id"]
    with pytest.raises(ValueError, match="num_inference_steps.*--overwrite"):
        ev.evaluate(FakePipe(), _batches(samples, 4), num_inference_steps=2, output_dir=tmp_path, progress=False)
    pipe = FakePipe()
    ev.evaluate(
        pipe,
        _batches(samples, 4),
        num_seeds=1,
        num_inference_steps=2,
        output_dir=tmp_path,
        overwrite=True,
        progress=False,
    )
    assert pipe.predicted == len(samples)
    latent_batch = {"object_latents": torch.zeros(1, 4, 8, 8), "id": ["x"], "theta": torch.zeros(1)}
    with pytest.raises(ValueError, match="lacks object_image, mask, shadow_map"):
        ev.evaluate(FakePipe(), [latent_batch], num_seeds=1, progress=False)


def test_summaries_and_control_on_hand_made_records():
    base = {"track": "softness", "theta": 30.0, "phi": 0.0, "size": 2.0, "rmse": 0.0, "s_rmse": 0.0, "zncc": 1.0}
    estimates = {"direction_deg": 170.0, "gt_direction_deg": 180.0, "extent_rel": 1.0, "gt_extent_rel": 1.0}
    records = [
        {**base, **estimates, "index": 0, "id": "a", "seed": 0, "iou": 0.2, "softness": 0.1, "gt_softness": 0.1},
        {**base, **estimates, "index": 0, "id": "a", "seed": 1, "iou": 0.4, "softness": 0.1, "gt_softness": 0.1},
        {**base, **estimates, "index": 1, "id": "b", "seed": 0, "iou": 0.6, "size": 4.0, "softness": 0.3,
         "gt_softness": 0.2, "direction_deg": 0.0},
        {**base, **estimates, "index": 1, "id": "b", "seed": 1, "iou": 0.8, "size": 4.0, "softness": 0.3,
         "gt_softness": 0.2, "direction_deg": float("nan")},
    ]  # fmt: skip
    iou = ev.summarize(records)["softness"]["iou"]
    assert iou["mean"] == pytest.approx(0.5) and iou["std"] == pytest.approx(0.2) and iou["n"] == 2
    assert iou["seed_std"] == pytest.approx(0.1)  # each image: std of (0.2, 0.4) and of (0.6, 0.8)
    assert iou["seed_means_std"] == pytest.approx(0.1)  # seed means 0.4 and 0.6
    control = ev.control_summary(records)["softness"]
    assert control["direction_abs_error_deg"]["mean"] == pytest.approx((10 + 180) / 2)
    assert control["wrong_side_rate"] == pytest.approx(1 / 3) and control["direction_undetermined"] == 1
    assert control["gt_within_90_of_phi_rate"] == 1.0
    assert math.isnan(ev.spearman([2, 4], [0.1, 0.3]))  # two images: too few for a rank correlation


def test_write_reports(tmp_path):
    samples = _samples()
    results = ev.evaluate(
        FakePipe(), _batches(samples, 4), num_seeds=2, output_dir=tmp_path, samples_per_track=2, progress=False,
        settings={"model": "fake", "resolution": SIZE},
    )  # fmt: skip
    paths = ev.write_reports(results, tmp_path)
    assert {"metrics", "report", "plot_size", "plot_phi", "plot_theta", "contact_sheet"} <= set(paths)
    assert all(path.exists() and path.stat().st_size > 0 for path in paths.values())
    metrics = json.loads(paths["metrics"].read_text(), parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert len(metrics["records"]) == len(samples) * 2 and metrics["settings"]["model"] == "fake"
    assert set(metrics["summary"]) == set(TRACK_LIGHTS)
    control = metrics["control"]
    assert control["horizontal"]["gt_within_90_of_phi_rate"] == 1.0  # the estimators follow phi on the ground truth
    assert control["vertical"]["gt_spearman_theta_extent"] == pytest.approx(1.0)
    assert control["softness"]["gt_spearman_size_softness"] == pytest.approx(1.0)
    assert control["horizontal"]["wrong_side_rate"] == 0.0  # the fake pipe predicts the right shadow
    report = paths["report"].read_text()
    assert "paper's figure, 1 step(s) (not ours)" in report and "0.768" in report and "0.818" in report
    assert report.count("| **this run, 1 step(s)** |") == 3
    assert "Control accuracy" in report and "contact_sheet.png" in report
    assert len(list((tmp_path / "samples").glob("*_prediction.png"))) == 6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset_type", "custom"], "needs `--train_data_dir`"),
        (["--dataset_type", "hf"], "needs `--dataset_name`"),
        (["--num_seeds", "0"], "num_seeds"),
        (["--resolution", "100"], "multiple of 8"),
    ],
)
def test_cli_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        ev.parse_args(["--model", "m", *argv])
    assert message in capsys.readouterr().err


def test_cli_default_benchmark():
    args = ev.parse_args(["--model", "m"])
    assert args.dataset_type == "benchmark" and args.dataset_name == ev.DEFAULT_BENCHMARK_DATASET


def test_tiny_pipeline_evaluates_real_predictions(tiny_pipeline, tmp_path):
    samples = _samples(size=64)
    results = ev.evaluate(tiny_pipeline, _batches(samples[:4], 3), num_seeds=2, output_dir=tmp_path, progress=False)
    assert len(results.records) == 8
    for record in results.records:
        assert 0.0 <= record["iou"] <= 1.0 and 0.0 <= record["rmse"] <= 1.0 and -1.0 <= record["zncc"] <= 1.0
        assert record["s_rmse"] <= record["rmse"] + 1e-9
    assert results.records[0]["iou"] != results.records[1]["iou"]  # seeds differ
    again = ev.evaluate(tiny_pipeline, _batches(samples[:4], 4), num_seeds=2, progress=False)
    np.testing.assert_allclose([r["rmse"] for r in results.records], [r["rmse"] for r in again.records], atol=1e-5)


def test_cli_end_to_end_on_a_tiny_benchmark_tar_and_resume(tiny_shadow_dir, tmp_path):
    from data_factory import make_benchmark_tar

    tar_path = make_benchmark_tar(tmp_path / "benchmark.tar", n_per_track=2, size=64)
    output_dir = tmp_path / "eval"

    def run(limit=None, resolution=64):
        argv = [
            "--model", str(tiny_shadow_dir), "--dataset_type", "benchmark", "--data_dir", str(tar_path),
            "--num_seeds", "2", "--resolution", str(resolution), "--eval_batch_size", "4", "--num_workers", "0",
            "--output_dir", str(output_dir), "--no_progress",
        ]  # fmt: skip
        return ev.main(argv + (["--limit", str(limit)] if limit else []))

    results = run(limit=5)
    assert len(results.records) == 10 and results.settings["dtype"] == "float32"
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert [r["track"] for r in metrics["records"]] == [detect_track(r["id"]) for r in metrics["records"]]
    assert set(metrics["summary"]) <= set(ev.TRACK_NAMES) and metrics["settings"]["model_fingerprint"]
    for name in ("report.md", "contact_sheet.png", "records.jsonl", "settings.json"):
        assert (output_dir / name).exists()
    # Resume over the whole tar: the first 5 images x 2 seeds are reused as they are, the rest is computed.
    resumed = run()
    assert len(resumed.records) == 2 * 6
    for before, after in zip(results.records, resumed.records):
        assert (before["id"], before["seed"], before["iou"]) == (after["id"], after["seed"], after["iou"])
    with pytest.raises(ValueError, match="resolution"):
        run(resolution=32)


def test_cli_reads_custom_data_whole_and_in_order(tiny_shadow_dir, tmp_path):
    from data_factory import make_custom_dataset

    data_dir = make_custom_dataset(tmp_path / "data", n=5, size=64)
    argv = [
        "--model",
        str(tiny_shadow_dir),
        "--dataset_type",
        "custom",
        "--data_dir",
        str(data_dir),
        "--num_seeds",
        "1",
    ]
    argv += ["--eval_batch_size", "2", "--num_workers", "0", "--no_progress", "--output_dir", str(tmp_path / "eval")]
    results = ev.main(argv)
    ids = [record["id"] for record in results.records]
    assert len(ids) == 5 and ids == sorted(ids)  # not the training loader's shuffled order
    assert {record["track"] for record in results.records} == {ev.ALL_TRACK}
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## All images" in report and "paper's figure" not in report  # no paper row outside the benchmark


# --------------------------------------------------------------------------------------------------------------------
# One preprocessing path: the loader's tensors go to the latents as training uses them (issue #17, item 5)
# --------------------------------------------------------------------------------------------------------------------


def _custom_loader(root, stored_size, resolution=64, n=4):
    from data_factory import make_custom_dataset

    from dataset_loading import create_dataloaders

    data_dir = make_custom_dataset(root, n=n, size=stored_size)
    loader, _ = create_dataloaders(
        "custom", data_dir, batch_size=n, num_workers=0, image_size=resolution, val_fraction=0, shuffle=False
    )
    return loader


def test_evaluation_encodes_the_loaders_tensors_as_training_does(tiny_pipeline, tmp_path):
    from pipeline_shadow import encode_latents, mask_to_latent

    batch = next(iter(_custom_loader(tmp_path / "data", stored_size=128)))  # stored at 2x: resizing softens the mask
    mask = batch["mask"]
    assert bool(((mask > 0.01) & (mask < 0.99)).any())
    prepared = tiny_pipeline.encode_preprocessed(batch["object_image"], mask)
    with torch.no_grad():  # what the training step computes from the same batch
        object_latents = encode_latents(tiny_pipeline.vae, batch["object_image"])
    torch.testing.assert_close(prepared.object_latents, object_latents)
    torch.testing.assert_close(prepared.mask_latent, mask_to_latent(mask, tuple(object_latents.shape[-2:])))
    assert prepared.sizes == [(64, 64)] * 4 and torch.equal(torch.stack(prepared.masks), mask)
    # Going back to [0, 1] and through the pipeline's own preprocessing again would re-binarise the resized mask.
    again = tiny_pipeline.encode_object((batch["object_image"] + 1.0) / 2.0, mask, height=64, width=64)
    assert not torch.allclose(again.mask_latent, prepared.mask_latent)
    with pytest.raises(ValueError, match="must have the same size"):
        tiny_pipeline.encode_preprocessed(batch["object_image"], mask[:, :, :32])
    with pytest.raises(ValueError, match="has no `encode_preprocessed`"):  # e.g. an outdated remote-code copy
        ev.evaluate(object(), [batch], num_seeds=1, progress=False)


def test_data_stored_at_twice_the_resolution_scores_the_same(tiny_pipeline, tmp_path):
    tiny_pipeline.set_progress_bar_config(disable=True)
    conv_in = tiny_pipeline.unet.unet.conv_in  # its mask and object channels start at zero: make the model see them
    with torch.no_grad():
        conv_in.weight[:, 4:] = torch.randn(conv_in.weight[:, 4:].shape, generator=torch.Generator().manual_seed(0))
    means, predictions = {}, {}
    for stored in (64, 128):  # the same scenes, drawn at the model's resolution and at twice it
        loader = _custom_loader(tmp_path / f"d{stored}", stored)
        results = ev.evaluate(tiny_pipeline, loader, num_seeds=1, progress=False)
        summary = ev.summarize(results.records)[ev.ALL_TRACK]
        means[stored] = {name: summary[name]["mean"] for name in ev.METRIC_NAMES}
        batch = next(iter(loader))
        prepared = tiny_pipeline.encode_preprocessed(batch["object_image"], batch["mask"])
        predictions[stored] = tiny_pipeline(
            object_latents=prepared, generator=torch.Generator().manual_seed(0), output_type="pt"
        ).shadow_maps
    tolerance = {"iou": 0.01, "rmse": 0.01, "s_rmse": 0.01, "zncc": 0.03}  # measured gaps: <= 0.004, 0.011 (zncc)
    for name in ev.METRIC_NAMES:
        assert means[128][name] == pytest.approx(means[64][name], abs=tolerance[name]), name
    # The predictions themselves: the storage changes them far less than another object does (measured 0.006 vs 0.07).
    storage_gap = (predictions[128] - predictions[64]).abs().mean()
    object_gap = (predictions[64] - predictions[64].roll(1, dims=0)).abs().mean()
    assert storage_gap < 0.2 * object_gap, (storage_gap, object_gap)


def test_cli_refuses_bad_device_limit_workers_and_output_file(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("")
    for argv, message in (
        (["--device", "banana"], "`--device` 'banana' is not a device"),
        (["--limit", "0"], "`--limit` must be >= 1"),
        (["--num_workers", "-1"], "`--dataloader_num_workers` must be >= 0"),
        (["--output_dir", str(a_file)], "exists and is not a folder"),
    ):
        with pytest.raises(SystemExit):
            ev.parse_args(["--model", "m", *argv])
        assert message in capsys.readouterr().err


def test_missing_model_is_named_and_the_script_prints_no_traceback(tmp_path):
    import subprocess
    import sys

    argv = ["--model", str(tmp_path / "no-model"), "--light_sets_dir", str(tmp_path), "--output_dir", str(tmp_path)]
    with pytest.raises(FileNotFoundError, match="--model .*no-model is not a folder"):
        ev.main(argv)
    script = f"import sys, runpy; sys.argv = ['evaluate_shadow.py', *{argv!r}]; runpy.run_path({ev.__file__!r}, run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "evaluate_shadow.py: error: --model" in result.stderr


def test_malformed_light_sets_and_resume_files_are_named(tmp_path):
    (tmp_path / "metadata.json").write_text("{oops")
    with pytest.raises(ValueError, match="metadata.json is not valid JSON"):
        ev.load_light_set_samples(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"a": {"lights": [{"theta": 30}]}}))
    with pytest.raises(ValueError, match=r"sample 'a' `lights\[0\]` lacks phi, size, power"):
        ev.load_light_set_samples(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"a": {"lights": [dict(theta=30, phi=0, size=2, power=1)]}}))
    with pytest.raises(ValueError, match="objects/a.png does not exist"):
        ev.load_light_set_samples(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "settings.json").write_text("{oops")
    with pytest.raises(ValueError, match="settings.json is not the settings of an earlier run.*--overwrite"):
        ev._check_resume(run, {}, overwrite=False)
    good = {"index": 0, "id": "x", "seed": 0, "iou": 0.5}
    (run / "records.jsonl").write_text(json.dumps(good) + "\n[1, 2]\n" + json.dumps({"iou": 1}) + "\n")
    assert ev.load_records(run / "records.jsonl") == [good]  # the two non-records are dropped (and warned about)
