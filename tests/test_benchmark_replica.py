"""The benchmark as it may really come (issue #19): one rule for track names, tracks from the light design, extra and
alternative metadata keys, polarity, and a 1024^2 replica tar read and scored per track through all three entry
points (`dataset_loading.py verify`, `create_dataloaders`, `evaluate_shadow.py`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from benchmark_replica import REPLICA_LIGHTS, UNTRACKED_KEY, make_benchmark_replica, replica_files, replica_samples
from data_factory import synthetic_sample, write_tar

import dataset_loading
import evaluate_shadow as ev
from dataset_loading import (
    TRACK_NAMES,
    create_dataloaders,
    detect_track,
    infer_tracks_from_lights,
    object_stem,
    open_shadow_dataset,
    track_from_name,
    verify_dataset,
)

NUM_SAMPLES = 3 * 2 * 3  # objects x lights x tracks


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_benchmark_replica(tmp_path_factory.mktemp("replica") / "controllable-shadow-generation-benchmark.tar")


def _truth() -> dict[str, tuple[str, tuple]]:
    return {key: (track, light) for key, track, light, _ in replica_samples()}


# --------------------------------------------------------------------------------------------------------------------
# One rule for track names
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "track"),
    [
        ("softness", "softness"),
        ("soft", "softness"),
        ("softness_control", "softness"),
        ("Soft", "softness"),
        ("horizontal", "horizontal"),
        ("horz", "horizontal"),
        ("direction_control_horz", "horizontal"),
        ("HORIZONTAL", "horizontal"),
        ("vertical", "vertical"),
        ("direction_control_vert", "vertical"),
        ("Track-Vert", "vertical"),
        ("soft_vert", None),  # names two tracks: names none
        ("diagonal", None),
        (2, None),
    ],
)
def test_one_rule_for_metadata_values_and_names(text, track):
    assert track_from_name(text) == track
    assert detect_track("x", {"track": text}) == track  # the same rule for a `track` value ...
    assert detect_track(f"{text}/obj_001_size2") == track  # ... and for a folder or key


def test_metadata_wins_then_key_folders_outermost_first():
    assert detect_track("direction_control_vert/obj_1", {"track": "softness_control"}) == "softness"
    assert detect_track("direction_control_vert/obj_1", {"track": "diagonal"}) == "vertical"  # unread value: the key
    assert detect_track("softness_control/obj_convert_3") == "softness"  # the folder, not `convert` in the name
    assert detect_track("mesh03", {"track": None}) is None


def test_tracks_from_the_light_design():
    records = [
        dataset_loading.SampleRecord(key, *light)
        for key, light in [
            ("renders/obj_001_size2", (30, 0, 2)),
            ("renders/obj_001_size8", (30, 0, 8)),
            ("renders/obj_001_phi60", (35, 60, 2)),
            ("renders/obj_001_phi240", (35, 240, 2)),
            ("renders/obj_001_theta15", (15, 0, 2)),
            ("renders/obj_001_theta45", (45, 0, 2)),
            ("renders/obj_002_7", (30, 0, 2)),  # alone in its group: nothing varies
            ("mixed/0001", (30, 0, 4)),  # several parameters vary in the group: ambiguous
            ("mixed/0002", (35, 90, 2)),
        ]
    ]
    assert object_stem("renders/obj_001_size8") == "renders/obj_001_size" and object_stem("a/obj_002_7") == "a/obj_002"
    assert infer_tracks_from_lights(records) == {
        "renders/obj_001_size2": "softness",
        "renders/obj_001_size8": "softness",
        "renders/obj_001_phi60": "horizontal",
        "renders/obj_001_phi240": "horizontal",
        "renders/obj_001_theta15": "vertical",
        "renders/obj_001_theta45": "vertical",
    }


# --------------------------------------------------------------------------------------------------------------------
# The replica through the three entry points
# --------------------------------------------------------------------------------------------------------------------


def test_replica_verify_cli_reports_per_track(replica, capsys):
    assert dataset_loading.main(["verify", str(replica)]) == 0
    out = capsys.readouterr().out
    assert f"OK, {NUM_SAMPLES} sample(s) checked, 0 error(s), 0 warning(s)" in out
    for track in TRACK_NAMES:  # objects 1 and 2 spell the track in the metadata, object 3 only in its folder
        assert f"track {track}: 6 sample(s) (4 from the metadata, 2 from the key)" in out
    assert "kept unread in each record's `extra`: light_energy, light_location, r, samples" in out


def test_replica_loads_per_track_at_the_model_resolution(replica):
    loader, val_loader = create_dataloaders(
        dataset_type="benchmark", data_dir=replica, batch_size=NUM_SAMPLES, num_workers=0, image_size=64
    )
    assert val_loader is None
    batch = next(iter(loader))
    assert batch["object_image"].shape == (NUM_SAMPLES, 3, 64, 64) and batch["shadow_map"].shape[-2:] == (64, 64)
    truth = _truth()
    assert batch["id"] == sorted(truth)
    for i, key in enumerate(batch["id"]):
        track, (theta, phi, size) = truth[key]
        assert batch["track"][i] == track
        assert (batch["theta"][i].item(), batch["phi"][i].item(), batch["size"][i].item()) == (theta, phi, size)
    record = loader.dataset.records[0]
    assert record.extra["r"] == 8.0 and len(record.extra["light_location"]) == 3 and "track" not in record.extra
    # 1024^2 -> 64^2 keeps the content: the same scene drawn directly at 64 px is within a few gray levels.
    theta, phi, size = truth[batch["id"][0]][1]
    _, mask, shadow = synthetic_sample(theta, phi, size, image_size=64, seed=0)
    direct_shadow = torch.from_numpy(np.asarray(shadow, dtype=np.float32) / 255.0)
    direct_mask = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)
    assert (batch["shadow_map"][0, 0] - direct_shadow).abs().mean() < 0.02
    assert (batch["mask"][0, 0] - direct_mask).abs().mean() < 0.03


def test_replica_evaluates_per_track(replica, tiny_shadow_dir, tmp_path):
    output_dir = tmp_path / "eval"
    argv = ["--model", str(tiny_shadow_dir), "--dataset_type", "benchmark", "--data_dir", str(replica),
            "--num_seeds", "1", "--eval_batch_size", "6", "--num_workers", "0", "--output_dir", str(output_dir),
            "--no_progress"]  # fmt: skip
    results = ev.main(argv)  # at the model's own resolution (64 px): every 1024^2 PNG is brought down to it
    assert results.settings["resolution"] == 64 and len(results.records) == NUM_SAMPLES
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert list(metrics["summary"]) == list(TRACK_NAMES)
    assert {track: entry["num_images"] for track, entry in metrics["summary"].items()} == dict.fromkeys(TRACK_NAMES, 6)
    truth = _truth()
    assert all(record["track"] == truth[record["id"]][0] for record in metrics["records"])
    report = (output_dir / "report.md").read_text()
    for title in ("Track 1", "Track 2", "Track 3"):
        assert title in report


# --------------------------------------------------------------------------------------------------------------------
# What else the real tar may hold: no track names, other light keys, inverted maps
# --------------------------------------------------------------------------------------------------------------------


def test_without_track_names_the_light_design_tells_and_the_rest_is_one_warning(tmp_path):
    tar = write_tar(tmp_path / "b.tar", replica_files(num_objects=2, size=32, track_names=False))
    report = verify_dataset(tar)
    assert report.ok, report
    assert [p.kind for p in report.warnings] == ["unknown_track"] and UNTRACKED_KEY in report.warnings[0].message
    assert "track softness: 4 sample(s) (4 from the light design)" in str(report)
    dataset = open_shadow_dataset("benchmark", tar, image_size=32)
    tracks = {record.id: record.track for record in dataset.records}
    assert tracks.pop(UNTRACKED_KEY) is None
    assert tracks == {key: track for key, track, _, _ in replica_samples(2, track_names=False)}


def test_alternative_light_spellings_read_the_same(tmp_path):
    plain = open_shadow_dataset("benchmark", write_tar(tmp_path / "a.tar", replica_files(1, 16)), image_size=16)
    files = replica_files(1, 16, light_keys=("polar", "azimuth", "light_size"))
    key = "softness_control/obj_001_size2"  # the same value under two spellings is no conflict
    files[f"{key}.metadata.json"] = json.dumps({**json.loads(files[f"{key}.metadata.json"]), "Theta": 30.0}).encode()
    other = open_shadow_dataset("benchmark", write_tar(tmp_path / "b.tar", files), image_size=16)
    assert [(r.id, r.theta, r.phi, r.size, r.track) for r in other.records] == [
        (r.id, r.theta, r.phi, r.size, r.track) for r in plain.records
    ]
    assert "polar" not in other.records[0].extra


def test_light_spellings_of_another_convention_are_refused_naming_them(tmp_path):
    files = replica_files(1, 16)
    key = "softness_control/obj_001_size2"
    metadata = json.loads(files[f"{key}.metadata.json"])
    metadata["elevation"] = 90 - metadata.pop("theta")
    files[f"{key}.metadata.json"] = json.dumps(metadata).encode()
    other = "softness_control/obj_001_size8"
    files[f"{other}.metadata.json"] = json.dumps({**json.loads(files[f"{other}.metadata.json"]), "polar": 10}).encode()
    report = verify_dataset(write_tar(tmp_path / "b.tar", files), level="metadata")
    assert {p.kind for p in report.errors} == {"unsupported_light_key", "light_conflict"}, report
    text = str(report)
    assert f"{key}.metadata.json: has no `theta` (`elevation` is not read: it is measured from the horizon" in text
    assert "Accepted: `theta`, `theta_deg`, `light_theta`, `polar`" in text
    assert "`theta` = 30, `polar` = 10" in text


def test_polarity_check_on_an_inverted_replica(tmp_path):
    inverted = write_tar(tmp_path / "inverted.tar", replica_files(1, 128, inverted=True))
    report = verify_dataset(inverted)
    assert report.ok and {p.kind for p in report.warnings} == {"inverted_shadow"} and len(report.warnings) == 6
    plain = open_shadow_dataset("benchmark", write_tar(tmp_path / "plain.tar", replica_files(1, 128)), image_size=64)
    fixed = open_shadow_dataset("benchmark", inverted, image_size=64, invert_shadow_maps=True)
    for index in (0, len(plain) - 1):
        assert torch.allclose(fixed.load_sample(index)["shadow_map"], plain.load_sample(index)["shadow_map"])


def test_replica_lights_follow_the_paper_designs():
    for track, lights in REPLICA_LIGHTS.items():
        varied = {name for i, name in enumerate(("theta", "phi", "size")) if len({light[i] for light, _ in lights}) > 1}
        assert [dataset_loading.TRACK_VARIED_LIGHT[name] for name in varied] == [track]


def test_hf_track_column_uses_the_same_rule_and_warns_once(tmp_path):
    import datasets
    from data_factory import make_hf_dataset

    saved = datasets.load_from_disk(str(make_hf_dataset(tmp_path / "hf", n=3, size=16, with_object_id=False)))
    saved.add_column("track", ["direction_control_horz", "diagonal", None]).save_to_disk(str(tmp_path / "tracked"))
    report = verify_dataset(tmp_path / "tracked", "hf", level="metadata")
    assert report.ok and [p.kind for p in report.warnings] == ["unknown_track_value"] and "'diagonal'" in str(report)
    dataset = open_shadow_dataset("hf", dataset_name=str(tmp_path / "tracked"), image_size=16)
    assert [record.track for record in dataset.records] == ["horizontal", None, None]
