"""What a diffusers user expects (issue #16): the run folder IS the pipeline, one flag vocabulary across scripts,
`from_pretrained` keywords, an installed package, a clean terminal, loaders that advance their epoch by themselves."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_factory import make_custom_dataset
from safetensors.torch import load_file
from training_fixtures import fresh_accelerate_state, reset_accelerate, tiny_run_argv  # noqa: F401

import dataset_loading
import hub_card
import train_shadow_sdxl as train
from dataset_loading import mirror_phi
from pipeline_shadow import ShadowPipeline, check_resolution

REPO = Path(__file__).resolve().parents[1]
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_custom_dataset(tmp_path_factory.mktemp("data"), n=8, size=32)


# ----- 1. one vocabulary ----------------------------------------------------------------------------------------

# Every command-line script (and what builds its parser); render_shadow_dataset imports without bpy.
SCRIPTS = {
    "train_shadow_sdxl.py": "parse_args",
    "evaluate_shadow.py": "parse_args",
    "generate_shadows.py": "parse_args",
    "dataset_loading.py": "main",
    "render_shadow_dataset.py": "parse_args",
    "train_vae.py": "parse_args",
    "demo.py": "parse_args",
    "app.py": "parse_args",
    "random_sdxl.py": "main",
    "benchmarks/bench_inference.py": "main",
    "benchmarks/bench_training.py": "main",
    "benchmarks/bench_memory_lean.py": "main",
    "benchmarks/bench_data_loading.py": "main",
    "benchmarks/bench_multi_light.py": "main",
    "benchmarks/bench_render.py": "main",
    "benchmarks/bench_app.py": "parse_args",
    "benchmarks/family_sheet.py": "parse_args",
    "benchmarks/vae_ceiling.py": "parse_args",
    "benchmarks/render_ground_irradiance.py": "main",
    "benchmarks/code_shape.py": "main",
    "benchmarks/compare_evals.py": "parse_args",
}
# The seed guide's spellings -> the diffusers name that must come first wherever the concept appears.
DIFFUSERS_NAMES = {
    "--data_dir": "--train_data_dir",
    "--model": "--pretrained_model_name_or_path",
    "--vae": "--pretrained_vae_model_name_or_path",
    "--image_size": "--resolution",
    "--batch_size": "--train_batch_size",
    "--num_workers": "--dataloader_num_workers",
    "--max_iterations": "--max_train_steps",
    "--train_steps": "--max_train_steps",
    "--save_every": "--checkpointing_steps",
    "--eval_every": "--validation_steps",
    "--log_every": "--logging_steps",
    "--gradient_accumulation": "--gradient_accumulation_steps",
    "--resume_from": "--resume_from_checkpoint",
}


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def _load_script(relative: str):
    path = REPO / relative
    if path.parent == REPO:
        return importlib.import_module(path.stem)
    name = f"_vocabulary_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def _parsers(monkeypatch, relative: str) -> list[argparse.ArgumentParser]:
    """The script's real parser (caught at parse_args) and its sub-command parsers."""

    def catch(self, *args, **kwargs):
        raise _Parsed(self)

    module = _load_script(relative)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(_Parsed) as caught:
        getattr(module, SCRIPTS[relative])()
    monkeypatch.undo()
    parsers, todo = [], [caught.value.parser]
    while todo:
        parser = todo.pop()
        parsers.append(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += list(action.choices.values())
    return parsers


def _option_spellings(monkeypatch) -> dict[str, dict[str, str]]:
    """spelling -> {script: the primary spelling (shown first in --help) of the option it belongs to}."""
    found: dict[str, dict[str, str]] = {}
    for relative in SCRIPTS:
        for parser in _parsers(monkeypatch, relative):
            for action in parser._actions:
                options = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
                for option in options:
                    found.setdefault(option, {})[relative] = options[0]
    return found


def test_one_concept_has_one_primary_spelling_across_every_script(monkeypatch):
    spellings = _option_spellings(monkeypatch)
    assert {"--output_dir", "--seed", "--resolution", "--pretrained_model_name_or_path"} <= set(spellings)
    conflicts = {s: p for s, p in spellings.items() if len(set(p.values())) > 1}
    assert not conflicts, f"one spelling, several primaries: {conflicts}"
    for alias, diffusers_name in DIFFUSERS_NAMES.items():
        for script, primary in spellings.get(alias, {}).items():
            assert primary == diffusers_name, f"{script}: {alias} must be an alias of {diffusers_name}"
    for name in ("--output_dir", "--seed", "--resolution", "--train_data_dir", "--dataset_name"):
        assert {spellings[name][script] for script in spellings[name]} == {name}  # always the primary


# Where the repository writes commands out for people (and for CI) to run.
COMMAND_DOCUMENTS = ["README.md", "BENCHMARKS.md", "models/shadow-small/README.md", "Makefile", ".ci/run"]
_SHELL_VARIABLE = re.compile(r"^\s*(\w+)=(\(.*\)|\".*\")\s*$")
_COMMAND_BREAK = re.compile(r"\n|;|&&|\|\||\|")


def _shell_blocks(markdown: str) -> list[str]:
    """The contents of the fenced blocks of `markdown` marked bash/sh/shell/console or not marked at all."""
    blocks, language, lines = [], None, []
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            if language is None:
                language, lines = line.strip("` \t") or "sh", []
            else:
                if language in ("bash", "sh", "shell", "console"):
                    blocks.append("\n".join(lines))
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def _shell_text(path: Path) -> str:
    """A script's or a document's shell commands: continuations joined, here-documents (Python) dropped, and the
    variables that stand for a script or a list of flags (`R="... render_shadow_dataset.py"`, `TRAIN=(... x.py)`,
    `COMMON=(--spp ...)`) written out where they are used."""
    text = path.read_text()
    if path.suffix == ".md":  # the fenced shell blocks, and inline `python x.py --flag` spans
        text = "\n".join(_shell_blocks(text) + re.findall(r"`([^`\n]*\.py [^`\n]*)`", text))
    text = re.sub(r"\\\n", " ", text)
    text = re.sub(r"<<-?\s*'?(\w+)'?.*?\n.*?\n\s*\1\n", "\n", text, flags=re.S)
    for name, value in [m.groups() for m in map(_SHELL_VARIABLE.match, text.splitlines()) if m]:
        if ".py" in value or "--" in value:
            expansion = " " + value.strip('()"') + " "
            for use in (f'"${{{name}[@]}}"', f"${{{name}[@]}}", f'"${{{name}}}"', f"${{{name}}}", f"${name} "):
                text = text.replace(use, expansion)
    return text


def _documented_commands(text: str) -> list[tuple[str, list[str]]]:
    """(script, the --flags written after it) for every command in `text` that runs one of SCRIPTS."""
    commands = []
    for command in _COMMAND_BREAK.split(text):
        tokens = command.split()
        for position, token in enumerate(tokens):
            script = next((s for s in SCRIPTS if token.strip("\"'") in (s, f"./{s}")), None)
            if script is not None:
                flags = [t.split("=")[0] for t in tokens[position + 1 :] if re.fullmatch(r"--[a-z][\w-]*(=.*)?", t)]
                commands.append((script, flags))
                break
    return commands


def test_every_flag_in_the_recipes_and_documents_is_one_the_script_accepts(monkeypatch):
    """A renamed or removed flag breaks the recipes that rebuild the shipped weights and the commands the README
    gives, long after the change; every command written in them is checked against the script's real parser."""
    options = {}
    for script in SCRIPTS:
        options[script] = {
            o for parser in _parsers(monkeypatch, script) for a in parser._actions for o in a.option_strings
        }
    files = sorted((REPO / "recipes").glob("*.sh")) + [REPO / name for name in COMMAND_DOCUMENTS]
    unknown, checked = [], 0
    for path in files:
        for script, flags in _documented_commands(_shell_text(path)):
            checked += len(flags)
            unknown += [f"{path.relative_to(REPO)}: {script} {flag}" for flag in flags if flag not in options[script]]
    assert checked > 300, f"only {checked} flags found: the command parser lost track of the documents"
    assert not unknown, "flags no script accepts:\n" + "\n".join(unknown)


def test_help_shows_the_diffusers_name_first_and_keeps_line_continuations(capsys):
    import generate_shadows

    with pytest.raises(SystemExit):
        generate_shadows.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--pretrained_model_name_or_path MODEL, --model MODEL" in out
    assert "--input cutouts/ \\\n" in out  # the usage example's continuation is kept, not collapsed


def test_checkpoints_total_limit_default_keeps_every_checkpoint(tmp_path):
    args = train.parse_args(["--output_dir", str(tmp_path)])
    assert args.checkpoints_total_limit is None
    for step in (1, 2, 3, 4, 5):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert train.rotate_checkpoints(tmp_path, args.checkpoints_total_limit) == []
    assert [p.name for p in train.rotate_checkpoints(tmp_path, 2)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


def test_output_dir_must_not_be_a_folder_with_its_own_readme(tmp_path):
    (tmp_path / "README.md").write_text("# my project")  # e.g. `--output_dir .` in a repository
    with pytest.raises(ValueError, match=r"holds a README.md but is not a training run's folder"):
        train._validate_output_dir(str(tmp_path))
    (tmp_path / train.TRAINING_CONFIG_FILE).write_text("{}")  # a run folder: its card is rewritten, fine
    train._validate_output_dir(str(tmp_path))


def test_the_default_hub_repository_is_the_run_folders_own_name(tmp_path):
    assert (
        hub_card.hub_repo_name(train.parse_args(["--output_dir", str(tmp_path / "runs" / "shadow-512")]))
        == "shadow-512"
    )
    assert hub_card.hub_repo_name(train.parse_args([])) == train.DEFAULT_OUTPUT_DIR != "checkpoints"
    assert hub_card.hub_repo_name(train.parse_args(["--hub_model_id", "me/x"])) == "me/x"


def test_push_to_hub_fails_at_start_up_before_any_model_loads(tiny_sdxl_dir, data_dir, tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 here (conftest): creating the repository cannot work, and must stop the run at once."""
    loaded = []
    monkeypatch.setattr(train, "build_models", lambda *a: loaded.append(a))  # records: must never be reached
    output_dir = tmp_path / "shadow-run"
    argv = tiny_run_argv(tiny_sdxl_dir, data_dir, output_dir, "--max_train_steps", 2, "--push_to_hub")
    with pytest.raises(train.ConfigurationError, match=r"cannot create or reach the Hub repository 'shadow-run' "):
        train.main(argv)  # the repository is named after the run folder
    assert not loaded and not list(output_dir.glob("checkpoint-*"))


# ----- 2. loading like any diffusers pipeline --------------------------------------------------------------------


def _fake_hub_cache(cache_dir: Path, repo_id: str, revisions: dict[str, Path]) -> None:
    """The Hugging Face cache layout (models--org--name/refs/<rev> -> snapshots/<commit>/...), so the Hub code paths
    (repo id, revision, cache_dir, local_files_only) run for real, offline."""
    root = cache_dir / f"models--{repo_id.replace('/', '--')}"
    for index, (revision, folder) in enumerate(revisions.items()):
        commit = f"{index + 1:040x}"
        shutil.copytree(folder, root / "snapshots" / commit)
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / revision).write_text(commit)


def test_from_pretrained_honours_revision_cache_dir_local_files_only_and_token(tiny_shadow_dir, tmp_path):
    other = tmp_path / "v2"
    pipe = ShadowPipeline.from_pretrained(tiny_shadow_dir)
    pipe.register_to_config(default_processing_resolution=48)
    pipe.save_pretrained(other)
    cache = tmp_path / "cache"
    _fake_hub_cache(cache, "me/tiny-shadow", {"main": tiny_shadow_dir, "v2": other})
    hub = {"cache_dir": cache, "local_files_only": True, "token": "hf_unused"}
    main = ShadowPipeline.from_pretrained("me/tiny-shadow", **hub)
    v2 = ShadowPipeline.from_pretrained("me/tiny-shadow", revision="v2", **hub)
    assert (main.default_resolution, v2.default_resolution) == (64, 48)
    with pytest.raises(OSError):  # honoured: nothing is cached under another cache_dir, and no download is allowed
        ShadowPipeline.from_pretrained("me/tiny-shadow", cache_dir=tmp_path / "empty", local_files_only=True)


def test_from_pretrained_honours_dtype_variant_low_cpu_mem_usage_device_map_and_overrides(tiny_shadow_dir, tmp_path):
    fp16 = ShadowPipeline.from_pretrained(tiny_shadow_dir, torch_dtype=torch.float16)
    assert fp16.unet.dtype == fp16.vae.dtype == torch.float16
    assert ShadowPipeline.from_pretrained(tiny_shadow_dir, dtype=torch.bfloat16).unet.dtype == torch.bfloat16

    variant_dir = tmp_path / "variant"  # plain weights, and an fp16 variant whose conv_in differs
    shutil.copytree(tiny_shadow_dir, variant_dir)
    with torch.no_grad():
        fp16.unet.unet.conv_in.bias.fill_(0.5)
    fp16.save_pretrained(variant_dir, variant="fp16")
    assert (variant_dir / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    bias = {v: ShadowPipeline.from_pretrained(variant_dir, variant=v).unet.unet.conv_in.bias for v in (None, "fp16")}
    assert bool((bias["fp16"] == 0.5).all()) and not bool((bias[None] == 0.5).all())
    with pytest.raises(OSError, match="fp16|variant|diffusion_pytorch_model"):
        ShadowPipeline.from_pretrained(tiny_shadow_dir, variant="fp16")  # honoured: no such files there

    reference = load_file(str(tiny_shadow_dir / UNET_WEIGHTS))
    for kwargs in ({"low_cpu_mem_usage": False}, {"low_cpu_mem_usage": True}, {"device_map": "cpu"}):
        pipe = ShadowPipeline.from_pretrained(tiny_shadow_dir, **kwargs)
        weights = {f"unet.{k}": v for k, v in pipe.unet.unet.state_dict().items()}
        assert all(torch.equal(weights[k], v) for k, v in reference.items() if k in weights), kwargs
        assert pipe.unet.device.type == "cpu"
    assert ShadowPipeline.from_pretrained(tiny_shadow_dir, device_map="cpu").unet.hf_device_map == {
        "": torch.device("cpu")
    }
    with pytest.raises(ValueError, match="balanced"):
        ShadowPipeline.from_pretrained(tiny_shadow_dir, device_map="balanced")

    vae = fp16.vae
    assert ShadowPipeline.from_pretrained(tiny_shadow_dir, vae=vae).vae is vae  # a component override
    assert ShadowPipeline.from_pretrained(tiny_shadow_dir, trust_remote_code=True).unet is not None
    with pytest.raises(ValueError, match=r"Unexpected arguments .*: tokenizer\. Accepted: torch_dtype"):
        ShadowPipeline.from_pretrained(tiny_shadow_dir, tokenizer=None)


def test_diffusers_loader_prints_no_type_warning(tiny_shadow_dir, capfd):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_shadow_dir, trust_remote_code=True)
    assert type(pipe).__name__ == "ShadowPipeline"
    assert "Expected types" not in capfd.readouterr().err


def test_examples_appear_once_in_the_call_docstring():
    doc = ShadowPipeline.__call__.__doc__
    assert doc.count("Examples:") == 1 and ">>> pipe = ShadowPipeline.from_pretrained(" in doc


def test_a_folder_with_a_pipeline_below_names_it(tiny_shadow_dir, tmp_path):
    old_run = tmp_path / "old-run"  # before the root layout, runs kept the final pipeline in final/
    shutil.copytree(tiny_shadow_dir, old_run / "final")
    shutil.copytree(tiny_shadow_dir, old_run / "best")
    with pytest.raises(ValueError, match=rf"holds no pipeline .*load {re.escape(str(old_run / 'final'))} instead"):
        ShadowPipeline.from_pretrained(old_run)
    assert ShadowPipeline.from_pretrained(old_run / "final").default_resolution == 64
    stopped = tmp_path / "stopped" / "checkpoint-4" / "unet"  # training state only
    stopped.mkdir(parents=True)
    with pytest.raises(ValueError, match=r"training checkpoint .* --resume_from_checkpoint"):
        ShadowPipeline.from_pretrained(tmp_path / "stopped")


def test_final_pipeline_is_installed_at_the_root_beside_checkpoints(tiny_shadow_dir, tmp_path):
    """The swap that puts a saved pipeline at the run folder's root keeps checkpoints and best/, and replaces a
    previous final pipeline completely (also files the new one lacks)."""
    run = tmp_path / "run"
    (run / "checkpoint-2" / "unet").mkdir(parents=True)
    shutil.copytree(tiny_shadow_dir, run / "best")
    (run / "unet_lora").mkdir()  # from an earlier final pipeline
    (run / "model_index.json").write_text("{}")
    saved = run / ".final-pipeline.tmp"
    shutil.copytree(tiny_shadow_dir, saved)
    assert train.install_pipeline_at_root(saved, run) == run
    assert not saved.exists() and not (run / "unet_lora").exists() and (run / "checkpoint-2" / "unet").is_dir()
    assert json.loads((run / "model_index.json").read_text())["unet"] == ["pipeline_shadow", "ShadowUNet"]
    assert ShadowPipeline.from_pretrained(run).default_resolution == 64


# ----- 3. one resolution rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 60, -8, 7.0, True])
def test_one_resolution_rule_for_the_pipeline_and_every_script(value, tiny_pipeline, capsys):
    import evaluate_shadow
    import generate_shadows

    with pytest.raises(ValueError, match=r"`height` must be a positive multiple of 8"):
        check_resolution(value, "height")
    with pytest.raises(ValueError, match=r"`height` must be a positive multiple of 8"):
        tiny_pipeline.encode_object(torch.rand(1, 3, 16, 16), torch.ones(1, 1, 16, 16), height=value, width=64)
    if isinstance(value, int) and not isinstance(value, bool):
        for parse, extra in (
            (generate_shadows.parse_args, ["--input", "x", "--output_dir", "o"]),
            (evaluate_shadow.parse_args, []),
        ):
            with pytest.raises(SystemExit):
                parse(["--model", "m", "--resolution", str(value), *extra])
            assert "`--resolution` must be a positive multiple of 8" in capsys.readouterr().err
    assert check_resolution(64) == 64


# ----- 4. loaders that advance their epoch ----------------------------------------------------------------------


def test_a_plain_epoch_loop_flips_each_sample_both_ways_with_the_mirrored_phi(data_dir):
    """The seed guide's loop: no set_epoch call. Over a few epochs one sample is seen in both orientations, each with
    phi mirrored as docs/design.md §2 says; the order reshuffles too, and both replay exactly for the same seed."""

    def passes(epochs):
        loader, _ = dataset_loading.create_dataloaders(
            "custom", data_dir, batch_size=4, num_workers=0, image_size=32, val_fraction=0, random_flip=True, seed=5
        )
        return [
            [(sample_id, float(phi)) for batch in loader for sample_id, phi in zip(batch["id"], batch["phi"])]
            for _ in range(epochs)
        ]

    epochs = passes(4)
    plain = dataset_loading.create_dataloaders(
        "custom", data_dir, batch_size=1, num_workers=0, image_size=32, val_fraction=0, shuffle=False
    )[0]
    true_phi = {batch["id"][0]: float(batch["phi"][0]) for batch in plain}
    sample = sorted(true_phi)[0]
    seen = {phi for epoch in epochs for sample_id, phi in epoch if sample_id == sample}
    assert seen == {true_phi[sample], float(mirror_phi(true_phi[sample]))}  # both orientations, phi mirrored
    assert [sid for sid, _ in epochs[0]] != [sid for sid, _ in epochs[1]]  # a new order each epoch
    assert passes(4) == epochs  # a pure function of (seed, epoch, index)
    loader = dataset_loading.create_dataloaders(
        "custom", data_dir, batch_size=4, num_workers=0, image_size=32, val_fraction=0, random_flip=True, seed=5
    )[0]
    dataset_loading.set_epoch(loader, 2)  # the training script's explicit call: the next pass is epoch 2
    assert [(sid, float(phi)) for batch in loader for sid, phi in zip(batch["id"], batch["phi"])] == epochs[2]


def test_an_evaluation_loader_does_not_report_a_train_split(data_dir, caplog):
    caplog.set_level("INFO", logger="dataset_loading")
    dataset_loading.create_dataloaders("custom", data_dir, batch_size=4, num_workers=0, image_size=32, val_fraction=0)
    assert "one loader, no split" in caplog.text and " train / 0 validation" not in caplog.text


# ----- 5. a clean terminal, an installed package, an ignored workspace ------------------------------------------


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": ""}


def test_every_script_help_and_the_demo_import_print_nothing_on_stderr():
    """Each in its own process, all at once (the noise came from import-time side effects). The benchmarks import
    the same modules first (their vocabulary is checked above); leaving them out here saves ~25 s of CPU."""
    scripts = [script for script in SCRIPTS if not script.startswith("benchmarks/")]
    commands = {script: [sys.executable, str(REPO / script), "--help"] for script in scripts}
    commands["import demo"] = [sys.executable, "-c", "import demo"]
    running = {
        name: subprocess.Popen(cmd, cwd=REPO, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, cmd in commands.items()
    }
    for name, process in running.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, (name, err.decode()[-2000:])
        assert err.decode() == "", f"{name} printed on stderr:\n{err.decode()[-2000:]}"
        assert name == "import demo" or b"usage:" in out


def _readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- readme-snippet: main[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its `<!-- readme-snippet: main -->` marker"
    return match.group(1)


def _installed_env(tmp_path: Path) -> dict:
    """An environment where `pipeline_shadow` is importable from any directory WITHOUT the repository on the path:
    the editable install `make setup` made (CI), else a fresh `pip install --target` of this checkout (the same
    package build, pyproject.toml's py-modules), with PYTHONPATH naming only that install folder."""
    env = _clean_env()
    probe = [sys.executable, "-c", "import pipeline_shadow; print(pipeline_shadow.__file__)"]
    where = subprocess.run(probe, cwd=tmp_path, env=env, capture_output=True, text=True)
    if where.returncode == 0 and Path(where.stdout.strip()).resolve() == REPO / "pipeline_shadow.py":
        return env
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*install, "--target", str(target), str(REPO)], check=True, capture_output=True, timeout=300)
    for build_leftover in (REPO / "build", *REPO.glob("*.egg-info")):
        shutil.rmtree(build_leftover, ignore_errors=True)
    return {**env, "PYTHONPATH": str(target)}


def test_readme_snippet_runs_from_outside_the_repository(tmp_path):
    """As a user would: another working directory, the package installed, no repository on the path, a CPU. The
    snippet names the repository's model by a relative path; here it is made absolute."""
    import PIL.Image

    env = _installed_env(tmp_path)
    snippet = _readme_snippet()
    assert '"models/shadow-small"' in snippet and "torch.cuda.is_available()" in snippet
    snippet = snippet.replace('"models/shadow-small"', repr(str(REPO / "models" / "shadow-small")))
    cutout = PIL.Image.new("RGBA", (96, 80))
    cutout.paste((200, 60, 40, 255), (30, 20, 60, 70))
    cutout.save(tmp_path / "cutout.png")
    PIL.Image.new("RGB", (96, 80), (210, 200, 190)).save(tmp_path / "beach.jpg")
    result = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-3000:]
    with PIL.Image.open(tmp_path / "shadow.png") as shadow, PIL.Image.open(tmp_path / "composite.png") as composite:
        assert shadow.size == composite.size == (96, 80) and shadow.mode == "L"


def test_pyproject_installs_every_top_level_module():
    """`pip install .` puts every importable module of the repository root on the path."""
    import tomllib

    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"])
    top_level = {p.stem for p in REPO.glob("*.py")}
    assert top_level <= declared, f"missing from py-modules: {sorted(top_level - declared)}"


def test_gitignore_covers_every_folder_the_readme_writes():
    text = (REPO / "README.md").read_text()
    written = set(re.findall(r"--output_dir[ =]([\w.-]+)", text)) | set(
        re.findall(r"make_custom_dataset\('([\w-]+)'", text)
    )
    written |= {"tiny-sdxl", "tiny-data", "tiny-run", "demo_output", train.DEFAULT_OUTPUT_DIR}
    written -= {".", ".."}
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *[f"{name}/x" for name in sorted(written)]],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    ignored = {line.split("/")[0] for line in result.stdout.split()}
    assert written <= ignored, f"not in .gitignore: {sorted(written - ignored)}"


def test_numpy_floor_matches_what_the_code_needs():
    requirements = (REPO / "requirements.txt").read_text()
    assert re.search(r"^numpy>=2", requirements, re.M)
