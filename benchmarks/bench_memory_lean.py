"""What `--memory_lean` trades against the default recipe, each measured beside its baseline in the same run.

1. Convergence (any device, small model): train_shadow_sdxl.main on a small synthetic task, with the same data
   order, noise and t in every arm (same seed):
   - default: fp32 weights, torch AdamW, bf16 autocast (the paper's recipe);
   - --memory_lean: bf16 weights and gradients, torchao's AdamW8bit with bf16 stochastic rounding, bf16 autocast;
   - plain bf16 AdamW, for contrast only (not a flag of the script): bf16 weights, torch AdamW (bf16 moments),
     round-to-nearest updates: what the memory-lean mode exists to avoid (docs/design.md §6).
   Prints the training loss (mean of each window of --log_every steps) side by side, the final validation loss
   (fixed noise and t per sample), seconds per step and the share of the UNet's weights that moved.
2. Step cost (--step_size, meant for a GPU at full size): peak memory and seconds per training step of the default
   mode and of --memory_lean on the same card, the UNet prepared as build_models does (weight dtype, gradient
   checkpointing), the optimizer from build_optimizer, the step as the script runs it (training_loss on cached
   latents under bf16 autocast, backward, clipping, the optimizer step inside lean_update). The first step is timed
   apart: it creates the optimizer state and, on a GPU, torchao compiles its update there.

    python benchmarks/bench_memory_lean.py --steps 300                                   # CPU: convergence, tiny
    python benchmarks/bench_memory_lean.py --steps 300 --step_size full --resolution 1024 --batch_size 2 \\
        --gradient_checkpointing                                                          # GPU: both parts
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from data_factory import make_custom_dataset  # noqa: E402

import train_shadow_sdxl as train  # noqa: E402
from pipeline_shadow import ShadowPipeline, ShadowUNet  # noqa: E402
from random_sdxl import random_unet, random_vae, save_random_sdxl  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import make_batches  # noqa: E402
from machine_info import cpu_model, refuse_bad_arguments  # noqa: E402

ARMS = ("default", "--memory_lean", "plain bf16 AdamW")


@contextlib.contextmanager
def plain_bf16_adamw():
    """--memory_lean's bf16 weights with torch's AdamW swapped in for torchao's: round-to-nearest updates."""
    saved = train.optimizer_class, train.optimizer_kwargs
    train.optimizer_class, train.optimizer_kwargs = (lambda args: torch.optim.AdamW), (lambda *args: {})
    try:
        yield
    finally:
        train.optimizer_class, train.optimizer_kwargs = saved


def convergence(args, workdir: Path) -> list[dict]:
    model_dir = save_random_sdxl(workdir / "model", size=args.size, seed=0)
    data_dir = make_custom_dataset(workdir / "data", n=args.num_samples, size=args.convergence_resolution)
    set_seed(0)  # the run's seed: the light projection's random first layer is drawn as in train.main
    start = ShadowPipeline.from_sdxl(model_dir).unet.state_dict()
    rows = []
    for arm in ARMS:
        output_dir = workdir / f"run-{len(rows)}"
        argv = [
            "--pretrained_model_name_or_path", model_dir, "--data_dir", data_dir, "--output_dir", output_dir,
            "--resolution", args.convergence_resolution, "--train_batch_size", args.convergence_batch_size,
            "--val_fraction", 0.25, "--timestep_sampling", args.timestep_sampling, "--learning_rate", args.learning_rate,
            "--lr_scheduler", "constant", "--lr_warmup_steps", 0, "--max_train_steps", args.steps,
            "--validation_steps", args.steps, "--checkpointing_steps", args.steps + 1, "--num_validation_images", 1,
            "--cache_latents", "--latent_cache_dir", workdir / "latents", "--dataloader_num_workers", 0,
            "--report_to", "none", "--seed", 0, "--mixed_precision", "bf16",
            *(["--memory_lean"] if arm != "default" else []),
        ]  # fmt: skip
        patch = plain_bf16_adamw() if arm == "plain bf16 AdamW" else contextlib.nullcontext()
        began = time.perf_counter()
        with patch:
            state = train.main([str(value) for value in argv])
        seconds = time.perf_counter() - began
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        final = load_file(str(output_dir / "unet" / "diffusion_pytorch_model.safetensors"))
        dtype = next(iter(final.values())).dtype
        moved = sum(int((final[k] != start[k].to(dtype)).sum()) for k in start)
        rows.append(
            {
                "arm": arm,
                "losses": state.losses,
                "val_loss": state.best_val_loss,
                "s_per_step": seconds / args.steps,  # the whole run (set-up, validation, saving) per step
                "moved": moved / sum(v.numel() for v in start.values()),
            }
        )
    return rows


def print_convergence(args, rows: list[dict], hardware: str) -> None:
    print(
        f"# convergence: {args.size} shadow UNet, {args.convergence_resolution}², batch {args.convergence_batch_size}, "
        f"{args.num_samples} samples (a quarter held out), t sampling `{args.timestep_sampling}`, lr "
        f"{args.learning_rate:g} constant, {args.steps} steps, seed 0; {hardware}, torch {torch.__version__}"
    )
    print("| training loss, steps | " + " | ".join(row["arm"] for row in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for begin in range(0, args.steps, args.log_every):
        end = min(begin + args.log_every, args.steps)
        means = [statistics.fmean(row["losses"][begin:end]) for row in rows]
        print(f"| {begin + 1}-{end} | " + " | ".join(f"{mean:.4f}" for mean in means) + " |")
    print("| final validation loss | " + " | ".join(f"{row['val_loss']:.4f}" for row in rows) + " |")
    print("| weights moved from the start | " + " | ".join(f"{100 * row['moved']:.1f} %" for row in rows) + " |")
    print("| s/step (whole run) | " + " | ".join(f"{row['s_per_step']:.3f}" for row in rows) + " |")


def step_cost(args, flags: list[str], device: torch.device) -> dict:
    """Peak memory and s/step of the script's step in one mode (`flags`) on a freshly built model."""
    script_args = train.parse_args(
        ["--learning_rate", "1e-5", "--lr_warmup_steps", "0", "--max_train_steps", "100000", *flags]
    )
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    unet = ShadowUNet.from_sdxl_unet(random_unet(args.step_size))
    train._to(unet, device, train.weight_dtype(script_args))  # cast on the CPU, then move: as build_models does
    unet.train()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    vae = random_vae(args.step_size).to(device).eval().requires_grad_(False)  # fp32, frozen, resident as in training
    _, cached = make_batches(vae, args.batch_size, args.resolution, device)
    optimizer, _ = train.build_optimizer(script_args, unet, types.SimpleNamespace(device=device, num_processes=1))
    generator = torch.Generator(device).manual_seed(0)
    params = [p for p in unet.parameters() if p.requires_grad]
    step_index = 0

    def step():
        nonlocal step_index
        step_index += 1
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = train.training_loss(script_args, unet, vae, cached, generator, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        with train.lean_update(script_args, device, train.rounding_seed(0, step_index)):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    began = time.perf_counter()
    step()
    synchronize()
    first_step = time.perf_counter() - began
    step()
    if device.type == "cuda":
        synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.timing_steps):
        began = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - began)
    row = {
        "mode": " ".join(flags) or "default",
        "first_step_s": first_step,
        "s_per_step": statistics.median(times),
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if device.type == "cuda" else float("nan"),
    }
    return row  # the model and its optimizer state go with this frame; the next call collects them first


def print_step_cost(args, rows: list[dict], hardware: str) -> None:
    print(
        f"# step cost: {args.step_size} shadow UNet, {args.resolution}², batch {args.batch_size}, checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}, bf16 autocast, cached latents, median of "
        f"{args.timing_steps} steps; {hardware}, torch {torch.__version__}"
    )
    print("| mode | s/step | first step s | peak allocated GiB | peak reserved GiB |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['s_per_step']:.3f} | {row['first_step_s']:.1f} | "
            f"{row['peak_allocated_gib']:.1f} | {row['peak_reserved_gib']:.1f} |"
        )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny", help="Model of the convergence runs.")
    parser.add_argument("--steps", type=int, default=300, help="Optimizer steps of each convergence run (0: skip).")
    parser.add_argument("--learning_rate", type=float, default=1e-5, help="Of the convergence runs (paper: 1e-5).")
    parser.add_argument("--timestep_sampling", default="single_step", choices=["single_step", "uniform"])
    parser.add_argument("--num_samples", type=int, default=16)
    parser.add_argument("--convergence_resolution", type=int, default=32)
    parser.add_argument("--convergence_batch_size", type=int, default=4)
    parser.add_argument(
        "--logging_steps", "--log_every", dest="log_every", type=int, default=25, help="Window of the loss table."
    )
    parser.add_argument("--step_size", choices=["tiny", "small", "full"], default=None, help="Also time the step.")
    parser.add_argument("--resolution", type=int, default=1024, help="Of the step-cost part.")
    parser.add_argument(
        "--train_batch_size", "--batch_size", dest="batch_size", type=int, default=2, help="Of the step-cost part."
    )
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Of the step-cost part.")
    parser.add_argument("--timing_steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    refuse_bad_arguments(
        parser,
        device=args.device,
        resolutions=[("--resolution", [args.resolution])],
        counts=[("--train_batch_size", args.batch_size), ("--timing_steps", args.timing_steps)],
    )
    if args.steps < 0 or not (args.steps or args.step_size):
        parser.error(f"`--steps` {args.steps} and no --step_size: nothing to measure (--steps >= 1, or --step_size).")
    device = torch.device(args.device)
    hardware = torch.cuda.get_device_name() if device.type == "cuda" else cpu_model()
    result = {}
    if args.steps:
        with tempfile.TemporaryDirectory() as workdir:
            result["convergence"] = convergence(args, Path(workdir))
        print_convergence(args, result["convergence"], hardware)
    if args.step_size:
        result["step_cost"] = [step_cost(args, flags, device) for flags in ([], ["--memory_lean"])]
        print_step_cost(args, result["step_cost"], hardware)
    return result


if __name__ == "__main__":
    main()
