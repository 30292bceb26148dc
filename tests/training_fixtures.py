"""Fixtures and helpers shared by the in-process training tests (test_train_shadow_sdxl, test_train_options, test_memory_lean).

Import them into a test module (`from training_fixtures import fresh_accelerate_state, reset_accelerate`); pytest
then applies the autouse fixture to that module only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

import train_shadow_sdxl as train


def reset_accelerate() -> None:
    """accelerate's state is a singleton; each in-process run builds its own Accelerator (precision, accumulation)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """A fresh accelerate state after each test, and one torch thread: these tiny models barely use a second one,
    and two busy OpenMP threads per process are 5-100x slower when another job shares the 2 cores (measured here:
    the litmus run took 5 s alone, 21 s with 2 threads beside another torch job, 5 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    reset_accelerate()


def tiny_run_argv(model, data_dir, output_dir, *extra) -> list[str]:
    """The command line every in-process tiny training run shares (32 px, batch 2, no workers, no tracker, seed 0);
    `extra` adds or overrides flags (argparse keeps the last value)."""
    return [
        "--pretrained_model_name_or_path", str(model), "--dataset_type", "custom", "--data_dir", str(data_dir),
        "--output_dir", str(output_dir), "--resolution", "32", "--dataloader_num_workers", "0", "--report_to", "none",
        "--seed", "0", "--train_batch_size", "2", "--lr_warmup_steps", "0", *map(str, extra),
    ]  # fmt: skip


def straight_and_resumed(argv: Callable[..., list[str]], root: Path, total: int, half: int, *common, resume=None):
    """The exact-resume experiment: `total` steps straight in root/straight; `half` steps, then a resume to `total`,
    in root/resumed. `argv(output_dir, *flags)` builds a command line; `resume` is the resume flag and value (default
    `--resume_from_checkpoint latest`). -> the TrainingState of (straight, the half run, the resumed run)."""
    resume = resume or ("--resume_from_checkpoint", "latest")
    straight = train.main(argv(root / "straight", *common, "--max_train_steps", total))
    reset_accelerate()
    first = train.main(argv(root / "resumed", *common, "--max_train_steps", half))
    reset_accelerate()
    resumed = train.main(argv(root / "resumed", *common, "--max_train_steps", total, *resume))
    return straight, first, resumed


def make_checkpoints(model, data_dir, output_dir: Path, steps: int = 2, *extra) -> Path:
    """A real tiny run that saves checkpoint-1 .. checkpoint-`steps` in output_dir (for tests that corrupt them)."""
    train.main(tiny_run_argv(model, data_dir, output_dir, "--max_train_steps", steps, "--checkpointing_steps", 1,
                             "--val_fraction", 0, *extra))  # fmt: skip
    reset_accelerate()
    return output_dir
