"""The generate_shadows.py command on the tiny model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import PIL.Image
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


def test_rgb_with_mask_folder_and_bad_inputs(tiny_shadow_dir, tmp_path):
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
