"""random_sdxl.py's command line: a bad --output_dir or --vae is one line naming it, and leaves no half-written model
folder behind."""

from __future__ import annotations

import re

import pytest

import random_sdxl


def test_a_bad_output_dir_or_vae_is_named_and_writes_nothing(tmp_path, tiny_sdxl_dir, capsys):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "empty").mkdir()
    cases = [
        (["--output_dir", str(tmp_path / "a_file")], "--output_dir .*a_file exists and is not a folder"),
        (["--output_dir", str(tmp_path / "a_file" / "model")], "--output_dir .*model cannot be created"),
        (["--output_dir", str(tmp_path / "m1"), "--vae", str(tmp_path / "nowhere")], "--vae .*nowhere is not a folder"),
        (
            ["--output_dir", str(tmp_path / "m2"), "--vae", str(tmp_path / "empty")],
            "Cannot load --vae .*empty as a VAE .*no file named config.json",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            random_sdxl.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err
        assert re.search(f"random_sdxl.py: error: {message}", err), err
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()  # the VAE is checked before any write
    # a pipeline folder is taken for its vae/
    path = random_sdxl.main(["--output_dir", str(tmp_path / "ok"), "--vae", str(tiny_sdxl_dir)])
    assert (path / "vae" / "config.json").is_file() and (path / "unet" / "config.json").is_file()
