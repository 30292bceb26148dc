# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""dataset_loading.py: batches, resizing, flip, split, verification (one broken thing at a time), Hugging Face
datasets, the benchmark tar and the latent cache. Offline, tiny data built in tmp_path."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from data_factory import (
    benchmark_files,
    make_benchmark_folder,
    make_benchmark_tar,
    make_custom_dataset,
    make_hf_dataset,
    synthetic_sample,
    write_tar,
)

import dataset_loading
from dataset_loading import (
    CachedLatentDataset,
    DatasetVerificationError,
    SampleLoadError,
    SampleRecord,
    ShadowDataSource,
    build_latent_cache,
    create_dataloaders,
    infer_dataset_type,
    main,
    mirror_phi,
    open_shadow_dataset,
    split_indices,
    verify_dataset,
)
from pipeline_shadow import encode_latents, mask_to_latent, shadow_to_vae_input
from random_sdxl import random_vae

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def custom_root(tmp_path) -> Path:
    return make_custom_dataset(tmp_path / "data", n=8, size=32)


def _errors(report) -> list[str]:
    return [f"{p.kind} | {p}" for p in report.errors]


# --------------------------------------------------------------------------------------------------------------------
# Batches and transforms
# --------------------------------------------------------------------------------------------------------------------


def test_issue_snippet_shapes(tmp_path):
    data_dir = make_custom_dataset(tmp_path / "data", n=8, size=64)
    train_loader, val_loader = create_dataloaders(
        dataset_type="custom", data_dir=str(data_dir), batch_size=2, num_workers=0, image_size=512
    )
    batch = next(iter(train_loader))
    assert batch["object_image"].shape == (2, 3, 512, 512) and batch["object_image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 1, 512, 512) and batch["mask"].dtype == torch.float32
    assert batch["shadow_map"].shape == (2, 1, 512, 512) and batch["shadow_map"].dtype == torch.float32
    assert 0.0 <= batch["shadow_map"].min() and batch["shadow_map"].max() <= 1.0
    assert -1.0 <= batch["object_image"].min() and batch["object_image"].max() <= 1.0
    for key in ("theta", "phi", "size"):
        assert batch[key].shape == (2,) and batch[key].dtype == torch.float32
    # One light tensor for the UNet, column for column the scalars (docs/design.md §8).
    assert batch["light"].shape == (2, 3) and batch["light"].dtype == torch.float32
    assert torch.equal(batch["light"], torch.stack([batch["theta"], batch["phi"], batch["size"]], dim=1))
    assert all(isinstance(stem, str) and stem.startswith("sample_") for stem in batch["id"])
    assert batch["track"] == [None, None]
    assert val_loader is not None
    # White outside the mask (docs/design.md §8): the gray background of the synthetic renders is gone.
    outside = batch["mask"].expand_as(batch["object_image"]) == 0
    assert torch.all(batch["object_image"][outside] == 1.0)


def test_flipped_light_is_mirrored_in_the_light_tensor(custom_root):
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    plain, flipped = dataset.load_sample(2), dataset.load_sample(2, flip=True)
    assert torch.equal(flipped["light"], torch.stack([flipped["theta"], flipped["phi"], flipped["size"]]))
    assert flipped["light"][1].item() == mirror_phi(plain["light"][1].item())


# --------------------------------------------------------------------------------------------------------------------
# One source description, one scan
# --------------------------------------------------------------------------------------------------------------------


def test_one_source_description_serves_open_verify_and_loaders(custom_root):
    source = ShadowDataSource("custom", data_dir=custom_root)
    by_keywords = open_shadow_dataset("custom", custom_root, image_size=32)
    assert open_shadow_dataset(source, image_size=32).fingerprint() == by_keywords.fingerprint()
    assert verify_dataset(source, level="quick").ok and verify_dataset(source).num_samples == 8
    from_source, _ = create_dataloaders(source, num_workers=0, image_size=32, shuffle=False, val_fraction=0)
    from_keywords, _ = create_dataloaders(
        dataset_type="custom", data_dir=custom_root, num_workers=0, image_size=32, shuffle=False, val_fraction=0
    )
    for a, b in zip(from_source, from_keywords):
        assert a["id"] == b["id"] and torch.equal(a["object_image"], b["object_image"])
        assert torch.equal(a["light"], b["light"])


def test_source_mistakes_name_the_argument(custom_root):
    source = ShadowDataSource("custom", data_dir=custom_root)
    with pytest.raises(ValueError, match="either a ShadowDataSource or its fields"):
        open_shadow_dataset(source, split="test")
    with pytest.raises(TypeError, match="image_colum"):
        open_shadow_dataset("hf", dataset_name="x", image_colum="image")
    with pytest.raises(ValueError, match="`data_dir` is required"):
        verify_dataset(ShadowDataSource("custom"))
    dataset = open_shadow_dataset(source, image_size=32)
    with pytest.raises(ValueError, match=r"`image_size`=64 differs from the opened dataset's \(32\)"):
        create_dataloaders(dataset, image_size=64, num_workers=0)
    with pytest.raises(ValueError, match="pass no source fields"):
        create_dataloaders(dataset, num_workers=0, split="test")


def test_an_opened_dataset_goes_to_the_loaders_without_a_second_scan(custom_root):
    """After the one scan, the loaders need only the image files: with metadata.json gone a new scan fails, the opened
    dataset still loads, split and flips exactly as a fresh open would."""
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    expected_train, expected_val = create_dataloaders(
        "custom", custom_root, batch_size=4, num_workers=0, image_size=32, val_fraction=0.25, seed=3, random_flip=True
    )
    (custom_root / "metadata.json").unlink()
    with pytest.raises(DatasetVerificationError):
        open_shadow_dataset("custom", custom_root, image_size=32)
    train, val = create_dataloaders(dataset, batch_size=4, num_workers=0, val_fraction=0.25, seed=3, random_flip=True)
    for loader, expected in ((train, expected_train), (val, expected_val)):
        for a, b in zip(loader, expected, strict=True):
            assert a["id"] == b["id"] and torch.equal(a["shadow_map"], b["shadow_map"])
            assert torch.equal(a["light"], b["light"])
    assert dataset.random_flip is False  # the loaders flip a view, not the caller's dataset


def test_light_values_follow_metadata(custom_root):
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    metadata = json.loads((custom_root / "metadata.json").read_text())
    for index in range(len(dataset)):
        sample = dataset.load_sample(index)
        entry = metadata[sample["id"]]
        assert (sample["theta"].item(), sample["phi"].item(), sample["size"].item()) == (
            entry["theta"],
            entry["phi"] % 360,
            entry["size"],
        )


def test_phi_is_wrapped(custom_root):
    metadata = json.loads((custom_root / "metadata.json").read_text())
    metadata["sample_000"]["phi"] = -20
    metadata["sample_001"]["phi"] = 380
    (custom_root / "metadata.json").write_text(json.dumps(metadata))
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    assert dataset.load_sample(0)["phi"].item() == 340.0
    assert dataset.load_sample(1)["phi"].item() == 20.0


def test_non_square_is_padded_not_squashed(tmp_path):
    root = make_custom_dataset(tmp_path / "data", n=2, size=(32, 64))  # H=32, W=64
    sample = open_shadow_dataset("custom", root, image_size=64).load_sample(0)
    # Long side 64 -> no scaling; 16 padded rows above and below: mask 0, shadow 0, object white.
    for rows in (slice(0, 16), slice(48, 64)):
        assert torch.all(sample["mask"][:, rows] == 0)
        assert torch.all(sample["shadow_map"][:, rows] == 0)
        assert torch.all(sample["object_image"][:, rows] == 1.0)
    original_mask = torch.from_numpy(np.asarray(PIL.Image.open(root / "masks" / "sample_000.png")) / 255.0).float()
    assert torch.equal(sample["mask"][0, 16:48], original_mask)  # the content itself is untouched
    original_shadow = np.asarray(PIL.Image.open(root / "shadows" / "sample_000.png")) / 255.0
    assert torch.allclose(sample["shadow_map"][0, 16:48], torch.from_numpy(original_shadow).float())


def test_downscaling_keeps_aspect_ratio(tmp_path):
    root = make_custom_dataset(tmp_path / "data", n=1, size=(64, 32))  # tall
    sample = open_shadow_dataset("custom", root, image_size=32).load_sample(0)
    columns_with_content = (sample["object_image"] < 1.0).any(dim=0).any(dim=0).nonzero().flatten()
    assert columns_with_content.min() >= 8 and columns_with_content.max() < 24  # 16 px wide, centred
    assert torch.all(sample["mask"][..., :8] == 0) and torch.all(sample["mask"][..., 24:] == 0)


@pytest.mark.parametrize("image_size", [500, 0, -8, 64.0])
def test_image_size_must_be_a_multiple_of_8(custom_root, image_size):
    with pytest.raises(ValueError, match="`image_size`"):
        create_dataloaders("custom", custom_root, image_size=image_size, num_workers=0)


def test_bad_arguments_name_the_argument(custom_root):
    with pytest.raises(ValueError, match="`dataset_type`"):
        create_dataloaders("folder", custom_root, num_workers=0)
    with pytest.raises(ValueError, match="`val_fraction`"):
        create_dataloaders("custom", custom_root, val_fraction=1.0, num_workers=0)
    with pytest.raises(ValueError, match="`batch_size`"):
        create_dataloaders("custom", custom_root, batch_size=0, num_workers=0)
    with pytest.raises(ValueError, match="`data_dir`"):
        create_dataloaders("custom", None, num_workers=0)
    with pytest.raises(ValueError, match="`dataset_name`"):
        create_dataloaders("hf", num_workers=0)


def test_binarize_masks_option(tmp_path):
    root = make_custom_dataset(tmp_path / "data", n=1, size=32)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 200
    mask[8:24, 8] = 100  # a soft edge
    PIL.Image.fromarray(mask).save(root / "masks" / "sample_000.png")
    binary = open_shadow_dataset("custom", root, image_size=32).load_sample(0)["mask"]
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert binary[0, 10, 8] == 0.0  # 100/255 < 0.5
    soft = open_shadow_dataset("custom", root, image_size=32, binarize_masks=False).load_sample(0)["mask"]
    assert soft[0, 10, 8].item() == pytest.approx(100 / 255)


# --------------------------------------------------------------------------------------------------------------------
# Flip
# --------------------------------------------------------------------------------------------------------------------


def _centroid_col(weights: torch.Tensor) -> float:
    columns = torch.arange(weights.shape[-1], dtype=torch.float32)
    return float((weights.sum(dim=-2) * columns).sum() / weights.sum())


def test_mirror_phi():
    # Flip: light on the right (0) goes to the left (180); 90 (behind the object) stays; the result is wrapped.
    assert mirror_phi(0.0) == 180.0 and mirror_phi(90.0) == 90.0 and mirror_phi(30.0) == 150.0
    assert mirror_phi(270.0) == 270.0 and mirror_phi(200.0) == 340.0


def test_flip_mirrors_image_mask_shadow_and_phi(tmp_path):
    root = make_custom_dataset(tmp_path / "data", n=1, size=64)
    metadata = {"sample_000": {"theta": 40, "phi": 0, "size": 2}}  # light on the right: shadow to the LEFT
    object_image, mask, shadow = synthetic_sample(**metadata["sample_000"], image_size=64, seed=3)
    object_image.save(root / "objects" / "sample_000.png")
    mask.save(root / "masks" / "sample_000.png")
    shadow.save(root / "shadows" / "sample_000.png")
    (root / "metadata.json").write_text(json.dumps(metadata))
    dataset = open_shadow_dataset("custom", root, image_size=64)
    plain, flipped = dataset.load_sample(0), dataset.load_sample(0, flip=True)
    for key in ("object_image", "mask", "shadow_map"):
        assert torch.equal(flipped[key], torch.flip(plain[key], dims=[-1])), key
    assert flipped["phi"].item() == mirror_phi(0.0) == 180.0
    assert flipped["theta"] == plain["theta"] and flipped["size"] == plain["size"]
    # The geometry agrees with the mirrored light: phi = 0 casts left of the object, phi = 180 right of it.
    assert _centroid_col(plain["shadow_map"][0]) < _centroid_col(plain["mask"][0])
    assert _centroid_col(flipped["shadow_map"][0]) > _centroid_col(flipped["mask"][0])


def test_random_flip_in_loader_keeps_image_and_phi_together(custom_root):
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    by_id = {dataset.records[i].id: i for i in range(len(dataset))}
    loader, _ = create_dataloaders(
        "custom", custom_root, batch_size=4, num_workers=0, image_size=32, val_fraction=0, random_flip=True, seed=1
    )
    torch.manual_seed(0)
    orientations = set()
    for _ in range(3):
        for batch in loader:
            for row, sample_id in enumerate(batch["id"]):
                plain = dataset.load_sample(by_id[sample_id])
                flipped = not torch.equal(batch["shadow_map"][row], plain["shadow_map"])
                expected = dataset.load_sample(by_id[sample_id], flip=flipped)
                assert torch.equal(batch["object_image"][row], expected["object_image"])
                assert batch["phi"][row] == expected["phi"]
                orientations.add(flipped)
    assert orientations == {True, False}


def _flip_pattern(loader, epoch):
    dataset_loading.set_epoch(loader, epoch)
    return {sample_id: float(phi) for batch in loader for sample_id, phi in zip(batch["id"], batch["phi"])}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_flips_are_a_function_of_seed_epoch_and_sample(custom_root, num_workers):
    """A resumed run must flip exactly what the uninterrupted run flipped: no global RNG involved, and persistent
    workers follow `set_epoch`."""

    def loader():
        return create_dataloaders(
            "custom", custom_root, batch_size=4, num_workers=num_workers, image_size=32, val_fraction=0,
            random_flip=True, seed=3,
        )[0]  # fmt: skip

    first, second = loader(), loader()
    torch.manual_seed(0)
    epoch0 = _flip_pattern(first, 0)
    torch.manual_seed(123)  # the global RNG must not matter
    assert _flip_pattern(second, 0) == epoch0
    epochs = [_flip_pattern(first, epoch) for epoch in (1, 2, 3)]
    assert any(pattern != epoch0 for pattern in epochs)  # a new epoch draws new flips ...
    assert _flip_pattern(second, 2) == epochs[1]  # ... reproducibly, also in a persistent worker


def test_validation_loader_never_flips(custom_root):
    _, val_loader = create_dataloaders(
        "custom", custom_root, batch_size=8, num_workers=0, image_size=32, val_fraction=0.5, random_flip=True
    )
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    by_id = {record.id: i for i, record in enumerate(dataset.records)}
    for _ in range(3):
        batch = next(iter(val_loader))
        for row, sample_id in enumerate(batch["id"]):
            assert torch.equal(batch["shadow_map"][row], dataset.load_sample(by_id[sample_id])["shadow_map"])


# --------------------------------------------------------------------------------------------------------------------
# Split
# --------------------------------------------------------------------------------------------------------------------


def _records(n: int, objects: int | None) -> list[SampleRecord]:
    return [
        SampleRecord(f"s{i:03d}", 30.0, 0.0, 2.0, object_id=None if objects is None else f"o{i % objects}")
        for i in range(n)
    ]


def test_split_is_deterministic_and_never_leaks_objects():
    records = _records(200, objects=37)
    train, val = split_indices(records, 0.2, seed=0)
    assert (train, val) == split_indices(records, 0.2, seed=0)
    assert sorted(train + val) == list(range(200))
    train_objects = {records[i].object_id for i in train}
    val_objects = {records[i].object_id for i in val}
    assert not train_objects & val_objects
    assert 0.15 <= len(val) / 200 <= 0.3
    assert any(split_indices(records, 0.2, seed=seed)[1] != val for seed in range(1, 4))


def test_split_by_sample_without_object_ids():
    records = _records(50, objects=None)
    train, val = split_indices(records, 0.1, seed=3)
    assert len(val) == 5 and not set(train) & set(val)


def test_split_through_create_dataloaders(tmp_path):
    root = make_custom_dataset(tmp_path / "data", n=20, size=16)
    metadata = json.loads((root / "metadata.json").read_text())

    def split(seed, split_seed=None):
        train, val = create_dataloaders(
            "custom", root, num_workers=0, image_size=16, seed=seed, val_fraction=0.25, split_seed=split_seed
        )
        return [train.dataset.dataset.records[i].id for i in train.dataset.indices], [
            val.dataset.dataset.records[i].id for i in val.dataset.indices
        ]

    train_ids, val_ids = split(0)
    assert (train_ids, val_ids) == split(0)
    assert split(7, split_seed=0) == split(0) != split(7)  # split_seed alone fixes the split; seed is the default
    assert not {metadata[s]["object_id"] for s in train_ids} & {metadata[s]["object_id"] for s in val_ids}
    everything, none = create_dataloaders("custom", root, num_workers=0, image_size=16, val_fraction=0)
    assert none is None and len(everything.dataset) == 20


def test_split_needs_two_groups(tmp_path):
    root = make_custom_dataset(tmp_path / "data", n=2, size=16)  # both samples are object_000
    with pytest.raises(ValueError, match="val_fraction=0"):
        create_dataloaders("custom", root, num_workers=0, image_size=16, val_fraction=0.5)


def test_loader_with_workers(custom_root):
    loader, _ = create_dataloaders(
        "custom", custom_root, batch_size=4, num_workers=2, image_size=32, val_fraction=0, shuffle=False
    )
    ids = [sample_id for batch in loader for sample_id in batch["id"]]
    assert ids == [f"sample_{i:03d}" for i in range(8)]


def test_metadata_jsonl_matches_json(tmp_path):
    json_root = make_custom_dataset(tmp_path / "a", n=4, size=16)
    jsonl_root = make_custom_dataset(tmp_path / "b", n=4, size=16, metadata_format="jsonl")
    a = open_shadow_dataset("custom", json_root, image_size=16)
    b = open_shadow_dataset("custom", jsonl_root, image_size=16)
    assert [r.__dict__ for r in a.records] == [r.__dict__ for r in b.records]
    assert torch.equal(a.load_sample(2)["object_image"], b.load_sample(2)["object_image"])


# --------------------------------------------------------------------------------------------------------------------
# Verification: every error, one at a time, names its file or key
# --------------------------------------------------------------------------------------------------------------------


def _edit_metadata(root: Path, edit) -> None:
    metadata = json.loads((root / "metadata.json").read_text())
    edit(metadata)
    (root / "metadata.json").write_text(json.dumps(metadata, indent=1))


def _save_png(path: Path, array: np.ndarray) -> None:
    PIL.Image.fromarray(array).save(path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _shadow_out_of_range(root: Path) -> None:
    (root / "shadows" / "sample_002.png").unlink()
    PIL.Image.fromarray(np.full((32, 32), 1.5, np.float32)).save(root / "shadows" / "sample_002.tiff")


BREAKAGES = {
    "missing_folder": (lambda root: shutil.rmtree(root / "masks"), "missing_folder", "masks/"),
    "missing_file": (lambda root: (root / "shadows" / "sample_003.png").unlink(), "missing_file", "shadows/sample_003"),
    "orphan_metadata": (
        lambda root: _edit_metadata(root, lambda m: m.update(ghost={"theta": 1, "phi": 2, "size": 3})),
        "orphan_metadata",
        "'ghost'",
    ),
    "missing_metadata": (
        lambda root: _edit_metadata(root, lambda m: m.pop("sample_002")),
        "missing_metadata",
        "objects/sample_002.png",
    ),
    "invalid_json": (
        lambda root: (root / "metadata.json").write_text('{\n  "sample_000": {"theta": 30,, "phi": 0}\n}'),
        "invalid_json",
        "metadata.json line 2 column",
    ),
    "missing_metadata_file": (
        lambda root: (root / "metadata.json").unlink(),
        "missing_metadata_file",
        "metadata.json",
    ),
    "missing_theta": (
        lambda root: _edit_metadata(root, lambda m: m["sample_001"].pop("theta")),
        "missing_light",
        "'sample_001': `theta` is missing",
    ),
    "non_numeric_phi": (
        lambda root: _edit_metadata(root, lambda m: m["sample_001"].update(phi="north")),
        "non_numeric_light",
        "'sample_001': `phi` must be a number, got 'north'",
    ),
    "theta_out_of_range": (
        lambda root: _edit_metadata(root, lambda m: m["sample_004"].update(theta=90)),
        "light_out_of_range",
        "'sample_004': `theta` = 90",
    ),
    "size_not_positive": (
        lambda root: _edit_metadata(root, lambda m: m["sample_005"].update(size=0)),
        "light_out_of_range",
        "'sample_005': `size` = 0",
    ),
    "truncated_image": (
        lambda root: _truncate(root / "objects" / "sample_004.png"),
        "unreadable_image",
        "objects/sample_004.png",
    ),
    "unreadable_image": (
        lambda root: (root / "masks" / "sample_005.png").write_bytes(b"definitely not a PNG"),
        "unreadable_image",
        "masks/sample_005.png",
    ),
    "size_mismatch": (
        lambda root: _save_png(root / "shadows" / "sample_006.png", np.zeros((32, 16), np.uint8)),
        "size_mismatch",
        "shadows/sample_006.png is 16x32",
    ),
    "colored_shadow": (
        lambda root: _save_png(
            root / "shadows" / "sample_001.png", np.dstack([np.full((32, 32), v, np.uint8) for v in (0, 90, 200)])
        ),
        "not_gray",
        "shadows/sample_001.png: is colored",
    ),
    "transparent_shadow": (
        lambda root: _save_png(root / "shadows" / "sample_001.png", np.zeros((32, 32, 4), np.uint8)),
        "not_gray",
        "shadows/sample_001.png: has transparency",
    ),
    "shadow_out_of_range": (_shadow_out_of_range, "out_of_range", "shadows/sample_002.tiff"),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_each_verification_error_names_its_file_or_key(custom_root, name):
    breaker, kind, expected = BREAKAGES[name]
    breaker(custom_root)
    report = verify_dataset(custom_root)
    assert not report.ok
    assert [problem.kind for problem in report.errors] == [kind], _errors(report)
    assert expected in str(report.errors[0]), _errors(report)
    assert expected in str(report)  # the printed report names it too


def test_jsonl_errors_name_the_line(tmp_path):
    root = make_custom_dataset(tmp_path / "data", n=4, size=16, metadata_format="jsonl")
    lines = (root / "metadata.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-1]  # drop the closing brace
    lines[2] = json.dumps({"theta": 30, "phi": 0, "size": 2})  # no file_name
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    report = verify_dataset(root)
    assert {p.kind for p in report.errors} == {"invalid_json", "invalid_metadata", "missing_metadata"}
    text = str(report)
    assert "metadata.jsonl line 2 column" in text and "metadata.jsonl line 3" in text and "`file_name`" in text


def test_a_layout_read_as_another_type_says_which_type_it_looks_like(custom_root, tmp_path):
    benchmark = make_benchmark_folder(tmp_path / "bench", n_per_track=1, size=16)
    for path, given, looks_like in ((custom_root, "benchmark", "custom"), (benchmark, "custom", "benchmark")):
        report = verify_dataset(path, dataset_type=given)
        assert not report.ok and report.errors[0].kind == "wrong_dataset_type", _errors(report)
        assert f"is read as `--dataset_type {given}` but looks like the {looks_like} layout" in str(report)
        assert f"pass `--dataset_type {looks_like}`" in str(report)
        assert verify_dataset(path, dataset_type=looks_like).ok  # and the hint is right


def test_missing_data_dir_and_empty_dataset(tmp_path):
    report = verify_dataset(tmp_path / "nowhere", dataset_type="custom")
    assert [p.kind for p in report.errors] == ["missing_folder"] and "does not exist" in str(report)
    for folder in ("objects", "masks", "shadows"):
        (tmp_path / "empty" / folder).mkdir(parents=True)
    (tmp_path / "empty" / "metadata.json").write_text("{}")
    report = verify_dataset(tmp_path / "empty")
    assert [p.kind for p in report.errors] == ["empty_dataset"]


def test_non_binary_mask_is_only_a_warning(custom_root):
    mask = np.asarray(PIL.Image.open(custom_root / "masks" / "sample_000.png")).copy()
    mask[mask == 255] = 180
    _save_png(custom_root / "masks" / "sample_000.png", mask)
    report = verify_dataset(custom_root)
    assert report.ok and [p.kind for p in report.warnings] == ["non_binary_mask"]
    assert "masks/sample_000.png" in str(report.warnings[0]) and "binarised at 0.5" in str(report)


def test_all_problems_are_reported_at_once(custom_root):
    for name in ("missing_file", "non_numeric_phi", "truncated_image", "size_mismatch", "orphan_metadata"):
        BREAKAGES[name][0](custom_root)
    report = verify_dataset(custom_root)
    assert len(report.errors) == 5, _errors(report)
    for name in ("missing_file", "non_numeric_phi", "truncated_image", "size_mismatch", "orphan_metadata"):
        assert BREAKAGES[name][2] in str(report)


def test_create_dataloaders_raises_with_every_problem(custom_root):
    BREAKAGES["missing_file"][0](custom_root)
    BREAKAGES["theta_out_of_range"][0](custom_root)
    with pytest.raises(DatasetVerificationError, match="shadows/sample_003") as raised:
        create_dataloaders("custom", custom_root, num_workers=0, image_size=32)
    assert "`theta` = 90" in str(raised.value)
    assert len(raised.value.report.errors) == 2


def test_quick_check_at_startup_catches_sizes_but_not_pixels(custom_root):
    BREAKAGES["size_mismatch"][0](custom_root)
    with pytest.raises(DatasetVerificationError, match="size_mismatch|shadows/sample_006.png is 16x32"):
        create_dataloaders("custom", custom_root, num_workers=0, image_size=32)


def test_broken_sample_at_load_time_raises_naming_the_file(custom_root):
    _truncate(custom_root / "objects" / "sample_004.png")
    loader, _ = create_dataloaders(
        "custom", custom_root, batch_size=8, num_workers=0, image_size=32, val_fraction=0, verify="metadata"
    )
    with pytest.raises(SampleLoadError, match="objects/sample_004.png"):
        next(iter(loader))


def test_verify_cli_exit_status(custom_root, capsys):
    assert main(["verify", str(custom_root)]) == 0
    assert "OK" in capsys.readouterr().out
    BREAKAGES["missing_file"][0](custom_root)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "dataset_loading.py"), "verify", str(custom_root)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 1, result.stderr
    assert "shadows/sample_003" in result.stdout and "Traceback" not in result.stderr


def test_verify_raise_on_error_and_kwargs(custom_root):
    assert verify_dataset(dataset_type="custom", data_dir=custom_root, dataset_name=None).ok
    BREAKAGES["missing_file"][0](custom_root)
    with pytest.raises(DatasetVerificationError, match="shadows/sample_003"):
        verify_dataset(data_dir=custom_root, raise_on_error=True)


# --------------------------------------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------------------------------------


def test_hf_dataset_saved_to_disk(tmp_path):
    path = make_hf_dataset(tmp_path / "hf", n=8, size=32)
    assert verify_dataset(dataset_type="hf", data_dir=tmp_path / "elsewhere", dataset_name=str(path)).ok
    train, val = create_dataloaders("hf", dataset_name=str(path), batch_size=3, num_workers=0, image_size=32)
    batch = next(iter(train))
    assert batch["object_image"].shape == (3, 3, 32, 32) and batch["shadow_map"].shape == (3, 1, 32, 32)
    assert batch["track"] == [None] * 3 and all(sample_id.startswith("sample_") for sample_id in batch["id"])
    train_objects = {train.dataset.dataset.records[i].object_id for i in train.dataset.indices}
    val_objects = {val.dataset.dataset.records[i].object_id for i in val.dataset.indices}
    assert not train_objects & val_objects  # the object_id column groups the split


def test_hf_and_custom_give_identical_tensors(tmp_path):
    custom = open_shadow_dataset("custom", make_custom_dataset(tmp_path / "c", n=3, size=32), image_size=32)
    hf = open_shadow_dataset("hf", dataset_name=str(make_hf_dataset(tmp_path / "h", n=3, size=32)), image_size=32)
    for index in range(3):
        a, b = custom.load_sample(index), hf.load_sample(index)
        for key in ("object_image", "mask", "shadow_map", "theta", "phi", "size"):
            assert torch.equal(a[key], b[key]), key
        assert a["id"] == b["id"]


def test_hf_column_options(tmp_path):
    renames = {"object_image": "rgb", "mask": "alpha", "shadow_map": "target", "theta": "elevation"}
    path = make_hf_dataset(tmp_path / "hf", n=4, size=16, columns=renames)
    with pytest.raises(DatasetVerificationError, match="no object column") as raised:
        create_dataloaders("hf", dataset_name=str(path), num_workers=0, image_size=16)
    message = str(raised.value)
    assert "`image_column`" in message and "`theta_column`" in message and "available columns" in message
    loader, _ = create_dataloaders(
        "hf",
        dataset_name=str(path),
        num_workers=0,
        image_size=16,
        val_fraction=0,
        image_column="rgb",
        mask_column="alpha",
        shadow_column="target",
        theta_column="elevation",
    )
    assert next(iter(loader))["object_image"].shape[1:] == (3, 16, 16)
    with pytest.raises(DatasetVerificationError, match="column 'nope'"):
        create_dataloaders("hf", dataset_name=str(path), num_workers=0, image_size=16, image_column="nope")


def test_hf_dataset_dict_splits(tmp_path):
    path = make_hf_dataset(tmp_path / "hf", n=4, size=16, splits=("train", "test"))
    loader, _ = create_dataloaders("hf", dataset_name=str(path), split="test", num_workers=0, image_size=16)
    assert len(next(iter(loader))["id"]) > 0
    report = verify_dataset(path, dataset_type="hf", split="validation")
    assert [p.kind for p in report.errors] == ["unreadable_dataset"] and "train, test" in str(report)


def test_hf_bad_rows_are_named(tmp_path):
    import datasets

    path = make_hf_dataset(tmp_path / "hf", n=3, size=16, with_object_id=False)
    dataset = datasets.load_from_disk(str(path))
    thetas = dataset["theta"][:]
    thetas[1] = 95.0
    dataset = dataset.remove_columns("theta").add_column("theta", thetas)
    broken = dataset.cast_column("mask", datasets.Image(decode=False))
    masks = [dict(value) for value in broken["mask"]]
    masks[2]["bytes"] = masks[2]["bytes"][:40]
    broken = broken.remove_columns("mask").add_column("mask", masks).cast_column("mask", datasets.Image())
    broken.save_to_disk(str(tmp_path / "broken"))
    report = verify_dataset(tmp_path / "broken", dataset_type="hf")
    assert {p.kind for p in report.errors} == {"light_out_of_range", "unreadable_image"}, _errors(report)
    text = str(report)
    assert "row 1 ('sample_001'): `theta` = 95" in text and "row 2, column 'mask'" in text


# --------------------------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------------------------


def test_benchmark_tar_is_read_whole_in_order_with_tracks(tmp_path):
    tar = make_benchmark_tar(tmp_path / "benchmark.tar", n_per_track=2, size=32)
    loader, val_loader = create_dataloaders("benchmark", data_dir=tar, batch_size=4, num_workers=0, image_size=32)
    assert val_loader is None
    first = [(sample_id, track) for batch in loader for sample_id, track in zip(batch["id"], batch["track"])]
    second = [(sample_id, track) for batch in loader for sample_id, track in zip(batch["id"], batch["track"])]
    assert first == second and [sample_id for sample_id, _ in first] == sorted(sample_id for sample_id, _ in first)
    assert len(first) == 6
    expected = {
        "softness_control": "softness",
        "direction_control_horz": "horizontal",
        "direction_control_vert": "vertical",
    }
    for sample_id, track in first:
        assert track == expected[sample_id.split("/")[0]]
    batch = next(iter(loader))
    assert batch["object_image"].shape == (4, 3, 32, 32) and batch["theta"].tolist() == [35.0, 35.0, 5.0, 10.0]
    with pytest.raises(ValueError, match="`shuffle=True`"):
        create_dataloaders("benchmark", data_dir=tar, num_workers=0, image_size=32, shuffle=True)


def test_benchmark_folder_and_compressed_tar_match_the_tar(tmp_path):
    tar = open_shadow_dataset("benchmark", make_benchmark_tar(tmp_path / "b.tar", size=16), image_size=16)
    folder = open_shadow_dataset("benchmark", make_benchmark_folder(tmp_path / "extracted", size=16), image_size=16)
    gz = open_shadow_dataset(
        "benchmark", make_benchmark_tar(tmp_path / "b.tar.gz", size=16, compression="gz"), image_size=16
    )
    assert tar.records == folder.records == gz.records
    for other in (folder, gz):
        assert torch.equal(tar.load_sample(3)["shadow_map"], other.load_sample(3)["shadow_map"])
    directory_of_tars = tmp_path / "download"
    make_benchmark_tar(directory_of_tars / "controllable-shadow-generation-benchmark.tar", size=16)
    assert open_shadow_dataset("benchmark", directory_of_tars, image_size=16).records == tar.records


def test_benchmark_track_from_metadata(tmp_path):
    files = benchmark_files(n_per_track=1, size=16, track_in_metadata=True)
    renamed = {
        name.replace("softness_control/", "a/").replace("direction_control_", "b_"): v for name, v in files.items()
    }
    dataset = open_shadow_dataset("benchmark", write_tar(tmp_path / "b.tar", renamed), image_size=16)
    assert sorted(record.track for record in dataset.records) == ["horizontal", "softness", "vertical"]


def test_training_on_the_benchmark_warns_loudly(tmp_path, caplog):
    tar = make_benchmark_tar(tmp_path / "benchmark.tar", n_per_track=1, size=16)
    with pytest.warns(UserWarning, match="TEST set"):
        create_dataloaders("benchmark", data_dir=tar, num_workers=0, image_size=16, for_training=True)
    assert "TEST set" in caplog.text


def test_benchmark_errors_name_the_key(tmp_path):
    files = benchmark_files(n_per_track=1, size=16)
    del files["softness_control/000.shadow.png"]
    files["direction_control_vert/000.metadata.json"] = b'{"theta": 5, "phi": 0 "size": 2}'
    for suffix in ("image.png", "mask.png", "shadow.png", "metadata.json"):
        files[f"misc/007.{suffix}"] = files[f"direction_control_horz/000.{suffix}"]
    report = verify_dataset(write_tar(tmp_path / "b.tar", files))
    assert {p.kind for p in report.errors} == {"missing_file", "invalid_json"}, _errors(report)
    text = str(report)
    assert "softness_control/000" in text and "softness_control/000.shadow.*" in text
    assert "b.tar:direction_control_vert/000.metadata.json line 1 column" in text
    # A sample whose track nothing tells is read (track None) with one warning for the run, never an error.
    assert [p.kind for p in report.warnings] == ["unknown_track"] and "misc/007" in report.warnings[0].message


def test_benchmark_inverted_shadows_warn_and_can_be_inverted(tmp_path):
    files = benchmark_files(n_per_track=1, size=16)
    for name in [n for n in files if n.endswith(".shadow.png")]:
        inverted = 255 - np.asarray(PIL.Image.open(io.BytesIO(files[name])))
        buffer = io.BytesIO()
        PIL.Image.fromarray(inverted).save(buffer, format="PNG")
        files[name] = buffer.getvalue()
    tar = write_tar(tmp_path / "inverted.tar", files)
    report = verify_dataset(tar)
    assert report.ok and {p.kind for p in report.warnings} == {"inverted_shadow"} and len(report.warnings) == 3
    assert "invert_shadow_maps=True" in str(report)
    original = open_shadow_dataset("benchmark", make_benchmark_tar(tmp_path / "b.tar", 1, 16), image_size=16)
    fixed = open_shadow_dataset("benchmark", tar, image_size=16, invert_shadow_maps=True)
    assert torch.allclose(fixed.load_sample(0)["shadow_map"], original.load_sample(0)["shadow_map"])


def test_truncated_tar_is_an_error(tmp_path):
    tar = make_benchmark_tar(tmp_path / "b.tar", n_per_track=1, size=16)
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 3])
    report = verify_dataset(tar)
    assert not report.ok and "b.tar" in str(report)


def test_infer_dataset_type(tmp_path, custom_root):
    assert infer_dataset_type(custom_root) == "custom"
    assert infer_dataset_type(make_benchmark_tar(tmp_path / "b.tar", 1, 16)) == "benchmark"
    assert infer_dataset_type(make_benchmark_folder(tmp_path / "bf", 1, 16)) == "benchmark"
    assert infer_dataset_type(make_hf_dataset(tmp_path / "hf", n=2, size=16)) == "hf"
    assert infer_dataset_type("someone/some-dataset") == "hf"
    assert infer_dataset_type(dataset_loading.BENCHMARK_HUB_ID) == "benchmark"


# --------------------------------------------------------------------------------------------------------------------
# Latent cache
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vae():
    return random_vae("tiny", seed=0).eval()


def _CountingVAE(vae):
    """The same VAE (same identity, so the same cache key) with a count of encoded images: a hit encodes nothing."""
    counting = copy.deepcopy(vae)
    counting.encoded_images = 0
    encode = counting.encode

    def counted_encode(images, *args, **kwargs):
        counting.encoded_images += images.shape[0]
        return encode(images, *args, **kwargs)

    counting.encode = counted_encode
    return counting


def test_cache_miss_then_hit_and_cached_batches(custom_root, tiny_vae, tmp_path):
    vae = _CountingVAE(tiny_vae)
    cached = {"cache_latents": True, "vae": vae, "latent_cache_dir": tmp_path / "cache"}
    train, val = create_dataloaders(
        "custom", custom_root, batch_size=2, num_workers=0, image_size=32, **cached, val_fraction=0.25
    )
    assert vae.encoded_images == 2 * 8  # object images and shadow maps, each once
    batch = next(iter(train))
    assert set(batch) == {
        "object_latents",
        "shadow_latents",
        "mask_latent",
        "light",
        "theta",
        "phi",
        "size",
        "id",
        "track",
    }
    assert batch["object_latents"].shape == (2, 4, 4, 4) and batch["shadow_latents"].shape == (2, 4, 4, 4)
    assert batch["mask_latent"].shape == (2, 1, 4, 4) and batch["phi"].shape == (2,)
    assert val is not None and next(iter(val))["object_latents"].shape[1:] == (4, 4, 4)

    create_dataloaders("custom", custom_root, num_workers=0, image_size=32, **cached)
    assert vae.encoded_images == 2 * 8  # hit: nothing encoded again
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    cache = build_latent_cache(dataset, tiny_vae, tmp_path / "cache")
    assert cache.hit and not list((tmp_path / "cache").rglob("*.tmp-*"))


def test_cached_latents_equal_the_image_path(custom_root, tiny_vae, tmp_path):
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    cache = build_latent_cache(dataset, tiny_vae, tmp_path / "cache", dtype=torch.float32, with_flip=True)
    cached = CachedLatentDataset(cache, dataset.records)
    for index in (0, 5):
        sample = dataset.load_sample(index)
        with torch.no_grad():
            object_latents = encode_latents(tiny_vae, sample["object_image"][None])[0]
            shadow_latents = encode_latents(tiny_vae, shadow_to_vae_input(sample["shadow_map"][None]))[0]
            flipped_object = encode_latents(tiny_vae, torch.flip(sample["object_image"][None], dims=[-1]))[0]
        plain, flipped = cached.load_sample(index), cached.load_sample(index, flip=True)
        assert torch.allclose(plain["object_latents"], object_latents, atol=1e-5)
        assert torch.allclose(plain["shadow_latents"], shadow_latents, atol=1e-5)
        # The flipped entry is the latent of the flipped image (not the flipped latent), with phi mirrored.
        assert torch.allclose(flipped["object_latents"], flipped_object, atol=1e-5)
        assert torch.equal(flipped["mask_latent"], torch.flip(plain["mask_latent"], dims=[-1]))
        assert flipped["phi"].item() == mirror_phi(plain["phi"].item())
        assert plain["theta"] == sample["theta"] and plain["id"] == sample["id"]


def test_cache_invalidation(custom_root, tiny_vae, tmp_path):
    cache_dir = tmp_path / "cache"
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    first = build_latent_cache(dataset, tiny_vae, cache_dir)
    assert not first.hit and "no" in first.reason

    other_vae = random_vae("tiny", seed=1)
    changed_vae = build_latent_cache(dataset, other_vae, cache_dir)
    assert not changed_vae.hit and "VAE" in changed_vae.reason

    changed_dtype = build_latent_cache(dataset, tiny_vae, cache_dir, dtype=torch.float32)
    assert not changed_dtype.hit and "dtype" in changed_dtype.reason

    smaller = open_shadow_dataset("custom", custom_root, image_size=16)
    changed_resolution = build_latent_cache(smaller, tiny_vae, cache_dir)
    assert not changed_resolution.hit and "resolution" in changed_resolution.reason

    shadow = np.asarray(PIL.Image.open(custom_root / "shadows" / "sample_001.png")).copy()
    _save_png(custom_root / "shadows" / "sample_001.png", 255 - shadow)
    os.utime(custom_root / "shadows" / "sample_001.png", ns=(1, 1))
    edited = open_shadow_dataset("custom", custom_root, image_size=32)
    changed_data = build_latent_cache(edited, tiny_vae, cache_dir)
    assert not changed_data.hit and "dataset" in changed_data.reason

    assert build_latent_cache(edited, tiny_vae, cache_dir).hit
    assert build_latent_cache(dataset, other_vae, cache_dir).hit is False  # the dataset changed under it too


def test_cache_holds_the_mask_in_the_unets_channels(custom_root, tiny_vae, tmp_path):
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    area = build_latent_cache(dataset, tiny_vae, tmp_path / "cache", dtype=torch.float32, with_flip=True)
    assert "mask_channels" not in area.manifest["key"]  # the area-averaged mask's key is what it always was
    detailed = build_latent_cache(
        dataset, tiny_vae, tmp_path / "cache", dtype=torch.float32, with_flip=True, mask_channels=16
    )
    assert not detailed.hit and "mask channels" in detailed.reason and detailed.folder != area.folder
    plain_area, plain, flipped = (
        CachedLatentDataset(cache, dataset.records).load_sample(3, flip=flip)
        for cache, flip in ((area, False), (detailed, False), (detailed, True))
    )
    mask = dataset.load_sample(3)["mask"][None]
    assert plain["mask_latent"].shape == (16, 4, 4)
    torch.testing.assert_close(plain["mask_latent"], mask_to_latent(mask, (4, 4), 16)[0])
    torch.testing.assert_close(flipped["mask_latent"], mask_to_latent(mask.flip(-1), (4, 4), 16)[0])
    torch.testing.assert_close(plain["mask_latent"].mean(0, keepdim=True), plain_area["mask_latent"])
    torch.testing.assert_close(plain["object_latents"], plain_area["object_latents"])
    assert build_latent_cache(dataset, tiny_vae, tmp_path / "cache", dtype=torch.float32, with_flip=True).hit
    train, _ = create_dataloaders(
        dataset,
        batch_size=2,
        num_workers=0,
        val_fraction=0,
        **{"cache_latents": True, "vae": tiny_vae},
        latent_cache_dir=tmp_path / "cache",
        mask_channels=64,
    )
    assert next(iter(train))["mask_latent"].shape == (2, 64, 4, 4)
    with pytest.raises(ValueError, match="square number of channels.*got 3"):
        build_latent_cache(dataset, tiny_vae, tmp_path / "cache", mask_channels=3)


def test_flip_needs_a_flip_cache(custom_root, tiny_vae, tmp_path):
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    cache = build_latent_cache(dataset, tiny_vae, tmp_path / "cache")
    with pytest.raises(ValueError, match="with_flip=True"):
        CachedLatentDataset(cache, dataset.records, random_flip=True)
    loader, _ = create_dataloaders(
        "custom",
        custom_root,
        num_workers=0,
        image_size=32,
        random_flip=True,
        val_fraction=0,
        cache_latents=True,
        vae=tiny_vae,
        latent_cache_dir=tmp_path / "cache",
    )
    assert loader.dataset.dataset.cache.with_flip


def test_interrupted_build_resumes(custom_root, tiny_vae, tmp_path):
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    cache = build_latent_cache(dataset, tiny_vae, tmp_path / "cache", shard_size=3)
    assert len(cache.manifest["shards"]) == 3
    (cache.folder / "manifest.json").unlink()
    (cache.folder / "shard-00001.safetensors").unlink()
    vae = _CountingVAE(tiny_vae)
    rebuilt = build_latent_cache(dataset, vae, tmp_path / "cache", shard_size=3)
    assert not rebuilt.hit and vae.encoded_images == 2 * 3  # only the missing shard


def test_a_truncated_or_overwritten_shard_is_encoded_again_not_a_mid_run_failure(
    custom_root, tiny_vae, tmp_path, caplog
):
    """A finished cache (manifest in place) with a damaged shard would fail, or with --skip_bad_samples drop, every
    sample of that shard mid-run: it is a miss instead, and only the damaged shard is encoded again."""
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    cache = build_latent_cache(dataset, tiny_vae, tmp_path / "cache", shard_size=3)
    shard = cache.folder / "shard-00001.safetensors"
    for damage in (shard.read_bytes()[: shard.stat().st_size // 2], b"not a safetensors file"):
        shard.write_bytes(damage)
        vae = _CountingVAE(tiny_vae)
        with caplog.at_level("WARNING", logger="dataset_loading"):
            rebuilt = build_latent_cache(dataset, vae, tmp_path / "cache", shard_size=3)
        assert not rebuilt.hit and vae.encoded_images == 2 * 3  # only the damaged shard
        assert "shard-00001.safetensors truncated or unreadable" in caplog.text
        assert rebuilt.read(3)["object_latents"].shape == cache.read(3)["object_latents"].shape
        caplog.clear()


class _FakeAccelerator:
    def __init__(self, is_main: bool):
        self.num_processes = 2
        self.is_local_main_process = is_main
        self.entered = 0

    @contextlib.contextmanager
    def local_main_process_first(self):
        self.entered += 1
        yield


def test_only_the_main_process_writes(custom_root, tiny_vae, tmp_path):
    dataset = open_shadow_dataset("custom", custom_root, image_size=32)
    worker = _FakeAccelerator(is_main=False)
    with pytest.raises(RuntimeError, match="main process did not leave a latent cache"):
        build_latent_cache(dataset, tiny_vae, tmp_path / "cache", accelerator=worker)
    assert not (tmp_path / "cache").exists()  # the non-main process wrote nothing

    main_process = _FakeAccelerator(is_main=True)
    built = build_latent_cache(dataset, tiny_vae, tmp_path / "cache", accelerator=main_process)
    assert not built.hit and main_process.entered == 1
    vae = _CountingVAE(tiny_vae)
    read = build_latent_cache(dataset, vae, tmp_path / "cache", accelerator=worker)
    assert read.hit and vae.encoded_images == 0


def test_cached_loader_with_workers(custom_root, tiny_vae, tmp_path):
    loader, _ = create_dataloaders(
        "custom", custom_root, batch_size=4, num_workers=2, image_size=32, val_fraction=0, cache_latents=True,
        vae=tiny_vae, latent_cache_dir=tmp_path / "cache",
    )  # fmt: skip
    ids = sorted(sample_id for batch in loader for sample_id in batch["id"])
    assert ids == [f"sample_{i:03d}" for i in range(8)]


def test_benchmark_tar_is_cacheable(tmp_path, tiny_vae):
    tar = make_benchmark_tar(tmp_path / "b.tar", n_per_track=1, size=16)
    loader, _ = create_dataloaders(
        "benchmark", data_dir=tar, num_workers=0, image_size=16, cache_latents=True, vae=tiny_vae,
        latent_cache_dir=tmp_path / "cache",
    )  # fmt: skip
    batch = next(iter(loader))
    assert batch["track"] == ["horizontal", "vertical", "softness"] and batch["object_latents"].shape == (3, 4, 2, 2)


def test_tar_module_reads_members_by_offset(tmp_path):
    # Guards the zero-copy read: the bytes at member.offset_data are the member's content.
    tar = make_benchmark_tar(tmp_path / "b.tar", n_per_track=1, size=16)
    with tarfile.open(tar) as archive:
        member = archive.getmember("softness_control/000.mask.png")
        expected = archive.extractfile(member).read()
    with open(tar, "rb") as handle:
        handle.seek(member.offset_data)
        assert handle.read(member.size) == expected


# --------------------------------------------------------------------------------------------------------------------
# Pixel values, modes, sizes and files that no check may let through (issue #18)
# --------------------------------------------------------------------------------------------------------------------


def _replace(root: Path, folder: str, stem: str, image: PIL.Image.Image, suffix: str = ".tif") -> Path:
    (root / folder / f"{stem}.png").unlink()
    path = root / folder / f"{stem}{suffix}"
    image.save(path)
    return path


def test_non_finite_and_out_of_range_float_maps_are_refused_by_verify_and_the_loader(tmp_path):
    root = make_custom_dataset(tmp_path / "data", n=3, size=32)
    shadow = np.zeros((32, 32), np.float32)
    shadow[3, 4] = np.nan
    _replace(root, "shadows", "sample_000", PIL.Image.fromarray(shadow))  # float TIFF, mode F
    mask = np.asarray(PIL.Image.open(root / "masks" / "sample_001.png"), np.float32) / 255 * 1.5
    _replace(root, "masks", "sample_001", PIL.Image.fromarray(mask))
    errors = _errors(verify_dataset(root))
    assert any("out_of_range | shadows/sample_000.tif" in e and "non-finite" in e for e in errors), errors
    assert any("out_of_range | masks/sample_001.tif" in e and "[0, 1.5]" in e for e in errors), errors
    dataset = open_shadow_dataset("custom", root, image_size=32, verify="metadata")
    with pytest.raises(SampleLoadError, match=r"sample_000.*`shadow_map` has 1 non-finite values"):
        dataset[0]
    with pytest.raises(SampleLoadError, match=r"sample_001.*`mask` values must lie in \[0, 1\]"):
        dataset[1]


def test_tiny_images_are_refused(tmp_path):
    root = make_custom_dataset(tmp_path / "data", n=2, size=32)
    for folder in ("objects", "masks", "shadows"):
        mode = "RGB" if folder == "objects" else "L"
        PIL.Image.new(mode, (1, 1), 255 if folder == "masks" else 0).save(root / folder / "sample_001.png")
    for level in ("quick", "full"):
        errors = _errors(verify_dataset(root, level=level))
        assert any("too_small | objects/sample_001.png" in e and "is 1x1" in e for e in errors), (level, errors)
    dataset = open_shadow_dataset("custom", root, image_size=32, verify="metadata")
    with pytest.raises(SampleLoadError, match="at least 8 pixels"):
        dataset[1]


def test_start_up_check_catches_coloured_masks_and_transparent_shadow_maps(tmp_path):
    """Training's start-up check (`quick`) decodes the maps whose mode can hide colour or alpha, with verify's rule."""
    root = make_custom_dataset(tmp_path / "data", n=3, size=32)
    mask = PIL.Image.open(root / "masks" / "sample_000.png").convert("RGB")
    red = np.asarray(mask).copy()
    red[..., 1:] = 0
    PIL.Image.fromarray(red).save(root / "masks" / "sample_000.png")
    shadow = PIL.Image.open(root / "shadows" / "sample_001.png").convert("LA")
    shadow.putalpha(128)
    shadow.save(root / "shadows" / "sample_001.png")
    PIL.Image.open(root / "masks" / "sample_002.png").convert("RGB").save(root / "masks" / "sample_002.png")  # gray RGB
    with pytest.raises(DatasetVerificationError) as raised:
        open_shadow_dataset("custom", root, image_size=32, verify="quick")
    text = str(raised.value)
    assert "masks/sample_000.png" in text and "is colored" in text
    assert "shadows/sample_001.png" in text and "has transparency" in text
    assert "sample_002" not in text  # an RGB file with equal channels is a gray map


def test_non_regular_files_are_refused_before_opening(tmp_path):
    """A FIFO named like an image would block any read forever: listed as an error, and refused by the loader even when
    it replaces a file after the scan."""
    root = make_custom_dataset(tmp_path / "data", n=3, size=32)
    (root / "shadows" / "sample_000.png").unlink()
    os.mkfifo(root / "shadows" / "sample_000.png")
    errors = _errors(verify_dataset(root, level="quick"))
    assert any("not_a_file | shadows/sample_000.png" in e for e in errors), errors
    fine = make_custom_dataset(tmp_path / "fine", n=2, size=32)
    dataset = open_shadow_dataset("custom", fine, image_size=32, verify="quick")
    (fine / "masks" / "sample_001.png").unlink()
    os.mkfifo(fine / "masks" / "sample_001.png")
    with pytest.raises(SampleLoadError, match=r"masks/sample_001.png is not a regular file"):
        dataset[1]
    (root / "metadata.json").rename(root / "metadata.real")
    os.mkfifo(root / "metadata.json")
    assert any("metadata.json" in e and "not a regular file" in e for e in _errors(verify_dataset(root)))


def test_skip_bad_samples_leaves_the_sample_out_and_lists_it(tmp_path):
    root = make_custom_dataset(tmp_path / "data", n=4, size=32)
    data = (root / "objects" / "sample_002.png").read_bytes()
    (root / "objects" / "sample_002.png").write_bytes(data[: len(data) // 2])  # truncated: only decoding shows it
    kwargs = {"batch_size": 4, "num_workers": 0, "image_size": 32, "val_fraction": 0.0, "shuffle": False}
    loader, _ = create_dataloaders("custom", root, **kwargs)
    with pytest.raises(SampleLoadError, match="objects/sample_002.png"):
        next(iter(loader))
    loader, _ = create_dataloaders("custom", root, skip_bad_samples=True, **kwargs)
    batch = next(iter(loader))
    assert batch["id"] == ["sample_000", "sample_001", "sample_003"] and batch["object_image"].shape[0] == 3
    assert len(batch["skipped"]) == 1 and "objects/sample_002.png" in batch["skipped"][0]


def test_cache_command_names_a_bad_device_folder_or_vae(custom_root, tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("")
    base = ["cache", "--data_dir", str(custom_root), "--resolution", "64", "--num_workers", "0"]
    for extra, message in (
        (["--pretrained_model_name_or_path", "x", "--latent_cache_dir", str(tmp_path / "c"), "--device", "banana"],
         "`--device` 'banana' is not a device"),
        (["--pretrained_model_name_or_path", "x", "--latent_cache_dir", str(a_file)], "exists and is not a folder"),
        (["--pretrained_model_name_or_path", "x", "--latent_cache_dir", str(tmp_path / "c"), "--mask_channels", "8"],
         "`--mask_channels`: A shadow UNet's mask must have a square number of channels"),
        (["--pretrained_model_name_or_path", "x", "--latent_cache_dir", str(a_file / "c")],
         f"--latent_cache_dir {a_file / 'c'} cannot be created: [Errno 20] Not a directory"),  # was mkdir's traceback
        (["--pretrained_model_name_or_path", str(tmp_path / "no-vae"), "--latent_cache_dir", str(tmp_path / "c")],
         f"--pretrained_model_name_or_path {tmp_path / 'no-vae'} is not a folder"),
        (["--pretrained_model_name_or_path", str(tmp_path), "--latent_cache_dir", str(tmp_path / "c")],
         f"Cannot load --pretrained_model_name_or_path {tmp_path} as a model folder with an AutoencoderKL in vae/"),
        (["--pretrained_model_name_or_path", "nobody/no-such-model", "--latent_cache_dir", str(tmp_path / "c")],
         "Cannot load --pretrained_model_name_or_path nobody/no-such-model as a model folder with an AutoencoderKL "
         "in vae/ (--vae_subfolder) (a Hub id: offline, or not found?)"),
    ):  # fmt: skip
        assert dataset_loading.main([*base, *extra]) == 1
        assert message in capsys.readouterr().err


def test_merge_joins_custom_folders_keeping_their_objects_apart(tmp_path, capsys):
    first = make_custom_dataset(tmp_path / "first", n=6, size=32, seed=1)
    second = make_custom_dataset(tmp_path / "second", n=4, size=32, seed=2, metadata_format="jsonl")
    merged = tmp_path / "merged"
    assert main(["merge", str(merged), str(first), str(second)]) == 0
    assert "Merged 10 samples of 2 folders" in capsys.readouterr().out
    assert verify_dataset(merged).ok
    metadata = json.loads((merged / "metadata.json").read_text())
    assert sorted(metadata) == [f"0-sample_{i:03d}" for i in range(6)] + [f"1-sample_{i:03d}" for i in range(4)]
    # both sources call their first object object_000; merged, they are two objects
    assert metadata["0-sample_000"]["object_id"] != metadata["1-sample_000"]["object_id"]
    assert len({entry["object_id"] for entry in metadata.values()}) == 3 + 2
    source_entry = json.loads((second / "metadata.jsonl").read_text().splitlines()[3])
    assert {k: v for k, v in source_entry.items() if k not in ("file_name", "object_id")} == {
        k: v for k, v in metadata["1-sample_003"].items() if k != "object_id"
    }
    for folder in ("objects", "masks", "shadows"):
        assert (merged / folder / "1-sample_003.png").read_bytes() == (second / folder / "sample_003.png").read_bytes()


def test_merge_refuses_a_broken_source_or_a_used_output_before_writing(tmp_path, capsys):
    first = make_custom_dataset(tmp_path / "first", n=4, size=32)
    second = make_custom_dataset(tmp_path / "second", n=4, size=32)
    (second / "shadows" / "sample_002.png").unlink()
    out = tmp_path / "merged"
    assert main(["merge", str(out), str(first), str(second)]) == 1
    assert "shadows/sample_002" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["merge", str(out), str(first), str(first)]) == 1
    assert "not empty" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["merge", str(tmp_path / "one"), str(first)]) == 1
    assert "at least two source folders" in capsys.readouterr().err
