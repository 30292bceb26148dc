"""The generate_shadows.py command on the tiny model."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
from test_pipeline_shadow import _rgba_object

import generate_shadows


def _inputs(tmp_path):
    folder = tmp_path / "cutouts"
    folder.mkdir()
    _rgba_object(48, 64).save(folder / "vase.png")
    _rgba_object(40, 40, box=(5, 35, 15, 25)).save(folder / "pole.png")
    return folder


def test_sweep_writes_maps_layers_composites_and_contact_sheet(tiny_shadow_dir, tmp_path):
    output = tmp_path / "out"
    code = generate_shadows.main(
        ["--model", str(tiny_shadow_dir), "--input", str(_inputs(tmp_path)), "--phi", "0", "180",
         "--theta", "30", "--size", "2", "--intensity", "0.7", "--pad", "0.25", "--output_dir", str(output)]
    )  # fmt: skip
    assert code == 0
    for stem in ("vase", "pole"):
        for phi in ("0", "180"):
            shadow = PIL.Image.open(output / f"{stem}_t30_p{phi}_s2_shadow.png")
            layer = PIL.Image.open(output / f"{stem}_t30_p{phi}_s2_layer.png")
            composite = PIL.Image.open(output / f"{stem}_t30_p{phi}_s2_composite.png")
            assert shadow.mode == "L" and layer.mode == "RGBA" and composite.mode == "RGB"
            assert shadow.size == layer.size == composite.size
    # --pad 0.25 enlarges each side by a quarter on both ends: 64x48 -> 96x72.
    assert PIL.Image.open(output / "vase_t30_p0_s2_shadow.png").size == (96, 72)
    # The layer's alpha is intensity x shadow, black elsewhere.
    shadow = np.asarray(PIL.Image.open(output / "vase_t30_p0_s2_shadow.png"), dtype=np.float32) / 255
    layer = np.asarray(PIL.Image.open(output / "vase_t30_p0_s2_layer.png"))
    assert np.all(layer[..., :3] == 0)
    assert np.abs(layer[..., 3] / 255 - 0.7 * shadow).max() < 2 / 255
    sheet = PIL.Image.open(output / "contact_sheet.png")
    assert sheet.width > sheet.height  # 2 columns of lights beside the labels, 2 rows of inputs


def test_rgb_with_mask_folder_and_bad_inputs(tiny_shadow_dir, tmp_path, caplog):
    images, masks = tmp_path / "rgb", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rgba = _rgba_object()
    rgba.convert("RGB").save(images / "box.png")
    rgba.getchannel("A").save(masks / "box.png")
    (images / "broken.png").write_bytes(b"not a png")
    output = tmp_path / "out"
    args = ["--model", str(tiny_shadow_dir), "--input", str(images), "--mask", str(masks), "--output_dir", str(output)]
    code = generate_shadows.main(args)
    assert code == 1  # one input failed ...
    assert (output / "box_t30_p0_s2_composite.png").is_file()  # ... and the good one was still written
    rgba.convert("L").save(images / "gray.png")  # no alpha and no mask: named, with what the image is
    with caplog.at_level(logging.ERROR, logger="generate_shadows"):
        assert generate_shadows.main(["--model", str(tiny_shadow_dir), "--input", str(images / "gray.png"),
                                      "--output_dir", str(output)]) == 1  # fmt: skip
    assert "gray.png has no alpha channel (PIL mode L): give an RGBA cut-out, or a --mask" in caplog.text


def test_cli_errors_name_the_problem(tiny_shadow_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, generate_shadows.__file__, "--model", str(tiny_shadow_dir), "--input",
         str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "--input" in result.stderr and "does not exist" in result.stderr
    rgb_only = tmp_path / "rgb.png"
    PIL.Image.new("RGB", (16, 16)).save(rgb_only)
    output = tmp_path / "o"
    assert (
        generate_shadows.main(["--model", str(tiny_shadow_dir), "--input", str(rgb_only), "--output_dir", str(output)])
        == 1
    )


def test_bad_arguments_are_refused_with_the_flag_named(tiny_shadow_dir, tmp_path, capsys):
    cutouts = _inputs(tmp_path)
    base = ["--input", str(cutouts), "--output_dir", str(tmp_path / "out")]
    for resolution in ("0", "60", "16"):
        with pytest.raises(SystemExit):
            generate_shadows.parse_args(["--model", str(tiny_shadow_dir), *base, "--resolution", resolution])
        assert "--resolution` must be a positive multiple of 8 and >= 32" in capsys.readouterr().err
    for flag, value, message in (("--theta", "nan", "--theta must be a finite"), ("--size", "0", "--size (area")):
        with pytest.raises(SystemExit):
            generate_shadows.parse_args(["--model", str(tiny_shadow_dir), *base, flag, value])
        assert message in capsys.readouterr().err


def test_setup_errors_name_the_file_and_write_nothing(tiny_shadow_dir, tmp_path, caplog):
    cutouts = _inputs(tmp_path)
    missing_model = ["--model", str(tmp_path / "no-such-model"), "--input", str(cutouts)]
    with caplog.at_level(logging.ERROR, logger="generate_shadows"):
        assert generate_shadows.main([*missing_model, "--output_dir", str(tmp_path / "o1")]) == 2
        assert "no-such-model is not a folder" in caplog.text
        corrupt = tmp_path / "beach.jpg"
        corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
        run = ["--model", str(tiny_shadow_dir), "--input", str(cutouts), "--background", str(corrupt)]
        assert generate_shadows.main([*run, "--output_dir", str(tmp_path / "o2")]) == 2
        assert f"--background {corrupt} is not a readable image" in caplog.text
        a_file = tmp_path / "taken"
        a_file.write_text("")
        assert generate_shadows.main([*run[:4], "--output_dir", str(a_file)]) == 2
        assert f"--output_dir {a_file} exists and is not a folder" in caplog.text


def test_decompression_bomb_and_fifo_are_reported_per_file(tiny_shadow_dir, tmp_path, monkeypatch, caplog):
    cutouts = _inputs(tmp_path)  # 64x48 and 40x40
    _rgba_object(100, 100, box=(10, 90, 10, 90)).save(cutouts / "bomb.png")
    fifo = cutouts / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would block forever: it is refused before opening
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 2000)  # 100x100 > 2 x the limit: PIL refuses it as a bomb
    output = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="generate_shadows"):
        code = generate_shadows.main(
            ["--model", str(tiny_shadow_dir), "--input", str(cutouts), "--output_dir", str(output)]
        )
    assert code == 1
    assert "bomb.png is not a readable image (DecompressionBombError" in caplog.text
    assert "pipe.png is not a regular file" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="generate_shadows"):
        assert generate_shadows.main(["--model", str(tiny_shadow_dir), "--input", str(fifo), "--output_dir",
                                      str(output)]) == 2  # fmt: skip
    assert "pipe.png is not a regular file or a folder" in caplog.text
    assert (output / "vase_t30_p0_s2_shadow.png").is_file() and (output / "pole_t30_p0_s2_shadow.png").is_file()


def test_light_flags_are_checked_before_the_model_loads(tiny_shadow_dir, tmp_path, capsys):
    base = ["--model", str(tiny_shadow_dir), "--input", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        generate_shadows.parse_args([*base, "--light", "30,0,2", "--light", "95,0,2"])
    assert "`--light[1].theta` must lie in [0, 90)" in capsys.readouterr().err
    assert generate_shadows.parse_args(base).theta is None  # no flag: the default light, no sweep


def test_non_finite_and_out_of_range_flags_are_refused_before_the_model_loads(tmp_path, capsys):
    base = ["--model", str(tmp_path / "never-loaded"), "--input", str(tmp_path), "--output_dir", str(tmp_path / "o")]
    cases = [
        (["--intensity", "nan"], "--intensity must be a finite number, got nan"),
        (["--pad", "inf"], "--pad must be a finite number, got inf"),
        (["--pad", "1000"], "--pad must lie in [0, 4]"),
        (["--light", "30,0,2,nan"], "`--light[0].power` must be finite"),
        (["--light", "30,0,2", "--light", "20,90,4,-1"], "`--light[1].power` (relative total power) must be >= 0"),
        (["--light", "30,0,2,0"], "The lights all have power 0"),
        (["--device", "banana"], "--device 'banana' is not a device"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit):
            generate_shadows.parse_args([*base, *extra])
        assert message in capsys.readouterr().err, extra


def test_unreadable_environment_is_an_error_not_a_traceback(tiny_shadow_dir, tmp_path, caplog):
    sky = tmp_path / "sky.png"
    sky.write_text("not an image")
    run = ["--model", str(tiny_shadow_dir), "--input", str(_inputs(tmp_path)), "--output_dir", str(tmp_path / "o")]
    with caplog.at_level(logging.ERROR, logger="generate_shadows"):
        assert generate_shadows.main([*run, "--environment", str(sky)]) == 2
    assert f"Environment map {sky} is not a readable image" in caplog.text
