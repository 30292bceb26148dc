"""demo.py's arguments: a mistake is refused at once, not by the rendering or the training minutes later."""

from __future__ import annotations

import pytest

import demo


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num_samples", "0"], "--num_samples must be >= 4 (a quarter of the objects is held out"),
        (["--max_train_steps", "0"], "--max_train_steps must be >= 1, got 0"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number > 0, got nan"),
        (["--learning_rate=-1e-4"], "--learning_rate must be a finite number > 0"),
        (["--resolution", "60"], "--resolution must be a positive multiple of 8 and >= 32"),
        (["--seed", "-1"], "--seed must be an integer in [0, 2**32 - 2027]"),
        (["--output_dir", "A_FILE"], "exists and is not a folder"),
    ],
)
def test_mistakes_are_refused_before_anything_renders(tmp_path, capsys, argv, message):
    (tmp_path / "a_file").write_text("")
    argv = [str(tmp_path / "a_file") if value == "A_FILE" else value for value in argv]
    with pytest.raises(SystemExit) as exit_info:
        demo.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_defaults_parse():
    args = demo.parse_args([])
    assert (args.num_samples, args.max_train_steps, args.resolution) == (64, 100, None)
