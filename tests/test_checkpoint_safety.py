"""Checkpoints under faults and from strangers (issue #18): each corruption named before anything loads, `latest`
falling back to the newest intact checkpoint, a full disk costing nothing but the partial save, killed runs cleaned up,
and no pickle in a checkpoint able to run code on resume. Real tiny training runs, no mocks of the code under test."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from data_factory import make_custom_dataset
from training_fixtures import fresh_accelerate_state, make_checkpoints, reset_accelerate, tiny_run_argv  # noqa: F401

import train_shadow_sdxl as train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_custom_dataset(tmp_path_factory.mktemp("data"), n=4, size=32)


@pytest.fixture(scope="module")
def trained(tiny_sdxl_dir, data_dir, tmp_path_factory) -> Path:
    """checkpoint-1, -2, -3 of one tiny run (`latest` -> checkpoint-3); tests corrupt copies of it."""
    return make_checkpoints(tiny_sdxl_dir, data_dir, tmp_path_factory.mktemp("run") / "out", 3)


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


def _args(tiny_sdxl_dir, data_dir, output_dir, resume="latest", *extra):
    return train.parse_args(
        tiny_run_argv(tiny_sdxl_dir, data_dir, output_dir, "--max_train_steps", 4, "--val_fraction", 0,
                      "--resume_from_checkpoint", resume, *extra)
    )  # fmt: skip


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


class _Payload:
    """A pickle that writes a marker file when unpickled without weights_only: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


CORRUPTIONS = {
    "truncated unet": (
        lambda c: _truncate(c / "unet" / "diffusion_pytorch_model.safetensors"),
        r"unet/diffusion_pytorch_model.safetensors is (truncated|empty or truncated)",
    ),
    "empty unet": (
        lambda c: (c / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b""),
        r"unet/diffusion_pytorch_model.safetensors is empty or truncated \(0 bytes\)",
    ),
    "truncated optimizer": (lambda c: _truncate(c / "optimizer.bin"), r"optimizer.bin is empty or truncated"),
    "missing training state": (
        lambda c: (c / train.TRAINING_STATE_FILE).unlink(),
        r"training_state.json is missing",
    ),
    "invalid training state": (
        lambda c: (c / train.TRAINING_STATE_FILE).write_text('{"global_step": 3,'),
        r"training_state.json is not valid JSON",
    ),
    "training state without a step": (
        lambda c: (c / train.TRAINING_STATE_FILE).write_text('{"seed": 0}'),
        r"training_state.json has no integer `global_step` >= 0",
    ),
    "removed unet": (lambda c: shutil.rmtree(c / "unet"), r"unet/ \(the model weights\) is missing"),
    "pickle payload in the RNG state": (
        lambda c: torch.save(_Payload(c.parent / "MARKER"), c / "random_states_0.pkl"),
        r"random_states_0.pkl holds more than plain tensors and numbers, so it is not loaded",
    ),
    "pickle payload in the optimizer state": (
        lambda c: torch.save({"state": {}, "param_groups": [_Payload(c.parent / "MARKER")]}, c / "optimizer.bin"),
        r"optimizer.bin holds more than plain tensors and numbers",
    ),
    "missing lr schedule": (lambda c: (c / train.SCHEDULER_STATE_FILE).unlink(), r"lr_scheduler.pt is missing"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_each_corruption_is_named_and_latest_falls_back(tiny_sdxl_dir, data_dir, run_dir, corruption, caplog):
    corrupt, message = CORRUPTIONS[corruption]
    corrupt(run_dir / "checkpoint-3")
    explicit = _args(tiny_sdxl_dir, data_dir, run_dir, str(run_dir / "checkpoint-3"))
    with pytest.raises(
        train.ConfigurationError, match=r"`--resume_from_checkpoint` .*checkpoint-3.* cannot be resumed"
    ):
        train.validate_args(explicit)
    with pytest.raises(train.ConfigurationError, match=message):
        train.validate_args(explicit)
    with caplog.at_level(logging.WARNING):
        chosen = train.check_run(_args(tiny_sdxl_dir, data_dir, run_dir))[1]  # `latest`: checkpoint-3 is broken
    assert chosen == (run_dir / "checkpoint-2").resolve()
    assert "checkpoint-3 is broken" in caplog.text and "resuming from checkpoint-2 instead" in caplog.text
    assert not (run_dir / "MARKER").exists()  # checking never unpickles code either


def test_removed_unet_is_not_mistaken_for_a_lora_checkpoint(tiny_sdxl_dir, data_dir, run_dir):
    shutil.rmtree(run_dir / "checkpoint-3" / "unet")
    problems = train.checkpoint_problems(run_dir / "checkpoint-3", _args(tiny_sdxl_dir, data_dir, run_dir))
    assert problems == ["unet/ (the model weights) is missing"]
    lora_args = _args(tiny_sdxl_dir, data_dir, run_dir, "latest", "--use_lora")
    assert "it holds unet/, not unet_lora/: it was saved without --use_lora" in " ".join(
        train.checkpoint_problems(run_dir / "checkpoint-2", lora_args)
    )


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(tiny_sdxl_dir, data_dir, run_dir):
    for step in (1, 2, 3):
        (run_dir / f"checkpoint-{step}" / "optimizer.bin").write_bytes(b"")
    with pytest.raises(train.ConfigurationError, match=r"(?s)no intact checkpoint in .*checkpoint-3: optimizer.bin is"):
        train.validate_args(_args(tiny_sdxl_dir, data_dir, run_dir))


def test_resume_falls_back_and_runs_no_pickled_code(tiny_sdxl_dir, data_dir, run_dir, caplog):
    """The real resume: checkpoint-3 is truncated, so `latest` resumes from checkpoint-2, whose accelerate-style
    custom_checkpoint_0.pkl (the slot accelerate itself unpickles with weights_only=False) carries a payload. The
    payload never runs, the run ends at step 4, and the leftovers of a killed run are cleaned up."""
    _truncate(run_dir / "checkpoint-3" / "optimizer.bin")
    marker = run_dir / "MARKER"
    torch.save(_Payload(marker), run_dir / "checkpoint-2" / "custom_checkpoint_0.pkl")
    (run_dir / ".checkpoint-4.tmp").mkdir()  # a killed save
    (run_dir / ".checkpoint-1.deleting").mkdir()  # a killed rotation
    os.symlink("checkpoint-3", run_dir / ".latest.tmp-99999")  # a killed link update
    with caplog.at_level(logging.INFO):
        state = train.main(tiny_run_argv(tiny_sdxl_dir, data_dir, run_dir, "--max_train_steps", 4,
                                         "--val_fraction", 0, "--resume_from_checkpoint", "latest"))  # fmt: skip
    assert state.global_step == 4 and not marker.exists()
    assert "Resuming from" in caplog.text and "checkpoint-2" in caplog.text
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith((".checkpoint-", ".latest.tmp"))]
    assert "removed .checkpoint-4.tmp" in caplog.text


def test_legacy_checkpoint_lr_schedule_is_read_safely(tiny_sdxl_dir, data_dir, run_dir):
    """A checkpoint from before lr_scheduler.pt keeps the schedule in custom_checkpoint_0.pkl: read with
    weights_only=True, it resumes; a payload there is refused, naming the file."""
    checkpoint = run_dir / "checkpoint-3"
    schedule = torch.load(checkpoint / train.SCHEDULER_STATE_FILE, weights_only=True)
    (checkpoint / train.SCHEDULER_STATE_FILE).rename(checkpoint / train.LEGACY_SCHEDULER_STATE_FILE)
    assert train.checkpoint_problems(checkpoint, _args(tiny_sdxl_dir, data_dir, run_dir)) == []
    torch.save({**schedule, "lr_lambdas": [_Payload(run_dir / "MARKER")]}, checkpoint / "custom_checkpoint_0.pkl")
    assert train.checkpoint_problems(checkpoint, _args(tiny_sdxl_dir, data_dir, run_dir)) == [
        "custom_checkpoint_0.pkl holds more than plain tensors and numbers, so it is not loaded (UnpicklingError)"
    ]
    assert not (run_dir / "MARKER").exists()


def test_deepspeed_checkpoint_needs_the_explicit_opt_in(tiny_sdxl_dir, data_dir, run_dir):
    (run_dir / "checkpoint-3" / train.DEEPSPEED_STATE_DIR).mkdir()
    args = _args(tiny_sdxl_dir, data_dir, run_dir, str(run_dir / "checkpoint-3"))
    assert "which DeepSpeed loads with pickle" in " ".join(train.checkpoint_problems(run_dir / "checkpoint-3", args))
    args.allow_unsafe_checkpoint = True
    assert train.checkpoint_problems(run_dir / "checkpoint-3", args) == []


def test_disk_full_keeps_the_last_checkpoint_and_removes_the_partial_one(
    tiny_sdxl_dir, data_dir, tmp_path, monkeypatch, caplog
):
    """ENOSPC while accelerate writes checkpoint-2's optimizer state (the file is half written, as on a full disk)."""
    import accelerate.checkpointing

    real_save = accelerate.checkpointing.save
    output_dir = tmp_path / "out"

    def save_until_full(obj, path, *args, **kwargs):
        if ".checkpoint-2.tmp" in str(path):
            Path(path).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(accelerate.checkpointing, "save", save_until_full)
    argv = tiny_run_argv(tiny_sdxl_dir, data_dir, output_dir, "--max_train_steps", 3, "--checkpointing_steps", 1,
                         "--val_fraction", 0)  # fmt: skip
    with caplog.at_level(logging.ERROR), pytest.raises(train.CheckpointSaveError) as raised:
        train.main(argv)
    message = str(raised.value)
    assert f"no space left on {output_dir}" in message and "needed about 0.02 GB" in message
    assert "Removed the partial .checkpoint-2.tmp; the last good checkpoint, checkpoint-1, is kept." in message
    assert message in (output_dir / "training.log").read_text()
    assert not (output_dir / ".checkpoint-2.tmp").exists()
    assert (output_dir / "latest").resolve().name == "checkpoint-1"
    assert train.checkpoint_problems(output_dir / "checkpoint-1", train.parse_args(argv)) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_on_a_real_small_tmpfs(tiny_sdxl_dir, data_dir, tmp_path):
    """The same on a real full file system: a 32 MB tmpfs holds one tiny checkpoint (~21 MB) but not two."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount_point)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        output_dir = mount_point / "out"
        argv = tiny_run_argv(tiny_sdxl_dir, data_dir, output_dir, "--max_train_steps", 3, "--checkpointing_steps",
                             1, "--val_fraction", 0)  # fmt: skip
        with pytest.raises(train.CheckpointSaveError, match=f"no space left on {output_dir}"):
            train.main(argv)
        assert [p.name for p in output_dir.iterdir() if p.name.startswith(".checkpoint")] == []
        assert (output_dir / "latest").resolve().name == "checkpoint-1"
        assert train.checkpoint_problems(output_dir / "checkpoint-1", train.parse_args(argv)) == []
    finally:
        reset_accelerate()
        subprocess.run(["umount", "-l", str(mount_point)])


def test_rotation_renames_before_deleting(run_dir, monkeypatch):
    """A kill during the slow delete must not leave a half-deleted checkpoint-N: it is out of the namespace first."""

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt  # the kill, mid-delete

    monkeypatch.setattr(train.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        train.rotate_checkpoints(run_dir, total_limit=2)
    assert [p.name for p in train.list_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-3"]
    assert (run_dir / ".checkpoint-1.deleting").is_dir()
    monkeypatch.undo()
    assert train.clean_leftovers(run_dir) == ["removed .checkpoint-1.deleting"]


def test_interrupted_best_swap_is_restored(tmp_path):
    (tmp_path / ".best.old").mkdir()
    (tmp_path / ".best.old" / "model_index.json").write_text("{}")
    (tmp_path / ".best.tmp").mkdir()
    assert train.clean_leftovers(tmp_path) == [
        "restored best/ from .best.old (its replacement was interrupted)",
        "removed .best.tmp",
    ]
    assert json.loads((tmp_path / "best" / "model_index.json").read_text()) == {}


def test_nan_stop_message_does_not_claim_a_checkpoint_that_does_not_exist(tiny_sdxl_dir, data_dir, tmp_path):
    argv = tiny_run_argv(tiny_sdxl_dir, data_dir, tmp_path / "out", "--max_train_steps", 5, "--max_nan_steps", 2,
                         "--checkpointing_steps", 100, "--val_fraction", 0, "--debug_inject_nan_at_step", 1, 2)  # fmt: skip
    with pytest.raises(train.NonFiniteLossError) as raised:
        train.main(argv)
    assert "is intact" not in str(raised.value) and "no checkpoint was saved yet" in str(raised.value)


# ----- a sample that fails to decode mid-run ---------------------------------------------------------------------


@pytest.fixture
def truncated_mid_run(data_dir, tmp_path, monkeypatch):
    """A private copy of the data whose file for the 5th sample read (epoch 2's first batch: 4 samples, batch 2) gets
    truncated on disk just before that read (a disk fault hours in): the start-up check passed, only decoding can
    find it. -> (data dir, truncated files)."""
    import dataset_loading

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    real_load, reads, truncated = dataset_loading.ShadowDataset.load_sample, [], []

    def load_sample(self, index, flip=False):
        reads.append(index)
        if len(reads) == 5:
            path = self.image_source.refs[index]["object"]
            _truncate(path)
            truncated.append(path.name)
        return real_load(self, index, flip)

    monkeypatch.setattr(dataset_loading.ShadowDataset, "load_sample", load_sample)
    return data, truncated


def test_bad_sample_mid_run_saves_a_checkpoint_and_stops_naming_the_file(tiny_sdxl_dir, truncated_mid_run, tmp_path):
    data, truncated = truncated_mid_run
    output_dir = tmp_path / "out"
    argv = tiny_run_argv(tiny_sdxl_dir, data, output_dir, "--max_train_steps", 4, "--checkpointing_steps", 100,
                         "--val_fraction", 0)  # fmt: skip
    with pytest.raises(train.BadSampleError) as raised:
        train.main(argv)
    message = str(raised.value)
    assert f"objects/{truncated[0]}" in message and "unreadable or truncated image" in message
    assert "Stopping at step 2" in message and f"Saved {output_dir / 'checkpoint-2'}" in message
    assert "--skip_bad_samples" in message and message in (output_dir / "training.log").read_text()
    assert train.checkpoint_problems(output_dir / "checkpoint-2", train.parse_args(argv)) == []


def test_skip_bad_samples_counts_and_logs_each_skip(tiny_sdxl_dir, truncated_mid_run, tmp_path):
    data, truncated = truncated_mid_run
    output_dir = tmp_path / "out"
    state = train.main(tiny_run_argv(tiny_sdxl_dir, data, output_dir, "--max_train_steps", 4, "--val_fraction", 0,
                                     "--skip_bad_samples"))  # fmt: skip
    assert state.global_step == 4 and state.skipped_samples >= 1
    log = (output_dir / "training.log").read_text()
    skips = [line for line in log.splitlines() if "skipped a sample that failed to load" in line]
    assert len(skips) == state.skipped_samples and f"objects/{truncated[0]}" in skips[0]
    assert f"{state.skipped_samples} skipped so far" in skips[-1]


@pytest.mark.parametrize("flag", ["--learning_rate", "--max_grad_norm", "--adam_epsilon", "--ema_decay"])
def test_non_finite_float_flags_are_refused(data_dir, tmp_path, flag):
    argv = ["--pretrained_model_name_or_path", "org/x", "--data_dir", str(data_dir), "--output_dir", str(tmp_path)]
    with pytest.raises(train.ConfigurationError, match=f"`{flag}` must be a finite number, got nan"):
        train.validate_args(train.parse_args([*argv, flag, "nan"]))
