"""train_shadow_sdxl.py's options (issue #8): LoRA, EMA, 8-bit Adam, xformers, DeepSpeed, the model card and the Hub
upload, wandb captions. Real training of the tiny SDXL-format model; only what needs a GPU, a missing package or the
network is faked (and each fake says so)."""

from __future__ import annotations

import functools
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import PartialState
from data_factory import make_custom_dataset
from safetensors.torch import load_file
from training_fixtures import (  # noqa: F401 (autouse fixture)
    fresh_accelerate_state,
    reset_accelerate,
    straight_and_resumed,
    tiny_run_argv,
)

import evaluate_shadow
import hub_card
import train_shadow_sdxl as train
from pipeline_shadow import (
    LORA_ADAPTER_WEIGHTS,
    LORA_FULL_WEIGHTS,
    LORA_INFO,
    LORA_SUBFOLDER,
    ShadowPipeline,
    ShadowUNet,
)
from train_shadow_sdxl import LORA_FULLY_TRAINED_MODULES, LORA_TARGET_MODULES

REPO_ROOT = Path(__file__).resolve().parents[1]
NOT_LOADABLE = "org/not-a-model-that-could-load"  # proves an error comes before any model loads


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_custom_dataset(tmp_path_factory.mktemp("data"), n=8, size=32)


def _argv(model, data_dir, output_dir, *extra) -> list[str]:
    return tiny_run_argv(model, data_dir, output_dir, "--learning_rate", "1e-2", "--num_validation_images", 2, *extra)


def _weights(folder: Path, name: str = "unet/diffusion_pytorch_model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(folder / name))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _shadow_maps(pipe: ShadowPipeline) -> torch.Tensor:
    cutout = torch.zeros(4, 40, 32)  # RGBA, not square
    cutout[:3, 10:30, 8:24] = torch.tensor([0.8, 0.3, 0.2])[:, None, None]
    cutout[3, 10:30, 8:24] = 1.0
    generator = torch.Generator().manual_seed(0)
    return pipe(cutout, theta=30, phi=45, size=4, generator=generator, output_type="pt").shadow_maps


# ----- flags ----------------------------------------------------------------------------------------------------


def test_new_flags_have_diffusers_names_and_defaults():
    args = train.parse_args([])
    assert not (args.use_lora or args.use_ema or args.use_8bit_adam or args.push_to_hub)
    assert not (args.offload_ema or args.enable_xformers_memory_efficient_attention)
    assert (args.lora_rank, args.lora_alpha, args.ema_decay) == (4, None, 0.9999)
    assert (args.hub_model_id, args.hub_token, args.hub_license) == (None, None, "openrail++")


@pytest.mark.parametrize(
    ("extra", "hidden", "fake_module", "message"),
    [
        (["--use_8bit_adam"], "bitsandbytes", None, r"`--use_8bit_adam` needs bitsandbytes.*pip install bitsandbytes"),
        (["--use_8bit_adam"], None, "bitsandbytes", r"`--use_8bit_adam` needs a CUDA GPU"),
        (
            ["--enable_xformers_memory_efficient_attention"],
            "xformers",
            None,
            r"`--enable_xformers_memory_efficient_attention` needs xformers.*pip install xformers",
        ),
        (
            ["--enable_xformers_memory_efficient_attention"],
            None,
            "xformers",
            r"needs a CUDA GPU.*PyTorch's scaled-dot-product attention is used",
        ),
        (["--report_to", "wandb"], "wandb", None, r"`--report_to wandb` needs wandb: pip install wandb"),
        (["--use_lora"], "peft", None, r"`--use_lora` needs peft.*pip install peft"),
        (["--use_lora", "--lora_rank", "0"], None, None, r"`--lora_rank` must be an integer >= 1"),
        (["--offload_ema"], None, None, r"`--offload_ema` only applies to `--use_ema`"),
        (["--use_ema", "--ema_decay", "1.5"], None, None, r"`--ema_decay` must lie in \[0, 1\]"),
        (["--shadow_iou_weight", "-0.5"], None, None, r"`--shadow_iou_weight` must be a number >= 0 \(0 = off\)"),
        (["--shadow_iou_samples", "0"], None, None, r"`--shadow_iou_samples` must be an integer >= 1"),
        (["--shadow_iou_weight", "nan"], None, None, r"`--shadow_iou_weight` must be a finite number"),
        (["--report_to", "all", "--hub_token", "x"], None, None, r"`--hub_token` with `--report_to wandb`"),
        (["--evaluation_metrics", "MISSING"], None, None, r"`--evaluation_metrics` .* cannot be read"),
    ],
)
def test_missing_packages_and_hardware_fail_before_any_model_loads(
    monkeypatch, tmp_path, data_dir, extra, hidden, fake_module, message
):
    # Neither bitsandbytes, xformers nor wandb is installed here and there is no GPU; the fakes make each case hold
    # on any machine: a hidden module fails to import, a fake one imports, and CUDA is reported absent.
    if hidden:
        monkeypatch.setitem(sys.modules, hidden, None)
    if fake_module:
        monkeypatch.setitem(sys.modules, fake_module, types.ModuleType(fake_module))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extra = [str(tmp_path / "missing.json") if value == "MISSING" else value for value in extra]
    with pytest.raises(ValueError, match=message):
        train.main(_argv(NOT_LOADABLE, data_dir, tmp_path / "out", *extra))


def test_8bit_adam_is_bitsandbytes_adamw8bit_without_torch_only_options(monkeypatch, tiny_shadow_dir):
    """bitsandbytes needs a GPU, so its optimizer is faked here: what is checked is that --use_8bit_adam picks
    `bnb.optim.AdamW8bit` with the run's hyper-parameters and never torch's `fused` flag, even on a CUDA device."""
    created = {}

    class AdamW8bit(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            created.update(kwargs)
            super().__init__(params, **kwargs)

    bitsandbytes = types.ModuleType("bitsandbytes")
    bitsandbytes.optim = types.SimpleNamespace(AdamW8bit=AdamW8bit)
    monkeypatch.setitem(sys.modules, "bitsandbytes", bitsandbytes)
    args = train.parse_args(["--use_8bit_adam", "--max_train_steps", "10"])
    assert train.optimizer_class(args) is AdamW8bit
    assert train.optimizer_class(train.parse_args([])) is torch.optim.AdamW
    unet = ShadowUNet.from_pretrained(tiny_shadow_dir, subfolder="unet")
    accelerator = types.SimpleNamespace(device=torch.device("cuda"), num_processes=1)
    optimizer, _ = train.build_optimizer(args, unet, accelerator)
    assert isinstance(optimizer, AdamW8bit) and "fused" not in created
    assert (created["lr"], created["betas"], created["weight_decay"]) == (1e-5, (0.9, 0.999), 1e-2)


# ----- LoRA -----------------------------------------------------------------------------------------------------


def test_full_size_lora_trains_half_a_percent_of_the_unet():
    """The README's memory table rests on these counts: the real SDXL architecture, converted, on the meta device."""
    from pipeline_shadow import shadow_unet_config
    from random_sdxl import SDXL_UNET_CONFIG

    args = train.parse_args(["--use_lora"])  # rank 4
    with torch.device("meta"):
        unet = ShadowUNet(unet_config=shadow_unet_config(SDXL_UNET_CONFIG))
        train.add_lora(unet, args)
    unet.requires_grad_(False)
    trained = train.trainable_parameters(unet, args)
    adapter = sum(p.numel() for name, p in unet.named_parameters() if ".lora_" in name)
    base = sum(p.numel() for name, p in unet.named_parameters() if ".lora_" not in name)
    assert (base, adapter, sum(p.numel() for p in trained) - adapter) == (2_019_019_844, 7_321_600, 2_650_240)


def test_lora_run_saves_adapter_and_merged_pipeline_that_agree(tiny_sdxl_dir, data_dir, tmp_path):
    output_dir = tmp_path / "out"
    extra = ["--use_lora", "--lora_rank", 4, "--max_train_steps", 3, "--checkpointing_steps", 3]
    train.main(_argv(tiny_sdxl_dir, data_dir, output_dir, *extra))

    final, adapter = output_dir, output_dir / LORA_SUBFOLDER
    assert {"adapter_config.json", LORA_ADAPTER_WEIGHTS, LORA_FULL_WEIGHTS, LORA_INFO} <= {
        p.name for p in adapter.iterdir()
    }
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == sorted(LORA_TARGET_MODULES)
    assert config["base_model_name_or_path"] == str(tiny_sdxl_dir)
    assert json.loads((adapter / LORA_INFO).read_text())["default_processing_resolution"] == 32
    full = load_file(str(adapter / LORA_FULL_WEIGHTS))
    assert {key.split(".")[0] for key in full} == set(LORA_FULLY_TRAINED_MODULES) and full["conv_in.weight"].shape[
        1
    ] == 9
    checkpoint = output_dir / "checkpoint-3"
    assert (checkpoint / LORA_SUBFOLDER / LORA_ADAPTER_WEIGHTS).is_file() and not (checkpoint / "unet").exists()
    assert "load_lora_weights" in (final / "README.md").read_text()

    # The merged pipeline is a plain ShadowPipeline: only the adapted layers and the fully trained modules moved.
    merged = ShadowPipeline.from_pretrained(final)
    base = ShadowPipeline.from_sdxl(tiny_sdxl_dir)
    merged_state, base_state = merged.unet.state_dict(), base.unet.state_dict()
    assert merged_state.keys() == base_state.keys() and not any(".lora_" in k for k in merged_state)
    changed = {k for k in base_state if not torch.equal(merged_state[k], base_state[k])}
    adapted = tuple(f".{name}.weight" for name in LORA_TARGET_MODULES)
    fully_trained = tuple(f"unet.{name}." for name in LORA_FULLY_TRAINED_MODULES)
    assert changed and all(k.endswith(adapted) or k.startswith(fully_trained) for k in changed)
    assert any(k.endswith(adapted) for k in changed)  # the adapter did learn something

    # The adapter on a freshly converted base, unmerged (peft layers) and fused, gives the merged pipeline's output.
    expected = _shadow_maps(merged)
    assert not torch.allclose(_shadow_maps(base), expected, atol=1e-4)
    with_adapter = ShadowPipeline.from_sdxl(tiny_sdxl_dir).load_lora_weights(final)  # finds <output_dir>/unet_lora
    assert with_adapter.config.default_processing_resolution == 32
    torch.testing.assert_close(_shadow_maps(with_adapter), expected, atol=1e-5, rtol=0)
    fused = ShadowPipeline.from_sdxl(tiny_sdxl_dir).load_lora_weights(adapter, fuse=True)
    assert not any(".lora_" in k for k in fused.unet.state_dict())
    torch.testing.assert_close(_shadow_maps(fused), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="already carries a LoRA"):
        with_adapter.load_lora_weights(adapter)
    with pytest.raises(ValueError, match=r"unfused LoRA.*call `fuse_lora\(\)` first"):
        with_adapter.save_pretrained(tmp_path / "unfused")
    fused.save_pretrained(tmp_path / "fused")  # a plain pipeline again
    torch.testing.assert_close(
        _shadow_maps(ShadowPipeline.from_pretrained(tmp_path / "fused")), expected, atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="No LoRA"):
        base.load_lora_weights(tmp_path)


# ----- EMA and exact resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_ema_differs_from_raw_weights_and_resumes_exactly(tiny_sdxl_dir, data_dir, tmp_path, mode):
    """4 steps straight == 2 steps + resume to 4, bit for bit: the raw weights, the EMA weights and its counters.
    The EMA is what validation, best/ and the final pipeline use."""
    common = ["--use_ema", "--ema_decay", 0.9, "--offload_ema", "--checkpointing_steps", 2, "--validation_steps", 2]
    if mode == "lora":
        common += ["--use_lora", "--foreach_ema"]
    argv = functools.partial(_argv, tiny_sdxl_dir, data_dir)
    straight, _, resumed = straight_and_resumed(argv, tmp_path, 4, 2, *common)

    assert resumed.losses == straight.losses[2:]
    raw_file = (
        f"{LORA_SUBFOLDER}/{LORA_ADAPTER_WEIGHTS}" if mode == "lora" else "unet/diffusion_pytorch_model.safetensors"
    )
    ema_file = f"{train.EMA_DIR}/diffusion_pytorch_model.safetensors"
    for name in (raw_file, ema_file):
        _assert_same(
            _weights(tmp_path / "straight" / "checkpoint-4", name),
            _weights(tmp_path / "resumed" / "checkpoint-4", name),
        )
    _assert_same(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))
    counters = json.loads((tmp_path / "resumed" / "checkpoint-4" / train.EMA_DIR / train.EMA_STATE_FILE).read_text())
    assert counters["optimization_step"] == 4 and counters["decay"] == 0.9

    checkpoint = tmp_path / "straight" / "checkpoint-4"
    ema = _weights(checkpoint, ema_file)
    if mode == "full":  # unet_ema/ is a loadable ShadowUNet, and the final pipeline holds exactly its weights
        raw = _weights(checkpoint)
        assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in raw)
        _assert_same(ShadowUNet.from_pretrained(checkpoint, subfolder=train.EMA_DIR).state_dict(), ema)
        _assert_same(_weights(tmp_path / "straight"), ema)
        # A checkpoint without LoRA does not resume a LoRA run (and says why).
        reset_accelerate()
        with pytest.raises(ValueError, match="saved without --use_lora"):
            train.main(
                _argv(
                    tiny_sdxl_dir,
                    data_dir,
                    tmp_path / "straight",
                    *common,
                    "--use_lora",
                    "--max_train_steps",
                    4,
                    "--resume_from_checkpoint",
                    "latest",
                )
            )
    else:  # the EMA covers the adapter and the fully trained modules only
        assert all(".lora_" in k or k.startswith(("unet.conv_in.", "unet.class_embedding.")) for k in ema)
        raw = _weights(checkpoint, f"{LORA_SUBFOLDER}/{LORA_FULL_WEIGHTS}")
        assert not torch.equal(ema["unet.conv_in.weight"], raw["conv_in.weight"])


def test_lora_and_ema_with_two_processes(tiny_sdxl_dir, data_dir, tmp_path):
    """DDP around a peft-injected UNet, the EMA on every rank, its checkpoint written once and read back by every
    rank on resume: through `accelerate launch` with two CPU processes."""
    from test_train_shadow_sdxl import _launch

    output_dir = tmp_path / "out"
    common = [*_argv(tiny_sdxl_dir, data_dir, output_dir), "--use_lora", "--use_ema", "--checkpointing_steps", 1]
    common += ["--validation_steps", 2, "--checkpoints_total_limit", 0]
    _launch(*common, "--max_train_steps", 1, num_processes=2)
    _launch(*common, "--max_train_steps", 2, "--resume_from_checkpoint", "latest", num_processes=2)

    log = (output_dir / "training.log").read_text()
    assert "Resuming from" in log and log.count("Saved the final pipeline") == 2
    for step in (1, 2):
        checkpoint = output_dir / f"checkpoint-{step}"
        assert {"unet_lora", train.EMA_DIR, "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
        assert json.loads((checkpoint / train.EMA_DIR / train.EMA_STATE_FILE).read_text())["optimization_step"] == step
    assert (output_dir / LORA_SUBFOLDER / LORA_ADAPTER_WEIGHTS).is_file()
    ShadowPipeline.from_sdxl(tiny_sdxl_dir).load_lora_weights(output_dir)


# ----- DeepSpeed ------------------------------------------------------------------------------------------------


def test_deepspeed_zero2_config_parses():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO_ROOT / "configs" / "deepspeed_zero2.yaml"))
    assert (config.distributed_type.value, config.mixed_precision) == ("DEEPSPEED", "bf16")
    deepspeed = config.deepspeed_config
    assert (deepspeed["zero_stage"], deepspeed["gradient_accumulation_steps"], deepspeed["gradient_clipping"]) == (
        2,
        1,
        1.0,
    )
    assert deepspeed["offload_optimizer_device"] == deepspeed["offload_param_device"] == "none"


def _deepspeed_launch_environment(config_file: Path, *launch_flags: str) -> dict[str, str]:
    """The ACCELERATE_* variables that `accelerate launch --config_file ... script.py` exports to the script, computed
    by accelerate's own launcher code (deepspeed itself is not needed for that, nor installed here)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    argv = ["--config_file", str(config_file), *launch_flags, "train_shadow_sdxl.py"]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, environment = prepare_deepspeed_cmd_env(args)
    return {k: v for k, v in environment.items() if k.startswith("ACCELERATE_")}


def test_deepspeed_accumulation_mismatch_is_caught_before_any_model_loads(monkeypatch, tmp_path, data_dir):
    environment = _deepspeed_launch_environment(REPO_ROOT / "configs" / "deepspeed_zero2.yaml")
    assert environment["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert environment["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] == "1"
    train.check_deepspeed_environment(train.parse_args([]), environment)  # the defaults agree with the config
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    argv = _argv(NOT_LOADABLE, data_dir, tmp_path / "out", "--gradient_accumulation_steps", 4)
    with pytest.raises(
        ValueError, match=r"`--gradient_accumulation_steps` is 4 but .*gradient_accumulation_steps is 1"
    ):
        train.main(argv)

    flagged = _deepspeed_launch_environment(
        REPO_ROOT / "configs" / "deepspeed_zero2.yaml", "--gradient_accumulation_steps", "4"
    )
    train.check_deepspeed_environment(train.parse_args(["--gradient_accumulation_steps", "4"]), flagged)
    with pytest.raises(ValueError, match="clips at 1.0"):
        train.check_deepspeed_environment(train.parse_args(["--max_grad_norm", "0.5"]), environment)
    with pytest.raises(ValueError, match="ZeRO stage 3 is not supported"):
        train.check_deepspeed_environment(train.parse_args([]), {**environment, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"})
    deepspeed_json = tmp_path / "ds_config.json"
    deepspeed_json.write_text(json.dumps({"gradient_accumulation_steps": 2, "zero_optimization": {"stage": 2}}))
    json_environment = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(deepspeed_json)}
    with pytest.raises(ValueError, match="ds_config.json's gradient_accumulation_steps is 2"):
        train.check_deepspeed_environment(train.parse_args([]), json_environment)


class _FakeRank:
    """Just enough of an Accelerator for the checkpoint code on one rank of several (no process group here)."""

    def __init__(self, is_main_process: bool):
        self.is_main_process = is_main_process
        self.saved, self.hooks = [], {}

    def wait_for_everyone(self):
        pass

    def save_state(self, output_dir):
        self.saved.append(Path(output_dir))
        Path(output_dir).mkdir(parents=True, exist_ok=True)  # every rank writes its own shard under DeepSpeed

    def unwrap_model(self, model):
        return model

    def register_save_state_pre_hook(self, hook):
        self.hooks["save"] = hook

    def register_load_state_pre_hook(self, hook):
        self.hooks["load"] = hook


def test_every_rank_saves_state_and_only_the_main_one_publishes(tmp_path):
    """DeepSpeed needs save_state on every rank (each writes its optimizer partition): a non-main rank must call it
    too, and leave the renaming, `latest` and rotation to the main process."""
    PartialState(cpu=True)  # accelerate's logger needs a state; the ranks themselves are fakes
    args = train.parse_args(["--output_dir", str(tmp_path), "--checkpoints_total_limit", "1"])
    state = train.TrainingState(global_step=5, seed=0)
    other, main = _FakeRank(is_main_process=False), _FakeRank(is_main_process=True)
    train.save_checkpoint(other, args, state)
    assert other.saved == [tmp_path / ".checkpoint-5.tmp"] and not (tmp_path / "latest").exists()
    assert not (tmp_path / "checkpoint-5").exists()
    train.save_checkpoint(main, args, state)
    assert main.saved == [tmp_path / ".checkpoint-5.tmp"] and (tmp_path / "latest").resolve().name == "checkpoint-5"
    assert train.read_training_state(tmp_path / "checkpoint-5")["global_step"] == 5


def test_checkpoint_hooks_under_deepspeed_semantics(tiny_shadow_dir, tmp_path):
    """Under DeepSpeed accelerate hands the save hook no state dicts to pop, and the load hook no models (DeepSpeed
    restores the module itself): the UNet is still written once in diffusers format, and the EMA still round-trips."""
    unet = ShadowUNet.from_pretrained(tiny_shadow_dir, subfolder="unet")
    args = train.parse_args(["--use_ema"])
    ema = train.create_ema(unet, args)
    with torch.no_grad():
        for param in unet.parameters():
            param.add_(0.01)
    train.update_ema(ema, unet, args, torch.device("cpu"))
    for is_main, folder in ((False, tmp_path / "rank1"), (True, tmp_path / "rank0")):
        rank = _FakeRank(is_main)
        train.register_checkpoint_hooks(rank, args, unet, ema)
        rank.hooks["save"]([unet], [], str(folder))
        assert (folder / "unet").is_dir() == is_main and (folder / train.EMA_DIR).is_dir() == is_main
    expected = [p.clone() for p in ema.shadow_params]
    fresh = train.create_ema(unet, args)
    rank = _FakeRank(is_main_process=False)
    train.register_checkpoint_hooks(rank, args, unet, fresh)
    rank.hooks["load"]([], str(tmp_path / "rank0"))  # every rank loads the EMA
    assert fresh.optimization_step == 1 and all(torch.equal(a, b) for a, b in zip(fresh.shadow_params, expected))


# ----- the model card and the upload ----------------------------------------------------------------------------


def _metrics_json(path: Path) -> Path:
    """A metrics.json in evaluate_shadow.py's format, its summary computed by evaluate_shadow.summarize."""
    records = [
        {"index": i, "seed": s, "track": track, "iou": 0.5 + 0.01 * i, "rmse": 0.03, "s_rmse": 0.02, "zncc": 0.9}
        for i, track in enumerate(["softness", "softness", "horizontal"])
        for s in (0, 1)
    ]
    settings = {"dataset": "benchmark", "num_inference_steps": 1, "num_seeds": 2, "resolution": 32, "hardware": "CPU"}
    path.write_text(json.dumps({"settings": settings, "summary": evaluate_shadow.summarize(records)}))
    return path


def test_push_to_hub_uploads_the_final_pipeline_at_the_root_with_its_model_card(
    monkeypatch, tiny_sdxl_dir, data_dir, tmp_path
):
    """No network here: the two Hub calls are replaced by recorders; what would be uploaded is checked on disk."""
    from diffusers import DiffusionPipeline
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import filter_repo_objects

    uploads = []
    monkeypatch.setattr(hub_card, "create_hub_repo", lambda args: f"me/{args.hub_model_id}")
    monkeypatch.setattr(
        hub_card, "upload_pipeline", lambda folder, repo_id, token: uploads.append((Path(folder), repo_id, token))
    )
    output_dir = tmp_path / "out"
    extra = [
        "--max_train_steps", 2, "--validation_steps", 2, "--checkpointing_steps", 2, "--use_ema", "--push_to_hub",
        "--hub_model_id", "shadows", "--hub_token", "hf_secret_token",
    ]  # fmt: skip
    train.main(_argv(tiny_sdxl_dir, data_dir, output_dir, *extra))

    final = output_dir  # the final pipeline sits at the root of the run folder
    assert uploads == [(final, "me/shadows", "hf_secret_token")]
    assert "No evaluation was attached" in (final / "README.md").read_text()
    # The README's recipe for adding an evaluation afterwards: the same command, resumed, with the metrics.
    reset_accelerate()
    metrics = ["--resume_from_checkpoint", "latest", "--evaluation_metrics", _metrics_json(tmp_path / "metrics.json")]
    train.main(_argv(tiny_sdxl_dir, data_dir, output_dir, *extra, *metrics))
    assert len(uploads) == 2 and "Already at step 2 of 2" in (output_dir / "training.log").read_text()
    every_file = [str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()]
    files = set(
        filter_repo_objects(every_file, ignore_patterns=hub_card.HUB_IGNORE_PATTERNS)
    )  # what upload_folder sends
    assert any(f.startswith("checkpoint-2/") for f in every_file) and (final / "best").is_dir()
    assert not [f for f in files if f.split("/")[0] in ("best", "logs", "validation", "latest") or "checkpoint" in f]
    assert not [f for f in files if f.startswith(".") or f in ("training.log", "training_config.json")]
    expected = {"model_index.json", "pipeline_shadow.py", "unet/pipeline_shadow.py", "unet/config.json", "README.md"}
    assert expected | {"validation.png", "vae/config.json", "scheduler/scheduler_config.json"} <= files

    card = ModelCard.load(final / "README.md")  # the front matter parses
    assert card.data.license == "openrail++" and card.data.library_name == "diffusers"
    assert set(hub_card.MODEL_CARD_TAGS) <= set(card.data.tags) and card.data.base_model is None  # a local base
    text = card.text
    for section in (
        "## Light parameters",
        "## How to use",
        "## Training",
        "## Validation",
        "## Evaluation",
        "## Licence",
    ):
        assert section in text
    assert "phi = 0: light on the image's right" in text and "| `theta` |" in text
    assert 'DiffusionPipeline.from_pretrained("me/shadows", trust_remote_code=True)' in text
    assert "![validation grid](validation.png)" in text and "theta " in text and "phi " in text
    assert "| softness | 2 | 0.505 ± 0.005 |" in text  # from the metrics file
    assert "decay 0.9999 (these weights are the EMA)" in text and '"use_ema": true' in text
    assert "hf_secret_token" not in text
    assert "hf_secret_token" not in (output_dir / "training_config.json").read_text()

    # What was uploaded loads with diffusers alone, from the folder's own copy of the code.
    pipe = DiffusionPipeline.from_pretrained(final, trust_remote_code=True)
    assert type(pipe).__name__ == "ShadowPipeline" and pipe.config.default_processing_resolution == 32


def test_model_card_without_validation_or_metrics_says_so(tmp_path):
    args = train.parse_args(["--output_dir", str(tmp_path), "--pretrained_model_name_or_path", "someone/sdxl-base"])
    args.seed = 1
    folder = tmp_path
    path = train.save_model_card(args, folder, train.TrainingState(global_step=7))
    card = path.read_text()
    assert "base_model: someone/sdxl-base" in card and "No validation grid" in card
    assert "No evaluation was attached" in card and not (folder / "validation.png").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"summary": {"all": 3}}, r"`summary.all` must be a JSON object of metrics, got int"),
        ({"summary": {"all": {"iou": 0.5}}}, r"`summary.all.iou` must be an object with `mean` and `std`, got 0.5"),
        ({"summary": {"all": {"iou": {"mean": "high", "std": 0.1}}}}, r"needs numbers `mean` and `std`, got 'high'"),
        ({"summary": {"all": {"iou": {"mean": 0.5}}}}, r"needs numbers `mean` and `std`, got 0.5 and None"),
        ({"settings": [], "summary": {}}, r"`settings` must be a JSON object, got list"),
    ],
)
def test_a_malformed_metrics_file_is_refused_at_start_up_not_in_the_model_card(tmp_path, data_dir, content, message):
    """The model card is written after the run (and before --push_to_hub uploads it): what it reads of
    --evaluation_metrics is checked when the run starts."""
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        hub_card.read_evaluation_metrics(path)
    with pytest.raises(train.ConfigurationError, match=r"`--evaluation_metrics` '.*metrics.json' cannot be read: "):
        train.main(_argv(NOT_LOADABLE, data_dir, tmp_path / "out", "--evaluation_metrics", path))
    good = {"summary": {"all": {"iou": {"mean": 0.5, "std": 0.1, "n": 3}, "rmse": {"mean": None, "std": None}}}}
    path.write_text(json.dumps(good))
    assert "| all | ? | 0.500 ± 0.100 | n/a |" in hub_card._metrics_section(str(path))


# ----- trackers -------------------------------------------------------------------------------------------------


def test_wandb_gets_each_validation_row_captioned_with_its_light(monkeypatch):
    """wandb is not installed here: a stand-in module records what would be logged."""

    class Image:
        def __init__(self, data, caption=None):
            self.data, self.caption = data, caption

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Image=Image))
    logged = []
    tracker = types.SimpleNamespace(name="wandb", log=lambda values, step: logged.append((values, step)))
    accelerator = types.SimpleNamespace(trackers=[tracker])
    light = torch.tensor([[30.0, 45.0, 4.0], [10.0, 380.0, 2.0]])
    captions = train._light_captions({"id": ["obj_a", "obj_b"]}, light)
    rows = [np.zeros((8, 24, 3), np.uint8), np.ones((8, 24, 3), np.uint8)]
    train._log_grid(accelerator, np.concatenate(rows), 12, rows, captions)

    ((values, step),) = logged
    assert step == 12 and len(values["validation"]) == 1 and len(values["validation_rows"]) == 2
    first, second = (image.caption for image in values["validation_rows"])
    assert first.startswith("obj_a: theta 30°, phi 45°, size 4") and "ground truth" in first
    assert second.startswith("obj_b: theta 10°, phi 380°, size 2")
    assert "obj_a: theta 30°" in values["validation"][0].caption


def test_a_lora_trained_with_a_detailed_mask_loads_onto_the_area_mask_base(tiny_sdxl_dir, data_dir, tmp_path):
    """--use_lora --mask_channels 4: conv_in (fully trained) takes 12 input channels; `load_lora_weights` on the
    freshly converted 1-channel base gives it the same mask channels first, and draws what the merged pipeline does."""
    output_dir = tmp_path / "out"
    extra = ["--use_lora", "--lora_rank", 4, "--max_train_steps", 2, "--mask_channels", 4, "--val_fraction", 0]
    train.main(_argv(tiny_sdxl_dir, data_dir, output_dir, *extra))
    assert load_file(str(output_dir / LORA_SUBFOLDER / LORA_FULL_WEIGHTS))["conv_in.weight"].shape[1] == 12
    merged = ShadowPipeline.from_pretrained(output_dir)
    with_adapter = ShadowPipeline.from_sdxl(tiny_sdxl_dir).load_lora_weights(output_dir)
    assert merged.unet.mask_channels == with_adapter.unet.mask_channels == 4
    # unmerged adapter vs merged weights, and the mask weight split four ways: rounding apart, 1e-5 at most here
    torch.testing.assert_close(_shadow_maps(with_adapter), _shadow_maps(merged), atol=1e-4, rtol=0)
