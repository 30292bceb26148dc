"""Shared fixtures: tiny real models built from config in the standard SDXL folder layout. Nothing touches a network."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Before diffusers / huggingface_hub / dataset_loading are imported (they read these once): every cache a test could
# fill (trust_remote_code modules, Hub and datasets caches, the latent cache) lives in a throw-away folder, never in
# the user's ~/.cache. Subprocesses (accelerate launch) inherit it.
TEST_CACHE_HOME = Path(tempfile.mkdtemp(prefix="shadow-tests-cache-"))
os.environ["HF_HOME"] = str(TEST_CACHE_HOME / "huggingface")
os.environ["HF_MODULES_CACHE"] = str(TEST_CACHE_HOME / "huggingface" / "modules")
os.environ["SHADOW_LATENT_CACHE"] = str(TEST_CACHE_HOME / "shadow_latents")
atexit.register(shutil.rmtree, TEST_CACHE_HOME, ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # shared test factories: `import data_factory`
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from pipeline_shadow import ShadowPipeline  # noqa: E402
from random_sdxl import save_random_sdxl  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised SDXL folder (WITH cross-attention and text_time conditioning)."""
    return save_random_sdxl(tmp_path_factory.mktemp("tiny-sdxl"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_shadow_dir(tiny_sdxl_dir, tmp_path_factory) -> Path:
    """The tiny SDXL converted to an (untrained) shadow pipeline and saved, at a 64 px processing resolution."""
    pipe = ShadowPipeline.from_sdxl(tiny_sdxl_dir)
    pipe.register_to_config(default_processing_resolution=64)
    output_dir = tmp_path_factory.mktemp("tiny-shadow")
    pipe.save_pretrained(output_dir)
    return output_dir


@pytest.fixture
def tiny_pipeline(tiny_shadow_dir) -> ShadowPipeline:
    """A fresh copy for each test (tests may change weights or config)."""
    return ShadowPipeline.from_pretrained(tiny_shadow_dir)
