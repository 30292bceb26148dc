# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Controllable shadow generation with a single-step rectified-flow SDXL UNet.

Self-contained (torch, diffusers, numpy, PIL only) so that it can sit next to the weights on the Hub and load with
`DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)`.

Paper: Tasar, Chadebec, Aubin, "Controllable Shadow Generation with Single-Step Diffusion Models from Synthetic Data"
(arXiv 2412.11972). This file also owns the interfaces that the data loader, the training script, the evaluation and
the renderer share (value ranges, white background, mask and shadow encoding, light input, resizing).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

# diffusers and transformers probe the optional quantization backends with `importlib.util.find_spec` and then
# import the installed ones eagerly (diffusers.quantizers.auto, transformers.quantizers.auto). The published torchao
# wheels print "Failed to load ..._C_mxfp8...so" (CUDA / cp310 extensions), torch pytree deprecation warnings and
# "Unable to import `torchao` Tensor objects" on that import: on every command, even `--help`. This pipeline never loads
# a quantized checkpoint, so diffusers is imported with those backends hidden from the probe (`find_spec` answers None
# for a name mapped to None in sys.modules); they stay importable for the code paths that need them (`--memory_lean`
# imports torchao, `--use_8bit_adam` bitsandbytes). No effect when diffusers was imported before. docs/design.md §7.
EAGERLY_IMPORTED_BACKENDS = ("torchao", "bitsandbytes")


@contextlib.contextmanager
def _eager_backends_hidden():
    hidden = (
        [] if "diffusers.quantizers" in sys.modules else [n for n in EAGERLY_IMPORTED_BACKENDS if n not in sys.modules]
    )
    for name in hidden:
        sys.modules[name] = None
    try:
        yield
    finally:
        for name in hidden:
            sys.modules.pop(name, None)


with _eager_backends_hidden():
    from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel  # noqa: E402
    from diffusers.configuration_utils import ConfigMixin, register_to_config  # noqa: E402
    from diffusers.models.attention import BasicTransformerBlock  # noqa: E402
    from diffusers.models.embeddings import Timesteps  # noqa: E402
    from diffusers.models.modeling_utils import ModelMixin  # noqa: E402
    from diffusers.utils import BaseOutput, replace_example_docstring  # noqa: E402
    from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

logger = logging.getLogger(__name__)

MODULE_NAME = "pipeline_shadow"

# --------------------------------------------------------------------------------------------------------------------
# 1. Shared interfaces (docs/design.md §8). Every other script imports these instead of re-deriving them.
# --------------------------------------------------------------------------------------------------------------------

DEFAULT_RESOLUTION = 1024
LIGHT_KEYS = ("theta", "phi", "size")  # the order of the UNet's `light` input columns
THETA_MAX_DEG = 90.0  # theta must lie in [0, 90): at 90 degrees the light is on the horizon
# Outside the paper's training grid (TRAINED_THETA_MAX_DEG, TRAINED_SIZE_RANGE below) a light is warned about.
# Beyond this the "area light" of side `size` on a sphere of radius 8 is no longer a light above the object: refused.
LIGHT_SIZE_MAX = 100.0
# The smallest processing side: 8 (the VAE) x 4 (SDXL's three UNet levels halve the latent twice), so that the deepest
# UNet level still has one latent pixel. A side must also be a multiple of 8.
MIN_PROCESSING_SIZE = 32
# The smallest input image side: one latent pixel. Smaller images (e.g. 1x1) carry no object to speak of.
MIN_IMAGE_SIDE = 8
NUM_TRAIN_TIMESTEPS = 1000  # SDXL's time embedding was trained on 0..1000 (docs/design.md §3)
LATENT_CHANNELS = 4
# The mask's channels in the UNet input: 1 = the mask area-averaged to the latent grid (the paper's design); k * k = the
# mask at k x k samples per latent cell, one channel each (`mask_to_latent`), e.g. 64 = every pixel of SDXL's 8 x 8 cell
# for shapes thinner than a cell. A UNet's own count is its `in_channels` minus the two latents' (`ShadowUNet`).
MASK_CHANNELS = 1
UNET_IN_CHANNELS = LATENT_CHANNELS + MASK_CHANNELS + LATENT_CHANNELS  # [z_t, z_m, z_o]
LIGHT_EMBEDDING_DIM = 256  # per light parameter, as SDXL's timestep embedding

# The LoRA folder that `train_shadow_sdxl.py --use_lora` writes (its `save_lora_state`; which modules it adapts is
# the training script's choice) and `ShadowPipeline.load_lora_weights` reads.
LORA_SUBFOLDER = "unet_lora"  # inside a saved pipeline folder
LORA_ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's own file name, beside its adapter_config.json
LORA_FULL_WEIGHTS = "fully_trained_modules.safetensors"
LORA_INFO = "shadow_lora.json"

# Fill values used when padding to the processing shape, in each tensor's own [0, 1] range.
OBJECT_FILL = 1.0  # white, like the background outside the mask
MASK_FILL = 0.0
SHADOW_FILL = 0.0

TimestepSampling = Literal["uniform", "logit_normal", "shifted", "single_step"]
TIMESTEP_SAMPLING_CHOICES = ("uniform", "logit_normal", "shifted", "single_step")


VAE_SCALE_FACTOR = 8  # SDXL's VAE downsamples by 8: every processing side must be a multiple of it


def check_resolution(value, name: str = "resolution") -> int:
    """The one rule for a processing size, shared by `check_inputs` (`height`, `width`), `encode_object` and every
    script's `--resolution`: an integer multiple of 8 (the VAE factor) and at least MIN_PROCESSING_SIZE (8 for the VAE
    x 4 for the UNet's down levels). Raises ValueError naming `name`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < MIN_PROCESSING_SIZE
        or value % VAE_SCALE_FACTOR
    ):
        raise ValueError(
            f"`{name}` must be a positive multiple of {VAE_SCALE_FACTOR} and >= {MIN_PROCESSING_SIZE} (8 for the VAE "
            f"x 4 for the UNet's levels), got {value!r}."
        )
    return int(value)


def check_device(value: str | None, name: str = "--device") -> torch.device:
    """The one rule for every script's `--device`: a device torch knows (cpu, cuda, cuda:1, mps, ...) that this
    machine has; None is cuda when available, else cpu. Raises ValueError naming `name`."""
    if value is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"`{name}` {value!r} is not a device: give cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ValueError(
            f"`{name}` {value}: this machine has {count} CUDA device(s) usable by torch; use --device cpu."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"`{name}` mps: Apple's MPS backend is not available here; use --device cpu.")
    return device


def wrap_phi(phi):
    """Wraps azimuths into [0, 360) degrees. Works on floats, numpy arrays and tensors (in float64 for tensors, so that
    integer degrees phi and phi + 360 give bit-identical results)."""
    if isinstance(phi, torch.Tensor):
        return torch.remainder(phi.to(torch.float64), 360.0)
    if isinstance(phi, np.ndarray):
        return np.mod(phi.astype(np.float64), 360.0)
    return float(phi) % 360.0


def light_problems(theta, phi, size, prefix: str = "") -> tuple[list[str], list[str]]:
    """(errors, warnings) for light values (numbers or sequences of numbers): errors outside the physical range
    (non-finite, theta outside [0, 90), size <= 0 or > LIGHT_SIZE_MAX), warnings outside the paper's training grid
    (theta 0..TRAINED_THETA_MAX_DEG, size in TRAINED_SIZE_RANGE), where the model extrapolates. One rule for the
    single-light arguments, `lights=`, the UNet and the scripts; `prefix` names the light (e.g. "lights[1].")."""
    errors, warnings_ = [], []
    columns = {
        name: np.atleast_1d(np.asarray(value, dtype=np.float64)) for name, value in zip(LIGHT_KEYS, (theta, phi, size))
    }
    for name, values in columns.items():
        if not np.isfinite(values).all():
            errors.append(f"`{prefix}{name}` must be a finite number, got {float(values[~np.isfinite(values)][0])}.")
    finite = {name: values[np.isfinite(values)] for name, values in columns.items()}
    bad_theta = finite["theta"][(finite["theta"] < 0.0) | (finite["theta"] >= THETA_MAX_DEG)]
    if bad_theta.size:
        errors.append(
            f"`{prefix}theta` must lie in [0, {THETA_MAX_DEG:g}) degrees (0 = light straight above), got "
            f"{bad_theta[0]:g}."
        )
    bad_size = finite["size"][(finite["size"] <= 0.0) | (finite["size"] > LIGHT_SIZE_MAX)]
    if bad_size.size:
        errors.append(f"`{prefix}size` (area-light side) must be > 0 and <= {LIGHT_SIZE_MAX:g}, got {bad_size[0]:g}.")
    for name, (low, high) in (("theta", (0.0, TRAINED_THETA_MAX_DEG)), ("size", TRAINED_SIZE_RANGE)):
        odd = finite[name][(finite[name] < low) | (finite[name] > high)]
        if odd.size and not errors:
            warnings_.append(
                f"`{prefix}{name}` = {odd[0]:g} is outside the training range [{low:g}, {high:g}]: the model "
                "extrapolates."
            )
    return errors, warnings_


def check_light(theta, phi, size, prefix: str = "", warn: bool = True) -> None:
    """Raises ValueError for a light outside the physical range and logs a warning outside the trained one."""
    errors, warnings_ = light_problems(theta, phi, size, prefix)
    if errors:
        raise ValueError(" ".join(errors))
    for message in warnings_ if warn else ():
        logger.warning(message)


def check_image_extent(height: int, width: int, name: str) -> None:
    """Refuses an image smaller than one latent pixel (MIN_IMAGE_SIDE) on a side, e.g. 0x0 or 1x1."""
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"{name} is {width}x{height} (W x H): every side must be at least {MIN_IMAGE_SIDE} pixels (one latent "
            "pixel)."
        )


def _check_not_empty(height: int, width: int, name: str) -> None:
    """A background is only resized, never encoded: any size will do but none."""
    if min(height, width) < 1:
        raise ValueError(f"{name} is {width}x{height} (W x H): it must have at least one pixel.")


def _check_finite(tensor: torch.Tensor, name: str, what: str = "pixel values") -> None:
    if tensor.numel() and not bool(torch.isfinite(tensor).all()):
        count = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"`{name}` has {count} non-finite values (NaN or Inf); {what} must be finite.")


# Integer pixel types read as 8 or 16 bits (numpy arrays and torch tensors alike, e.g. torchvision's uint8 `read_image`);
# other integer types and bool are read as they are (0 / 1) and floats too, in [0, 1].
_INTEGER_PIXEL_SCALES = {"uint8": 255.0, "uint16": 65535.0}
PIXEL_DTYPE_RULE = "uint8 (0..255), uint16 (0..65535), or bool / other integers / floats with values in [0, 1]"


def _pixel_array(image, name: str) -> torch.Tensor:
    """A numpy array or a torch tensor of pixels -> a float32 CPU tensor of the same shape in the image's own scale:
    uint8 / 255, uint16 / 65535, anything else as it is. Complex, object and string types are refused, and another
    integer type outside 0..1 (an int64 array of 0..255) is named as such, not as a float out of range."""
    is_tensor = isinstance(image, torch.Tensor)
    dtype = str(image.dtype).removeprefix("torch.")
    if is_tensor and image.is_meta:
        raise ValueError(f"`{name}` is a meta tensor (no data): move it to a real device first.")
    if is_tensor:
        real = not (image.is_complex() or dtype.startswith(("quint", "qint")))
    else:
        real = image.dtype.kind in "biuf"  # bool, signed / unsigned integer, float
    if not real:
        raise ValueError(f"`{name}` has dtype {dtype}, which is not a pixel type: give {PIXEL_DTYPE_RULE}.")
    scale = _INTEGER_PIXEL_SCALES.get(dtype, 1.0)
    if is_tensor:
        tensor = image.detach().to("cpu", torch.float32) / scale
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / scale)
    integer = (not image.is_floating_point()) if is_tensor else image.dtype.kind in "iu"
    if integer and dtype not in _INTEGER_PIXEL_SCALES and tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
        raise ValueError(
            f"`{name}` is {dtype} with values in [{tensor.min():.0f}, {tensor.max():.0f}]: give {PIXEL_DTYPE_RULE} "
            "(e.g. `.astype(np.uint8)` for 0..255)."
        )
    return tensor


# PIL modes read as gray without conversion; the high-precision ones keep their bit depth (16-bit PNG, float TIFF).
HIGH_PRECISION_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
GRAY_MODES = ("1", "L", *HIGH_PRECISION_GRAY_MODES)
GRAY_CHANNEL_TOLERANCE = 2  # in 1/255 steps: RGB channels this close count as gray (JPEG noise)
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def _convert(image: PIL.Image.Image, mode: str, name: str) -> PIL.Image.Image:
    try:
        return image.convert(mode)
    except ValueError as error:  # e.g. premultiplied La / RGBa, which PIL cannot convert
        raise ValueError(f"`{name}` has image mode {image.mode}, which cannot be read as {mode}: {error}.") from None


def _gray_array(image: PIL.Image.Image) -> np.ndarray:
    """A gray-mode PIL image -> HxW float32 in its own scale: 8-bit / 255, 16- and 32-bit integer / 65535, float as is
    (range-checked by the caller)."""
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return np.asarray(image, dtype=np.float32) / 65535.0


def not_gray_reason(image: PIL.Image.Image | np.ndarray) -> str | None:
    """Why a mask / shadow map is not a gray image (coloured, transparent, an odd mode), or None. RGB with equal
    channels counts as gray. One rule for the data checks, the loader and the pipeline."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
            return None
        if image.ndim == 3 and image.shape[2] == 3:
            spread = float(np.max(image.max(axis=2).astype(np.float64) - image.min(axis=2)))
            scale = 1.0 if image.dtype == np.uint8 else 255.0
            return None if spread * scale <= GRAY_CHANNEL_TOLERANCE else "is colored (its RGB channels differ)"
        return f"has shape {image.shape}, not a gray image (HxW)"
    mode = image.mode
    if mode in GRAY_MODES:
        return None
    if mode not in ("RGB", "P", *_ALPHA_MODES):
        return f"has image mode {mode}, which is not a gray image (save it as L, or I;16 for 16 bits)"
    if mode in ("La", "RGBa"):
        return f"has premultiplied-alpha mode {mode}, which is not a gray image"
    rgba = np.asarray(image.convert("RGBA"))
    if mode != "RGB" and int(rgba[..., 3].min()) < 255:
        return (
            f"has transparency (alpha down to {int(rgba[..., 3].min())}/255); save it as an opaque gray image "
            "(the value, not the alpha, is read)"
        )
    if mode == "LA":
        return None
    spread = int((rgba[..., :3].max(axis=2).astype(np.int16) - rgba[..., :3].min(axis=2)).max())
    if spread > GRAY_CHANNEL_TOLERANCE:
        return f"is colored (its RGB channels differ by up to {spread}/255); it must be a gray image"
    return None


def image_to_tensor(image, name: str = "object_image") -> torch.Tensor:
    """One image (PIL, numpy HWC or a torch [C,H,W]: uint8 0..255, uint16, or float in [0, 1]) -> [C,H,W] float32
    in [0, 1] with C = 3 (RGB) or 4 (RGBA; the alpha channel is kept so the caller can use it as the mask)."""
    if isinstance(image, PIL.Image.Image):
        if image.mode in HIGH_PRECISION_GRAY_MODES:  # 16/32-bit or float gray: PIL's RGB conversion would clip it
            gray = _gray_array(image)
            array = np.repeat(gray[:, :, None], 3, axis=2)
        else:
            has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
            array = np.asarray(_convert(image, "RGBA" if has_alpha else "RGB", name), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(np.array(array, dtype=np.float32)).permute(2, 0, 1)
        _check_finite(tensor, name)
        if tensor.numel() and (tensor.min() < 0.0 or tensor.max() > 1.0):
            raise ValueError(f"`{name}` values must lie in [0, 1], got [{tensor.min():.3g}, {tensor.max():.3g}].")
        return tensor
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"`{name}` as a numpy array must be HxWx3 or HxWx4, got shape {tuple(image.shape)}.")
        tensor = _pixel_array(image, name).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (3, 4):
            raise ValueError(
                f"`{name}` as a tensor must be [3,H,W] or [B,3,H,W] (4 channels for RGBA), got {tuple(image.shape)}."
            )
        tensor = _pixel_array(image, name)
    else:
        raise ValueError(f"`{name}` must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}.")
    _check_finite(tensor, name)
    if tensor.numel() and (tensor.min() < 0.0 or tensor.max() > 1.0):
        raise ValueError(
            f"`{name}` float values must lie in [0, 1] (uint8 arrays/tensors are read as 0..255), got "
            f"[{tensor.min():.3g}, {tensor.max():.3g}]."
        )
    return tensor


def gray_to_tensor(image, name: str = "mask") -> torch.Tensor:
    """A gray map (mask or shadow map: PIL, numpy HW/HW1 uint8 or float in [0, 1], torch [H,W]/[1,H,W]) -> [1,H,W]
    float32 in [0, 1]. 16-bit PNGs (mode I;16) keep their precision."""
    if isinstance(image, PIL.Image.Image):
        reason = not_gray_reason(image)
        if reason is not None:
            raise ValueError(f"`{name}` {reason}.")
        if image.mode in GRAY_MODES:
            array = _gray_array(image)
        else:  # RGB / P / opaque alpha modes whose channels are equal (checked above)
            array = np.asarray(_convert(image, "L", name), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(np.array(array, dtype=np.float32))[None]  # a writable copy
    elif isinstance(image, np.ndarray):
        array = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
        if array.ndim != 2:
            raise ValueError(f"`{name}` as a numpy array must be HxW (gray), got shape {tuple(image.shape)}.")
        tensor = _pixel_array(array, name)[None]
    elif isinstance(image, torch.Tensor):
        tensor = _pixel_array(image, name)
        tensor = tensor[None] if tensor.ndim == 2 else tensor
        if tensor.ndim != 3 or tensor.shape[0] != 1:
            raise ValueError(f"`{name}` as a tensor must be [H,W], [1,H,W] or [B,1,H,W], got {tuple(image.shape)}.")
    else:
        raise ValueError(f"`{name}` must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}.")
    _check_finite(tensor, name)
    if tensor.numel() and (tensor.min() < 0.0 or tensor.max() > 1.0):
        raise ValueError(f"`{name}` values must lie in [0, 1], got [{tensor.min():.3g}, {tensor.max():.3g}].")
    return tensor


def binarize_mask(mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Where a binary mask is required (metrics, estimators): 1 where mask >= threshold."""
    return (mask >= threshold).to(mask.dtype)


def prepare_object_image(object_image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] RGB in [0, 1] + [B,1,H,W] mask -> the VAE input: [-1, 1] with every pixel outside the (soft) mask
    blended to WHITE (docs/design.md §8), so that no rendered shadow or background leaks into the object latent."""
    white = torch.ones_like(object_image)
    return (object_image * mask + white * (1.0 - mask)) * 2.0 - 1.0


@dataclass(frozen=True)
class PadBox:
    """Where the resized content sits inside the padded canvas, to undo `resize_and_pad`."""

    top: int
    left: int
    height: int
    width: int


def fit_within(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int]:
    """The largest (h, w) with the aspect ratio of (height, width) that fits in the target; never squashes."""
    scale = min(target_height / height, target_width / width)
    return max(1, min(target_height, round(height * scale))), max(1, min(target_width, round(width * scale)))


def resize_and_pad(tensor: torch.Tensor, target_hw: tuple[int, int], fill: float) -> tuple[torch.Tensor, PadBox]:
    """Resizes [B,C,H,W] (or [C,H,W]) so its long side fits the target, keeping the aspect ratio, and pads the rest
    with `fill`, centred (docs/design.md §8). The same call serves images, masks and shadow maps."""
    squeeze = tensor.ndim == 3
    batch = tensor[None] if squeeze else tensor
    height, width = batch.shape[-2:]
    target_height, target_width = target_hw
    new_height, new_width = fit_within(height, width, target_height, target_width)
    if (new_height, new_width) != (height, width):
        batch = F.interpolate(batch, size=(new_height, new_width), mode="bilinear", antialias=True, align_corners=False)
    top, left = (target_height - new_height) // 2, (target_width - new_width) // 2
    if (new_height, new_width) != (target_height, target_width):
        padding = (left, target_width - new_width - left, top, target_height - new_height - top)
        batch = F.pad(batch, padding, mode="constant", value=fill)
    box = PadBox(top, left, new_height, new_width)
    return (batch[0] if squeeze else batch), box


def unpad_and_resize(tensor: torch.Tensor, box: PadBox, size_hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of `resize_and_pad`: crops the content box out of [B,C,H,W] and resizes it back to `size_hw`."""
    cropped = tensor[..., box.top : box.top + box.height, box.left : box.left + box.width]
    if tuple(cropped.shape[-2:]) == tuple(size_hw):
        return cropped
    return F.interpolate(cropped, size=size_hw, mode="bilinear", antialias=True, align_corners=False)


def preprocess_object(
    rgb: torch.Tensor, mask: torch.Tensor, target_hw: tuple[int, int], binarize: bool = True
) -> tuple[torch.Tensor, torch.Tensor, PadBox]:
    """The one object preprocessing shared by training data and inference: [3,H,W] RGB in [0, 1] + [1,H,W] mask ->
    ([3,h,w] VAE input in [-1, 1], [1,h,w] mask, PadBox) at `target_hw`.

    The mask is binarised at 0.5 (as the training data is), the object is whitened at the SOURCE size so that resizing
    blends its edges with white rather than with whatever background it had, then resized and padded (aspect kept),
    and finally everything outside the resized mask is made exactly white (docs/design.md §8)."""
    if binarize:
        mask = binarize_mask(mask)
    whitened = torch.addcmul(1.0 - mask, rgb, mask)  # rgb * mask + white * (1 - mask)
    whitened, box = resize_and_pad(whitened, target_hw, OBJECT_FILL)
    resized_mask, _ = resize_and_pad(mask, target_hw, MASK_FILL)
    resized_mask = resized_mask.clamp(0.0, 1.0)
    object_image = prepare_object_image(whitened.clamp(0.0, 1.0)[None], resized_mask[None])[0]
    return object_image, resized_mask, box


def input_mask_channels(in_channels: int) -> int:
    """The mask's channels in a shadow UNet input of `in_channels` channels: [z_t, z_m, z_o] less the two latents."""
    return in_channels - 2 * LATENT_CHANNELS


def mask_samples_per_side(mask_channels: int, name: str | None = None) -> int:
    """k for a mask of k * k channels (`MASK_CHANNELS`): the one rule for a mask's channel count, shared by the UNet,
    `mask_to_latent`, the latent cache and every script's `--mask_channels`. Raises ValueError naming the allowed
    counts (and `name`, the flag or argument, when given) otherwise."""
    side = math.isqrt(max(int(mask_channels), 0))
    if side < 1 or side * side != mask_channels:
        raise ValueError(
            ("" if name is None else f"`{name}`: ")
            + f"A shadow UNet's mask must have a square number of channels (1 = area-averaged, 4, 16, 64 = 8 x 8 "
            f"samples per latent cell, ...): its in_channels minus {2 * LATENT_CHANNELS}; got {mask_channels}."
        )
    return side


def mask_to_latent(mask: torch.Tensor, latent_hw: tuple[int, int], channels: int = MASK_CHANNELS) -> torch.Tensor:
    """[B,1,H,W] mask -> [B,channels,h,w], kept in [0, 1] (not rescaled to [-1, 1]): area-averaged to k x k samples per
    latent cell (channels = k * k), each sample one channel (pixel-unshuffled, row-major within the cell). The mean
    over the channels is the area-averaged mask of channels = 1, whatever k is."""
    side = mask_samples_per_side(channels)
    height, width = latent_hw
    samples = F.interpolate(mask, size=(height * side, width * side), mode="area")
    return F.pixel_unshuffle(samples, side) if side > 1 else samples


def flip_mask_latent(mask_latent: torch.Tensor) -> torch.Tensor:
    """The `mask_to_latent` of the horizontally flipped mask, from the unflipped one's [B,k*k,h,w] (or [k*k,h,w]):
    the cells flip and so do the samples inside each cell."""
    side = mask_samples_per_side(mask_latent.shape[-3])
    if side == 1:
        return torch.flip(mask_latent, dims=[-1])
    return F.pixel_unshuffle(torch.flip(F.pixel_shuffle(mask_latent, side), dims=[-1]), side)


def shadow_to_vae_input(shadow_map: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] shadow map in [0, 1] -> [B,3,H,W] in [-1, 1], the form the VAE encodes as the training target."""
    return (shadow_map * 2.0 - 1.0).expand(-1, 3, -1, -1)


def vae_output_to_shadow(decoded: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] VAE decoder output in [-1, 1] -> [B,1,H,W] shadow map in [0, 1] (channel mean, docs/design.md §8)."""
    return ((decoded.mean(dim=1, keepdim=True) + 1.0) / 2.0).clamp(0.0, 1.0)


def soft_iou_distance(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample 1 - soft IoU (sum min / sum max, docs/design.md §8) of [B,1,H,W] shadow maps in [0, 1] -> [B].
    A pair of empty maps is at distance 0. Differentiable: unlike a per-pixel loss it weighs a faint thin shadow (a
    pole's, a slat's) by its share of the shadow, not by its share of the image."""
    union = torch.maximum(prediction, target).sum(dim=(-3, -2, -1))
    intersection = torch.minimum(prediction, target).sum(dim=(-3, -2, -1))
    return torch.where(union > 1e-6, 1 - intersection / union.clamp_min(1e-6), torch.zeros_like(union))


def clear_under_object(shadow_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[...,1,H,W] shadow map, same-size mask -> the map with zeros where the (binarised) mask covers the object.

    A shadow map is zero inside the object's mask by definition (docs/design.md §8; the object hides that ground in any
    composite), so whatever the decoder spills onto the object is cleared rather than reported as shadow."""
    return shadow_map * (1.0 - binarize_mask(mask))


def _execution_device(model: torch.nn.Module) -> torch.device:
    """Where `model` computes: its parameters' device, or the accelerator its offload hook moves it to on call
    (`enable_model_cpu_offload` keeps it on the CPU in between)."""
    hook = getattr(model, "_hf_hook", None)
    return getattr(hook, "execution_device", None) or model.device


def encode_latents(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Deterministic latents: the posterior mean, shifted and scaled like diffusers' SD/SDXL pipelines."""
    latents = vae.encode(images.to(_execution_device(vae), vae.dtype)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def unscale_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """The inverse of encode_latents' shift and scale: what `vae.decode` takes."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return latents / vae.config.scaling_factor + shift


def decode_shadow(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> [B,1,H,W] shadow map in [0, 1]."""
    decoded = vae.decode(unscale_latents(vae, latents.to(_execution_device(vae), vae.dtype))).sample
    return vae_output_to_shadow(decoded.float())


# --------------------------------------------------------------------------------------------------------------------
# 1b. Several lights (docs/design.md §2, §8): the shadow map is defined in irradiance, so the map of several lights is
#     the irradiance-weighted mean of the single-light maps. Small pure functions; numpy only.
# --------------------------------------------------------------------------------------------------------------------

LIGHT_DISTANCE = 8.0  # radius r of the light sphere of the training data (docs/design.md §2)
TRAINED_THETA_MAX_DEG = 45.0  # the paper's data draws theta from 0..45 degrees
TRAINED_SIZE_RANGE = (2.0, 8.0)  # and the light's side from 2..8


@dataclass(frozen=True)
class Light:
    """One square area light of the training geometry: polar angle `theta` (degrees from +z), azimuth `phi` (degrees
    from +x, image right), side `size`, and `power`, its TOTAL emitted power relative to the other lights.

    "Power" is total power, as Blender's area-light "Power" (watts) that the renderer sets: a bigger light of the same
    power is dimmer per unit area (radiance = power / (pi x size^2)), so changing `size` softens a light without
    changing how much it weighs against the others. Only ratios of powers matter."""

    theta: float
    phi: float = 0.0
    size: float = 2.0
    power: float = 1.0

    @classmethod
    def from_any(cls, value, name: str = "light") -> Light:
        """A `Light`, a dict with keys theta, phi, size (optional power) or a (theta, phi, size[, power]) sequence."""
        if isinstance(value, Light):
            fields = value.as_dict()
        elif isinstance(value, dict):
            unknown = sorted(set(value) - {"theta", "phi", "size", "power"})
            if unknown or "theta" not in value:
                raise ValueError(
                    f"`{name}` {value!r}: a light dict takes keys theta (required), phi, size, power; "
                    f"{'unknown ' + ', '.join(unknown) if unknown else 'theta is missing'}."
                )
            fields = {k: value[k] for k in ("theta", "phi", "size", "power") if k in value}
        elif isinstance(value, (list, tuple)) and len(value) in (3, 4):
            fields = dict(zip(("theta", "phi", "size", "power"), value))
        else:
            raise ValueError(
                f"`{name}` must be a Light, a dict {{theta, phi, size[, power]}} or a (theta, phi, size[, power]) "
                f"sequence, got {value!r}."
            )
        for key, number in fields.items():
            if isinstance(number, bool) or not isinstance(number, (int, float, np.integer, np.floating)):
                raise ValueError(f"`{name}.{key}` must be a number, got {number!r}.")
            if not math.isfinite(float(number)):
                raise ValueError(f"`{name}.{key}` must be finite, got {number!r}.")
        return cls(**{k: float(v) for k, v in fields.items()})

    def as_dict(self) -> dict:
        return {"theta": self.theta, "phi": self.phi, "size": self.size, "power": self.power}


def square_light_corners(theta_deg: float, phi_deg: float, size: float, distance: float = LIGHT_DISTANCE):
    """[4,3] world corners, in order around the square, of the area light facing the origin, as the renderer places
    it (its local x along the azimuthal tangent (-sin phi, cos phi, 0), local z from the origin to its centre)."""
    theta, phi = math.radians(theta_deg), math.radians(float(phi_deg) % 360.0)
    centre_dir = np.array([math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta)])
    x_axis = np.array([-math.sin(phi), math.cos(phi), 0.0])
    y_axis = np.cross(centre_dir, x_axis)
    half = size / 2.0
    centre = distance * centre_dir
    return np.array(
        [centre + sx * half * x_axis + sy * half * y_axis for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    )


def area_light_irradiance(points, light: Light, distance: float = LIGHT_DISTANCE) -> np.ndarray:
    """Exact unoccluded irradiance on the ground (normal +z) at world `points` [N,3] (or [3]) from `light`, a
    one-sided Lambertian square of total power `light.power` (radiance L = power / (pi size^2)) facing the origin.

    Lambert's polygon formula: E = (L / 2) x sum over the square's edges of beta_k (n . gamma_k), with beta_k the angle
    the edge subtends at the point and gamma_k the unit normal of the plane through the point and the edge. Needs the
    whole square above the ground (true for theta <= 45 and size <= 8 at r = 8) and the point in front of it."""
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    corners = square_light_corners(light.theta, light.phi, light.size, distance)
    if corners[:, 2].min() <= 0:
        raise ValueError(f"{light}: part of the square light is below the ground; its irradiance is not modelled.")
    to_corners = corners[None] - points[:, None]  # [N,4,3]
    unit = to_corners / np.linalg.norm(to_corners, axis=-1, keepdims=True)
    total = np.zeros(len(points))
    for k in range(4):
        a, b = unit[:, k], unit[:, (k + 1) % 4]
        beta = np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0))
        gamma = np.cross(a, b)
        gamma /= np.maximum(np.linalg.norm(gamma, axis=-1, keepdims=True), 1e-300)
        total += beta * gamma[:, 2]  # n = +z
    centre = corners.mean(axis=0)
    in_front = (points - centre) @ (-centre / np.linalg.norm(centre)) > 0  # the square emits toward the origin only
    radiance = light.power / (math.pi * light.size**2)
    return np.where(in_front, radiance / 2.0 * np.abs(total), 0.0)


def point_light_irradiance(light: Light, distance: float = LIGHT_DISTANCE) -> float:
    """The far-field approximation of `area_light_irradiance` at the origin: E = power x cos(theta) / (pi r^2) (the
    light faces the origin, so its own emission cosine is 1; cos(theta) is the ground's receiver cosine)."""
    return light.power * math.cos(math.radians(light.theta)) / (math.pi * distance**2)


def light_weights(lights: Sequence[Light], distance: float = LIGHT_DISTANCE) -> np.ndarray:
    """[K] each light's exact unoccluded irradiance E_i at the object's foot (the origin)."""
    origin = np.zeros((1, 3))
    return np.array([area_light_irradiance(origin, light, distance)[0] for light in lights])


def shadow_centre(light: Light, object_height: float, distance: float = LIGHT_DISTANCE) -> np.ndarray:
    """[3] where the middle of the object's shadow under `light` falls on the ground: half way from the foot to the
    shadow of the object's top (a pole of `object_height` under a point light at the light's centre)."""
    theta = math.radians(light.theta)
    height = min(object_height, 0.9 * distance * math.cos(theta))  # the light stays above the top
    reach = height * distance * math.sin(theta) / (distance * math.cos(theta) - height)
    away = math.radians(light.phi + 180.0)
    return np.array([0.5 * reach * math.cos(away), 0.5 * reach * math.sin(away), 0.0])


OBJECT_LARGEST_SIDE = 2.0  # the renderer rescales every object so that its largest bounding-box side is 2.0


def estimate_object_height(mask) -> float:
    """The object's height in the training data's units, from its mask ([H,W] or [1,H,W], numpy or torch): the
    largest side is 2.0 (docs/design.md §8), so height = 2.0 x min(1, mask rows / mask columns). Rough (the camera's
    elevation and the object's depth also shape the mask), but enough for `light_coefficients`. 0 for an empty mask."""
    mask = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.float32)
    mask = mask.reshape(mask.shape[-2:]) >= 0.5
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(rows) == 0:
        return 0.0
    aspect = (rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1)
    return OBJECT_LARGEST_SIDE * min(1.0, float(aspect))


def light_coefficients(
    lights: Sequence[Light], object_height: float = 0.0, distance: float = LIGHT_DISTANCE
) -> np.ndarray:
    """[K] composition coefficients c_i of s = sum_i c_i s_i, the map of several lights together.

    Exactly, at each ground point p, c_i(p) = E_i(p) / sum_j E_j(p) (1 - E_with / E_without of all lights, with
    E_i the unoccluded irradiance of light i; docs/design.md §8). The pixel's ground point is unknown at inference, and
    E_i(p) varies by +-40 % over a shadow at r = 8, so each c_i is taken where light i's own shadow lies: c_i =
    E_i(q_i) / sum_j E_j(q_i) at q_i = `shadow_centre(light_i, object_height)`. `object_height` 0 puts every q_i at
    the foot (c_i = E_i(0) / sum_j E_j(0), summing to 1). In the training data the object's largest side is 2.0."""
    if not lights:
        raise ValueError("`lights` is empty: give at least one light.")
    if object_height < 0:
        raise ValueError(f"`object_height` must be >= 0, got {object_height}.")
    coefficients = []
    for light in lights:
        centre = shadow_centre(light, object_height, distance)[None]
        irradiance = np.array([area_light_irradiance(centre, other, distance)[0] for other in lights])
        if irradiance.sum() <= 0:
            raise ValueError(f"The lights {list(lights)} give no light where the shadow of {light} falls.")
        coefficients.append(irradiance[len(coefficients)] / irradiance.sum())
    return np.array(coefficients)


def irradiance_fractions(irradiance):
    """Per-pixel exact coefficients from [K, ...] unoccluded irradiance maps: E_i / sum_j E_j (for renderer data, where
    each pixel's ground point is known)."""
    total = irradiance.sum(0)
    if (irradiance < 0).any() or not (total > 0).all():
        raise ValueError("Irradiance maps must be >= 0 with a positive sum at every pixel.")
    return irradiance / total


def check_ambient(ambient) -> float:
    """`ambient`, the unshadowed fraction of the irradiance: a number in [0, 1) (NaN and non-numbers refused)."""
    if (
        isinstance(ambient, bool)
        or not isinstance(ambient, (int, float, np.integer, np.floating))
        or not 0.0 <= ambient < 1.0
    ):
        raise ValueError(f"`ambient` (the unshadowed fraction of the irradiance) must lie in [0, 1), got {ambient!r}.")
    return float(ambient)


def check_intensity(intensity, name: str = "intensity") -> None:
    """Shadow strength(s) for compositing: finite numbers >= 0 (NaN would pass a `< 0` check and write garbage)."""
    values = intensity.detach().cpu().numpy() if isinstance(intensity, torch.Tensor) else intensity
    try:
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if intensity is None or values is None or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"`{name}` must be >= 0 and finite (one number, or one per image), got {intensity!r}.")


def compose_light_maps(shadow_maps, coefficients, ambient: float = 0.0):
    """The shadow map of several lights together, s = (1 - ambient) x clamp(sum_i c_i s_i, 0, 1), from K single-light
    maps [K, ...] (numpy or torch) and coefficients [K] (`light_coefficients`) or [K, ...] per pixel
    (`irradiance_fractions`). `ambient` in [0, 1) is the fraction of the ground's irradiance that casts no shadow the
    model can draw (e.g. a low sky, see `lights_from_environment`): it only lightens the shadow."""
    check_ambient(ambient)
    is_torch = isinstance(shadow_maps, torch.Tensor)
    maps = shadow_maps if is_torch else np.asarray(shadow_maps, dtype=np.float64)
    if is_torch:
        coefficients = torch.as_tensor(np.asarray(coefficients), dtype=maps.dtype, device=maps.device)
    else:
        coefficients = np.asarray(coefficients, dtype=np.float64)
    if coefficients.ndim == 1:
        if len(coefficients) != maps.shape[0]:
            raise ValueError(f"{len(coefficients)} coefficients for {maps.shape[0]} light maps.")
        coefficients = coefficients.reshape(-1, *([1] * (maps.ndim - 1)))
    if (coefficients < 0).any():
        raise ValueError("Light coefficients must be >= 0.")
    composed = (coefficients * maps).sum(0)
    composed = composed.clamp(0.0, 1.0) if is_torch else np.clip(composed, 0.0, 1.0)
    return (1.0 - ambient) * composed


# Environment maps -> area lights. Equirectangular convention (Blender's world mapping, docs/design.md §2): row 0 is
# the zenith, the bottom row the nadir (theta = 180 (row + 0.5) / H); the CENTRE column looks along +x (phi = 0, the
# image's right in the training camera) and phi grows to the LEFT: phi = 180 - 360 (col + 0.5) / W (mod 360), so
# the column at 1/4 of the width looks along +y (phi = 90, behind the object) and 3/4 along -y (toward the camera).
ENVIRONMENT_MAX_SIDE = 256  # maps are box-averaged down to at most 128 x 256 before clustering
LOW_SKY_CHOICES = ("ambient", "clamp")
_HDR_SUFFIXES = (".hdr", ".exr", ".pfm")


@dataclass
class EnvironmentLighting:
    """What `lights_from_environment` found: `lights` for `pipe(..., lights=...)` and `ambient`, the fraction of the
    ground's irradiance that they do not carry (sky lower than the model's 45 degrees, small clusters), for
    `pipe(..., ambient=...)`."""

    lights: list[Light]
    ambient: float


def equirect_directions(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(theta [H], phi [W]) in degrees of the pixel centres of an equirectangular map (convention above)."""
    theta = 180.0 * (np.arange(height) + 0.5) / height
    phi = np.mod(180.0 - 360.0 * (np.arange(width) + 0.5) / width, 360.0)
    return theta, phi


def _srgb_to_linear(values: np.ndarray) -> np.ndarray:
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


def load_environment(image) -> np.ndarray:
    """An environment map -> [H,W,3] float64 linear radiance. Accepts a file path (PNG/JPEG/... through PIL, sRGB
    decoded; .hdr/.exr/.pfm through OpenCV or imageio when one is installed), a PIL image (sRGB), a uint8 array (sRGB)
    or a float array (linear radiance, e.g. from your own HDR reader). 8-bit maps clip the sun: its energy is too low."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            what = "is not a regular file" if path.exists() else "does not exist"
            raise ValueError(f"Environment map {path} {what}.")
        if path.suffix.lower() in _HDR_SUFFIXES:
            return _read_hdr(path)
        try:
            with PIL.Image.open(path) as opened:
                return load_environment(opened.convert("RGB"))
        except (OSError, SyntaxError, PIL.Image.DecompressionBombError) as error:  # not an image, truncated, too big
            raise ValueError(
                f"Environment map {path} is not a readable image ({type(error).__name__}: {error}); give a PNG/JPEG, "
                f"or {'/'.join(_HDR_SUFFIXES)} with OpenCV or imageio installed."
            ) from None
    if isinstance(image, PIL.Image.Image):
        return _srgb_to_linear(np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0)
    if isinstance(image, np.ndarray):
        array = image[..., None].repeat(3, axis=-1) if image.ndim == 2 else image
        if array.ndim != 3 or array.shape[2] < 3:
            raise ValueError(f"An environment array must be HxW or HxWx3, got shape {tuple(image.shape)}.")
        if array.dtype == np.uint8:
            return _srgb_to_linear(array[..., :3].astype(np.float64) / 255.0)
        radiance = array[..., :3].astype(np.float64)
        if not np.isfinite(radiance).all() or (radiance < 0).any():
            raise ValueError("A float environment array must hold finite linear radiance >= 0.")
        return radiance
    raise ValueError(f"The environment must be a path, a PIL image or a numpy array, got {type(image).__name__}.")


def _read_hdr(path: Path) -> np.ndarray:
    """HDR/EXR through a reader that is already installed; this project adds no dependency for it."""
    try:
        import cv2

        if path.suffix.lower() == ".exr":
            os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
        bgr = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR)
        if bgr is not None:
            return bgr[..., ::-1].astype(np.float64)
    except ImportError:
        pass
    try:
        import imageio.v3 as iio

        return load_environment(np.asarray(iio.imread(path), dtype=np.float64))
    except ImportError:
        pass
    raise ValueError(
        f"Cannot read {path}: HDR/EXR maps need OpenCV (`pip install opencv-python-headless`) or imageio with an HDR "
        "plugin, neither of which is installed; or read it yourself and pass a float HxWx3 array of linear radiance."
    )


def _box_downsample(values: np.ndarray, max_width: int) -> np.ndarray:
    """Averages [H,W] down by an integer factor so that the width is at most `max_width` (energy-preserving)."""
    factor = max(1, math.ceil(values.shape[1] / max_width))
    height, width = values.shape[0] // factor * factor, values.shape[1] // factor * factor
    if factor == 1:
        return values
    return values[:height, :width].reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))


def _unit_vectors(theta_deg: np.ndarray, phi_deg: np.ndarray) -> np.ndarray:
    theta, phi = np.radians(theta_deg), np.radians(phi_deg)
    return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], axis=-1)


def _weighted_spherical_kmeans(directions: np.ndarray, energy: np.ndarray, k: int, iterations: int = 25):
    """Clusters unit vectors [N,3] weighted by `energy` [N]; deterministic (farthest-point start from the brightest
    pixel). Returns each pixel's cluster index [N] and the centres [k',3] (k' <= k: empty clusters are dropped)."""
    centres = [directions[np.argmax(energy)]]
    for _ in range(1, k):
        nearest = np.max(directions @ np.array(centres).T, axis=1)
        score = energy * (1.0 - nearest)
        if score.max() <= 0:
            break  # no energy left outside the centres: fewer clusters
        centres.append(directions[np.argmax(score)])
    centres = np.array(centres)
    for _ in range(iterations):
        labels = np.argmax(directions @ centres.T, axis=1)
        sums = np.stack([(energy[labels == c, None] * directions[labels == c]).sum(0) for c in range(len(centres))])
        keep = np.linalg.norm(sums, axis=1) > 0
        updated = sums[keep] / np.linalg.norm(sums[keep], axis=1, keepdims=True)
        if updated.shape == centres.shape and np.allclose(updated, centres):
            break
        centres = updated
    return np.argmax(directions @ centres.T, axis=1), centres


def _cluster_stats(directions, energy, members):
    """(energy-weighted mean direction, RMS angle from it in radians, energy) of the pixels in `members`."""
    weights = energy[members]
    mean = (weights[:, None] * directions[members]).sum(0)
    mean /= np.linalg.norm(mean)
    angles = np.arccos(np.clip(directions[members] @ mean, -1.0, 1.0))
    return mean, math.sqrt(float((weights * angles**2).sum() / weights.sum())), float(weights.sum())


def _merge_clusters(directions, energy, labels) -> list[np.ndarray]:
    """Joins clusters that k-means cut out of one source: two clusters whose centres are closer than the sharpest
    trained light (side 2 at r = 8, 14 degrees) or than the smaller one's disc (sqrt(2) sigma; a disc of radius R has
    sigma = R / sqrt(2)) would draw as one light. The smaller one, so that a compact sun is never swallowed by the wide
    sky around it. Returns the member masks of the final clusters."""
    groups = [labels == c for c in np.unique(labels)]
    sharpest = 2.0 * math.atan(TRAINED_SIZE_RANGE[0] / 2.0 / LIGHT_DISTANCE)
    while len(groups) > 1:
        stats = [_cluster_stats(directions, energy, g) for g in groups]
        best = None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                angle = math.acos(float(np.clip(stats[a][0] @ stats[b][0], -1.0, 1.0)))
                if angle < max(math.sqrt(2.0) * min(stats[a][1], stats[b][1]), sharpest) and (
                    best is None or angle < best[0]
                ):
                    best = (angle, a, b)
        if best is None:
            break
        _, a, b = best
        groups[a] = groups[a] | groups[b]
        del groups[b]
    return groups


def lights_from_environment(
    image, max_lights: int = 3, low_sky: str = "ambient", min_share: float = 0.02
) -> EnvironmentLighting:
    """Up to `max_lights` square area lights of the training geometry that stand in for an equirectangular environment
    map (convention above; see `load_environment` for the accepted inputs).

    Importance is each pixel's share of the ground's irradiance, luminance x cos(theta) x solid angle (sin(theta)
    dtheta dphi); the sky below the horizon lights nothing. The pixels are clustered by weighted spherical k-means
    (clusters cut out of one source joined again);
    each cluster becomes a light at its energy-weighted mean direction, with a side matching its RMS angular spread
    sigma (a uniform square of side a at r = 8 has sigma = a sqrt(2/3) / (2 r)) clamped to the trained 2..8 (a sun
    sharper than size 2 is drawn at 2), and a power such that its irradiance at the object's foot is the cluster's.

    The model was trained on theta <= 45 degrees only; light from lower in the sky (45 < theta < 90) is never treated
    as in range. `low_sky="ambient"` (default) folds it into `ambient`: it lights the ground but casts no shadow the
    model can draw, so it only lightens the shadow (honest for a bright horizon, wrong for a low sun, whose long shadow
    is lost: a warning says how much light that is). `low_sky="clamp"` moves it up to theta = 45 with a warning: the
    shadows point the right way but are shorter than the real ones. Clusters under `min_share` of the irradiance are
    folded into `ambient` too."""
    if not isinstance(max_lights, int) or max_lights < 1:
        raise ValueError(f"`max_lights` must be an integer >= 1, got {max_lights!r}.")
    if low_sky not in LOW_SKY_CHOICES:
        raise ValueError(f"`low_sky` must be one of {', '.join(LOW_SKY_CHOICES)}, got {low_sky!r}.")
    if not 0.0 <= min_share < 1.0:
        raise ValueError(f"`min_share` must lie in [0, 1), got {min_share}.")
    radiance = load_environment(image)
    luminance = radiance @ np.array([0.2126, 0.7152, 0.0722])  # [H,W] linear (Rec. 709)
    luminance = _box_downsample(luminance, ENVIRONMENT_MAX_SIDE)
    height, width = luminance.shape
    theta, phi = equirect_directions(height, width)
    theta_grid, phi_grid = np.meshgrid(theta, phi, indexing="ij")
    solid_angle = np.sin(np.radians(theta_grid)) * (math.pi / height) * (2.0 * math.pi / width)
    energy = luminance * np.clip(np.cos(np.radians(theta_grid)), 0.0, None) * solid_angle  # ground irradiance share
    total = energy.sum()
    if total <= 0:
        raise ValueError("The environment map is black above the horizon: it lights nothing.")
    low = (theta_grid > TRAINED_THETA_MAX_DEG) & (energy > 0)
    low_share = float(energy[low].sum() / total)
    ambient_energy = 0.0
    if low_sky == "ambient":
        ambient_energy = float(energy[low].sum())
        if low_share > 0.25:
            logger.warning(
                "%.0f %% of the environment's light on the ground comes from lower than theta = %g degrees, which the "
                "model was not trained on: it goes into `ambient` (lightens the shadow, casts none).",
                100 * low_share,
                TRAINED_THETA_MAX_DEG,
            )
        theta_grid = np.where(low, np.nan, theta_grid)
    elif low.any():
        logger.warning(
            "%.0f %% of the environment's light comes from lower than theta = %g degrees: moved up to %g degrees "
            "(`low_sky='clamp'`), so those shadows are shorter than the real ones.",
            100 * low_share,
            TRAINED_THETA_MAX_DEG,
            TRAINED_THETA_MAX_DEG,
        )
        theta_grid = np.where(low, TRAINED_THETA_MAX_DEG, theta_grid)
    used = (energy > 0) & ~np.isnan(theta_grid)
    if not used.any():
        raise ValueError(
            f"No light in the environment comes from within theta <= {TRAINED_THETA_MAX_DEG:g} degrees, the model's "
            "range: every shadow would be drawn outside it. Use `low_sky='clamp'` to move it up to 45 degrees."
        )
    directions = _unit_vectors(theta_grid[used], phi_grid[used])  # [N,3]
    weights = energy[used]
    labels, _ = _weighted_spherical_kmeans(directions, weights, max_lights)
    lights, light_energy = [], 0.0
    for members in _merge_clusters(directions, weights, labels):
        centre, spread, cluster_energy = _cluster_stats(directions, weights, members)
        if cluster_energy < min_share * total:
            ambient_energy += cluster_energy
            continue
        size = float(np.clip(2.0 * LIGHT_DISTANCE * spread * math.sqrt(1.5), *TRAINED_SIZE_RANGE))
        light_theta = min(math.degrees(math.acos(np.clip(centre[2], -1.0, 1.0))), TRAINED_THETA_MAX_DEG)
        light_phi = math.degrees(math.atan2(centre[1], centre[0])) % 360.0
        unit_power = light_weights([Light(light_theta, light_phi, size)])[0]
        lights.append(Light(light_theta, light_phi, size, float(cluster_energy / unit_power)))
        light_energy += float(cluster_energy)
    if not lights:
        raise ValueError(f"Every light cluster holds less than `min_share`={min_share} of the light; lower it.")
    strongest = max(light.power for light in lights)
    lights = [Light(light.theta, light.phi, light.size, light.power / strongest) for light in lights]
    lights.sort(key=lambda light: -light.power)
    return EnvironmentLighting(lights=lights, ambient=ambient_energy / (ambient_energy + light_energy))


# --------------------------------------------------------------------------------------------------------------------
# 2. Rectified flow as small pure functions (docs/design.md §3). t = 1 is pure noise, t = 0 the data.
# --------------------------------------------------------------------------------------------------------------------


def _broadcast_t(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def rf_interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t * noise + (1 - t) * x0."""
    t = _broadcast_t(t, x0)
    return t * noise + (1.0 - t) * x0


def rf_velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target: v = noise - x0 (constant along the straight path)."""
    return noise - x0


def rf_predict_x0(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0 = x_t - t * v. With t = 1 this is the single-step prediction x0 = noise - v."""
    return x_t - _broadcast_t(t, x_t) * velocity


def rf_euler_step(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """One Euler step of dx/dt = v from t to t_next (< t)."""
    return x_t + _broadcast_t(t_next - t, x_t) * velocity


def rf_model_timestep(t: torch.Tensor) -> torch.Tensor:
    """The UNet's time input: t * 1000. Passing t in [0, 1] raw starves SDXL's time embedding (a known bug elsewhere)."""
    return t * NUM_TRAIN_TIMESTEPS


def sample_timesteps(
    batch_size: int,
    mode: TimestepSampling = "uniform",
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 3.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Training times t in [0, 1] for rectified flow (the paper does not state its distribution).

    - "uniform": t ~ U(0, 1).
    - "logit_normal": t = sigmoid(N(logit_mean, logit_std)) (SD3), most weight in the middle.
    - "shifted": u ~ U(0, 1) then t = shift*u / (1 + (shift - 1)*u) (SD3's shift), biased toward t = 1 where the
      single-step inference starts.
    - "single_step": t = 1 for every sample: trains only the regime used by one-step inference.
    """
    if mode == "uniform":
        return torch.rand(batch_size, generator=generator, device=device)
    if mode == "logit_normal":
        normal = torch.randn(batch_size, generator=generator, device=device)
        return torch.sigmoid(normal * logit_std + logit_mean)
    if mode == "shifted":
        if shift <= 0:
            raise ValueError(f"`shift` must be > 0, got {shift}.")
        u = torch.rand(batch_size, generator=generator, device=device)
        return shift * u / (1.0 + (shift - 1.0) * u)
    if mode == "single_step":
        return torch.ones(batch_size, device=device)
    raise ValueError(f"Unknown timestep sampling {mode!r}; allowed: {', '.join(TIMESTEP_SAMPLING_CHOICES)}.")


def inference_sigmas(num_inference_steps: int) -> list[float]:
    """Evenly spaced times from 1 (pure noise) toward 0; the scheduler appends the final 0."""
    return [1.0 - i / num_inference_steps for i in range(num_inference_steps)]


# --------------------------------------------------------------------------------------------------------------------
# 3. The shadow UNet: SDXL without text cross-attention, 9 input channels (or 8 + a detailed mask's), light added
#    to the time embedding.
# --------------------------------------------------------------------------------------------------------------------


def widen_conv_in(weight: torch.Tensor, bias: torch.Tensor | None, in_channels: int):
    """Widens a conv's input channels: old weights and bias copied, new input channels zero, so the widened conv gives
    exactly the old output while the extra inputs are zero (docs/design.md §3)."""
    out_channels, old_in, *kernel = weight.shape
    if in_channels < old_in:
        raise ValueError(f"Cannot widen conv_in from {old_in} to fewer ({in_channels}) input channels.")
    widened = torch.zeros(out_channels, in_channels, *kernel, dtype=weight.dtype, device=weight.device)
    widened[:, :old_in] = weight
    return widened, (None if bias is None else bias.clone())


def _is_cross_attention_key(key: str) -> bool:
    return ".attn2." in key or (".norm2." in key and ".transformer_blocks." in key)


def _strip_cross_attention(unet: UNet2DConditionModel) -> None:
    for module in unet.modules():
        if isinstance(module, BasicTransformerBlock):
            module.attn2 = None
            module.norm2 = None


def shadow_unet_config(sdxl_unet_config: dict) -> dict:
    """The stock-UNet config of the shadow UNet, derived from an SDXL UNet config: 9 input channels, no text/time_ids
    `add_embedding`, and a `projection` class embedding that takes the 3 x 256 light embedding."""
    config = {k: v for k, v in dict(sdxl_unet_config).items() if not k.startswith("_")}
    config.update(
        in_channels=UNET_IN_CHANNELS,
        addition_embed_type=None,
        addition_time_embed_dim=None,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=LIGHT_EMBEDDING_DIM * len(LIGHT_KEYS),
        encoder_hid_dim=None,
        encoder_hid_dim_type=None,
    )
    return config


# Config keys that older ShadowUNet configs carry and the class no longer takes, with the one value they could hold.
RETIRED_UNET_CONFIG_KEYS = {"cross_attention": False}


def migrate_shadow_unet_config(config: dict) -> dict:
    """A saved ShadowUNet config without the retired keys; raises ValueError if one holds a value never supported."""
    config = dict(config)
    for key, only_value in RETIRED_UNET_CONFIG_KEYS.items():
        if key in config and config.pop(key) != only_value:
            raise ValueError(
                f"ShadowUNet config `{key}` must be {only_value!r} (the only value it ever supported; the key is "
                "retired), got a different value: this config is not a shadow UNet's."
            )
    return config


@dataclass
class ShadowUNetOutput(BaseOutput):
    sample: torch.Tensor  # [B,4,h,w] predicted velocity v = noise - x0


class ShadowUNet(ModelMixin, ConfigMixin):
    """SDXL's UNet with every text cross-attention removed (no attn2/norm2), 9 input channels [z_t, z_m, z_o] (8 + k*k
    with a detailed mask, `with_mask_channels`), and the light (theta deg, phi deg, size) embedded like a timestep and
    added to the time embedding (paper §3.2).

    A thin wrapper because a `UNet2DConditionModel` subclass does not round-trip through `from_pretrained` (it passes
    config values by the subclass's own `__init__` signature). Its config alone rebuilds it: the stock UNet config plus
    the light-embedding sizes.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, unet_config: dict, light_embedding_dim: int = LIGHT_EMBEDDING_DIM):
        super().__init__()
        if not isinstance(unet_config, dict):
            raise ValueError(
                f"`unet_config` (unet/config.json) must be a JSON object, got {type(unet_config).__name__}."
            )
        expected = light_embedding_dim * len(LIGHT_KEYS)
        if unet_config.get("projection_class_embeddings_input_dim") != expected:
            raise ValueError(
                f"`unet_config.projection_class_embeddings_input_dim` must be {expected} (3 x {light_embedding_dim})."
            )
        mask_samples_per_side(input_mask_channels(unet_config.get("in_channels", UNET_IN_CHANNELS)))
        self.unet = UNet2DConditionModel.from_config(unet_config)
        _strip_cross_attention(self.unet)
        # Weightless: the fixed sinusoids of each light value; what learns is the projection in `unet.class_embedding`.
        self.light_sinusoids = Timesteps(
            light_embedding_dim,
            flip_sin_to_cos=unet_config.get("flip_sin_to_cos", True),
            downscale_freq_shift=unet_config.get("freq_shift", 0),
        )

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """Migrates configs saved by older versions (e.g. the shipped models/shadow-small) on every load path."""
        return super().extract_init_dict(migrate_shadow_unet_config(config_dict), **kwargs)

    @property
    def in_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def sample_size(self) -> int:
        return self.unet.config.sample_size

    @property
    def mask_channels(self) -> int:
        """The mask's channels between the two latents of the input (`MASK_CHANNELS`, `mask_to_latent`)."""
        return input_mask_channels(self.in_channels)

    def with_mask_channels(self, mask_channels: int) -> ShadowUNet:
        """This UNet taking its mask at `mask_channels` = k * k samples per latent cell, from one that takes it
        area-averaged: each new mask channel gets 1 / (k * k) of the old mask weights, so the new model computes
        exactly what this one does (the mean of the samples is the area average) until training uses the detail.
        Returns self when the count is already `mask_channels`."""
        mask_samples_per_side(mask_channels)
        if mask_channels == self.mask_channels:
            return self
        if self.mask_channels != MASK_CHANNELS:
            raise ValueError(
                f"Only a UNet with an area-averaged mask ({MASK_CHANNELS} channel) can be given more mask channels; "
                f"this one has {self.mask_channels}."
            )
        config = dict(self.config.unet_config, in_channels=2 * LATENT_CHANNELS + mask_channels)
        with torch.device("meta"):  # built empty, then given copies of this one's tensors (their dtype and device)
            detailed = type(self)(unet_config=config, light_embedding_dim=self.config.light_embedding_dim)
        state = {name: tensor.clone() for name, tensor in self.state_dict().items()}
        z_t, mask, z_o = state["unet.conv_in.weight"].split([LATENT_CHANNELS, MASK_CHANNELS, LATENT_CHANNELS], dim=1)
        mask = (mask / mask_channels).expand(-1, mask_channels, -1, -1)
        state["unet.conv_in.weight"] = torch.cat([z_t, mask, z_o], dim=1)  # [C_out, 8 + k*k, kh, kw]
        detailed.load_state_dict(state, strict=True, assign=True)
        return detailed

    def light_embedding(self, light: torch.Tensor) -> torch.Tensor:
        """[B,3] raw (theta deg, phi deg, size) -> [B, 3*256] sinusoidal embedding. Raw degrees resolve well at the
        sinusoid's highest frequencies; [0,1]-normalised inputs would make all lights look alike (docs/design.md §3)."""
        if light.ndim != 2 or light.shape[1] != len(LIGHT_KEYS):
            raise ValueError(f"`light` must be [B, 3] = (theta, phi, size), got {tuple(light.shape)}.")
        # Refused here too, so that no entry point (pipeline, training, a user's own loop) embeds an absurd light.
        check_light(*light.detach().to("cpu", torch.float64).numpy().T, warn=False)  # one tiny [B,3] copy
        theta, phi, size = light.unbind(dim=1)
        phi = wrap_phi(phi).to(torch.float32)  # wrapped in float64 first, so phi and phi + 360 are bit-identical
        parts = [self.light_sinusoids(value.to(torch.float32)) for value in (theta, phi, size)]
        return torch.cat(parts, dim=1)

    def forward(self, sample: torch.Tensor, timestep, light: torch.Tensor, return_dict: bool = True):
        """sample [B,8+k*k,h,w] = cat(z_t, z_m, z_o) (k*k = `mask_channels`, 1 by default); timestep = t * 1000;
        light [B,3] raw -> velocity [B,4,h,w]."""
        light_embedding = self.light_embedding(light).to(sample.dtype)
        velocity = self.unet(sample, timestep, encoder_hidden_states=None, class_labels=light_embedding).sample
        return ShadowUNetOutput(sample=velocity) if return_dict else (velocity,)

    @classmethod
    def from_sdxl_unet(cls, sdxl_unet: UNet2DConditionModel) -> ShadowUNet:
        """Converts a loaded SDXL UNet without ever holding two full copies (the new model is built on the meta device
        and takes the converted tensors by assignment)."""
        state = sdxl_unet.state_dict()
        dropped_cross = sum(state[k].numel() for k in state if _is_cross_attention_key(k))
        dropped_add = sum(state[k].numel() for k in state if k.startswith(("add_embedding.", "add_time_proj.")))
        kept = {f"unet.{k}": v for k, v in state.items() if not _is_cross_attention_key(k) and not k.startswith("add_")}
        weight, bias = widen_conv_in(state["conv_in.weight"], state.get("conv_in.bias"), UNET_IN_CHANNELS)
        kept["unet.conv_in.weight"] = weight
        if bias is not None:
            kept["unet.conv_in.bias"] = bias
        config = shadow_unet_config(sdxl_unet.config)
        with torch.device("meta"):
            model = cls(unet_config=config)
        dtype, device = weight.dtype, weight.device
        time_width = model.unet.class_embedding.linear_1.out_features
        first = torch.nn.Linear(model.unet.class_embedding.linear_1.in_features, time_width, device=device, dtype=dtype)
        kept["unet.class_embedding.linear_1.weight"] = first.weight.detach()
        kept["unet.class_embedding.linear_1.bias"] = first.bias.detach()
        # Zero-initialised last layer: the converted model starts exactly as SDXL's time path (docs/design.md §3).
        kept["unet.class_embedding.linear_2.weight"] = torch.zeros(time_width, time_width, device=device, dtype=dtype)
        kept["unet.class_embedding.linear_2.bias"] = torch.zeros(time_width, device=device, dtype=dtype)
        model.load_state_dict(kept, strict=True, assign=True)
        added_light = sum(p.numel() for p in model.unet.class_embedding.parameters())
        total = sum(p.numel() for p in model.parameters())
        logger.info(
            "Converted SDXL UNet to ShadowUNet: dropped %s text cross-attention parameters (attn2/norm2) and %s "
            "text/time_ids add_embedding parameters; conv_in widened 4 -> %d input channels (+%s, zero-initialised); "
            "light embedding added (+%s, last layer zero); total %s parameters.",
            f"{dropped_cross:,}",
            f"{dropped_add:,}",
            UNET_IN_CHANNELS,
            f"{weight[:, 4:].numel():,}",
            f"{added_light:,}",
            f"{total:,}",
        )
        return model


# --------------------------------------------------------------------------------------------------------------------
# 4. Compositing: intensity lives only here (as in the paper).
# --------------------------------------------------------------------------------------------------------------------


def _cover_resize(background: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Scales [B,3,H,W] to cover `size_hw` and centre-crops it (never squashes the background)."""
    height, width = background.shape[-2:]
    _check_not_empty(height, width, "`background`")  # a 0x0 background has no scale to cover anything with
    if (height, width) == tuple(size_hw):
        return background
    scale = max(size_hw[0] / height, size_hw[1] / width)
    new_hw = (max(size_hw[0], round(height * scale)), max(size_hw[1], round(width * scale)))
    resized = F.interpolate(background, size=new_hw, mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_hw[0] - size_hw[0]) // 2, (new_hw[1] - size_hw[1]) // 2
    return resized[..., top : top + size_hw[0], left : left + size_hw[1]]


def composite_tensors(object_image, mask, shadow_map, background, intensity=1.0) -> torch.Tensor:
    """All [B,C,H,W] in [0, 1]: background darkened by clamp(intensity * shadow), the object pasted through its mask."""
    if not isinstance(intensity, torch.Tensor):
        intensity = torch.as_tensor(intensity, dtype=shadow_map.dtype)
    intensity = intensity.to(shadow_map.device, shadow_map.dtype).reshape(-1, 1, 1, 1)
    background = _cover_resize(background.to(object_image), tuple(object_image.shape[-2:]))
    darkening = (intensity * shadow_map).clamp(0.0, 1.0)
    shadowed = background * (1.0 - darkening)
    return object_image * mask + shadowed * (1.0 - mask)


def composite(object_image, mask, shadow_map, background, intensity: float = 1.0):
    """The final picture: `background` (cover-resized to the object's canvas when its size differs) darkened by
    `intensity` x `shadow_map` (clamped to [0, 1]), with the object pasted on top through its (soft) `mask`.

    Takes PIL images (object RGB/RGBA, mask and shadow map gray) or tensors in [0, 1] ([3,H,W]/[B,3,H,W],
    [1,H,W]/[B,1,H,W]); returns the same kind as `object_image` (a PIL RGB image, or a tensor).
    """
    check_intensity(intensity)
    as_pil = isinstance(object_image, PIL.Image.Image)
    obj = image_to_tensor(object_image, "object_image") if not isinstance(object_image, torch.Tensor) else object_image
    if mask is None and obj.shape[-3] == 4:
        mask = obj[..., 3:4, :, :]
    if mask is None:
        raise ValueError("`mask` is required when `object_image` has no alpha channel.")
    obj = obj[..., :3, :, :]
    mask_t = gray_to_tensor(mask, "mask") if not isinstance(mask, torch.Tensor) else mask
    shadow_t = gray_to_tensor(shadow_map, "shadow_map") if not isinstance(shadow_map, torch.Tensor) else shadow_map
    background_t = background if isinstance(background, torch.Tensor) else image_to_tensor(background, "background")
    batched = obj.ndim == 4
    tensors = [t if t.ndim == 4 else t[None] for t in (obj, mask_t, shadow_t, background_t[..., :3, :, :])]
    if tensors[1].shape[-2:] != tensors[0].shape[-2:] or tensors[2].shape[-2:] != tensors[0].shape[-2:]:
        raise ValueError(
            f"`object_image` {tuple(tensors[0].shape[-2:])}, `mask` {tuple(tensors[1].shape[-2:])} and `shadow_map` "
            f"{tuple(tensors[2].shape[-2:])} must have the same height and width."
        )
    result = composite_tensors(*tensors, intensity=intensity)
    if as_pil:
        array = (result[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
        return PIL.Image.fromarray(array, mode="RGB")
    return result if batched else result[0]


def shadow_layer(shadow_map: torch.Tensor, intensity: float = 1.0) -> PIL.Image.Image:
    """A shadow-only RGBA layer for image editors: black with alpha = clamp(intensity x shadow)."""
    check_intensity(intensity)
    alpha = (shadow_map.reshape(shadow_map.shape[-2:]).float() * intensity).clamp(0, 1).numpy()
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., 3] = (alpha * 255.0).round().astype(np.uint8)
    return PIL.Image.fromarray(rgba, mode="RGBA")


def shadow_map_to_pil(shadow_map: torch.Tensor) -> PIL.Image.Image:
    """[1,H,W] or [H,W] in [0, 1] -> mode-"L" image (255 = full shadow)."""
    array = (shadow_map.reshape(shadow_map.shape[-2:]).float().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return PIL.Image.fromarray(array, mode="L")


# --------------------------------------------------------------------------------------------------------------------
# 5. The pipeline.
# --------------------------------------------------------------------------------------------------------------------

EXAMPLE_DOC_STRING = """
Examples:
```py
>>> import torch
>>> from PIL import Image
>>> from pipeline_shadow import ShadowPipeline

>>> pipe = ShadowPipeline.from_pretrained("models/shadow-small")  # the repo's small model; or your folder / Hub id
>>> pipe = pipe.to("cuda" if torch.cuda.is_available() else "cpu")
>>> cutout = Image.open("object.png")  # RGBA cut-out: the mask comes from its alpha channel
>>> out = pipe(cutout, theta=30.0, phi=45.0, size=4.0, background=Image.open("background.jpg"), intensity=0.8,
...            generator=torch.Generator().manual_seed(0))
>>> out.shadow_maps[0].save("shadow.png")  # mode "L", 255 = full shadow
>>> out.images[0].save("composite.png")
>>> # Several lights at once (one batched UNet call), composed physically; power = relative total power
>>> out = pipe(cutout, lights=[(30.0, 0.0, 2.0), {"theta": 20.0, "phi": 150.0, "size": 6.0, "power": 0.5}])
```
"""


@dataclass
class ShadowPipelineOutput(BaseOutput):
    """
    Args:
        shadow_maps: the model's raw shadow maps at each input's size, 1 = full shadow, 0 on the object itself
            (intensity is NOT applied): "pil": list of mode-"L" images; "np": [B,H,W] float32 in [0, 1]; "pt":
            [B,1,H,W] float32 in [0, 1]; "latent": the predicted shadow latents, undecoded, [B,4,h,w] at the
            processing size (`decode_shadow(pipe.vae, latents)` draws the padded, processing-size maps).
        images: composites (object over the background darkened by intensity x shadow) when a `background` was
            given, else None. "pil": list of RGB images; "np": [B,H,W,3] float32 in [0, 1]; "pt": [B,3,H,W].
        light_maps: with `lights=` and `return_light_maps=True`, each image's single-light maps (the ones
            `shadow_maps` composes), else None. A list over images of "pil": a list of K mode-"L" images; "np":
            [K,H,W] float32; "pt": [K,1,H,W] float32.
    """

    shadow_maps: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None
    light_maps: list | None = None


@dataclass
class ObjectLatents:
    """What `encode_object` prepares once per object: reuse it while only the light changes (a slider re-runs the
    UNet and the decoder only)."""

    object_latents: torch.Tensor  # [B,4,h,w]
    mask_latent: torch.Tensor  # [B,k*k,h,w] (`mask_to_latent` for the UNet's mask channels)
    boxes: list[PadBox]
    sizes: list[tuple[int, int]]  # each input's (H, W)
    objects: list[torch.Tensor]  # [3,H,W] in [0, 1] at input size, for compositing
    masks: list[torch.Tensor]  # [1,H,W] in [0, 1]


def _as_list(value, name: str, batch_size: int) -> list[float]:
    if isinstance(value, (torch.Tensor, np.ndarray)):  # a 0-d array is one value, for every image
        value = value.item() if value.ndim == 0 else value.flatten().tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != batch_size:
            raise ValueError(
                f"`{name}` has {len(value)} values but the batch has {batch_size} images; give one value or one per image."
            )
        values = list(value)
    else:
        values = [value] * batch_size
    for v in values:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float, np.integer, np.floating))
            or not math.isfinite(float(v))
        ):
            raise ValueError(f"`{name}` must be a finite number or a list of numbers, got {v!r}.")
    return [float(v) for v in values]


def _is_one_light(value) -> bool:
    return isinstance(value, (Light, dict)) or (
        isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, np.integer, np.floating)) for v in value)
    )


def check_lights(lights, batch_size: int) -> list[list[Light]]:
    """`lights=` of the pipeline -> one list of `Light`s per image. Takes one list of lights (each a `Light`, a dict
    {theta, phi, size[, power]} or a (theta, phi, size[, power]) sequence) for every image, or one such list per image.
    Each light passes the same checks as the single-light arguments; powers must be >= 0 with a positive sum."""
    if isinstance(lights, (Light, dict)) or not isinstance(lights, (list, tuple)) or not lights:
        raise ValueError(
            "`lights` must be a non-empty list of lights (Light, dict {theta, phi, size[, power]} or "
            f"(theta, phi, size[, power])), or one such list per image; got {lights!r}."
        )
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in lights):
        raise ValueError(f"`lights` must be a LIST of lights; for one light write lights=[{tuple(lights)!r}].")
    shared = all(_is_one_light(light) for light in lights)
    if shared:
        per_image = [list(lights)] * batch_size
    elif all(isinstance(group, (list, tuple)) and group for group in lights):
        if len(lights) != batch_size:
            raise ValueError(f"`lights` has {len(lights)} light lists but the batch has {batch_size} images.")
        per_image = [list(group) for group in lights]
    else:
        raise ValueError("`lights` mixes single lights and lists of lights; give one list, or one list per image.")
    parsed = []
    for b, group in enumerate(per_image):
        image_lights = []
        for k, value in enumerate(group):
            name = f"lights[{k}]" if shared else f"lights[{b}][{k}]"
            light = Light.from_any(value, name)
            check_light(light.theta, light.phi, light.size, prefix=f"{name}.")
            if light.power < 0:
                raise ValueError(f"`{name}.power` (relative total power) must be >= 0, got {light.power:g}.")
            image_lights.append(light)
        if sum(light.power for light in image_lights) <= 0:
            which = "The lights" if shared else f"The lights of image {b}"
            raise ValueError(f"{which} all have power 0: at least one must emit.")
        parsed.append(image_lights)
    return parsed


def check_generator(generator, batch_size: int) -> None:
    """`generator`: None, one `torch.Generator`, or a list of exactly one per image (the noise is drawn per image)."""
    generators = generator if isinstance(generator, (list, tuple)) else [generator]
    if generator is None:
        return
    if not generators or not all(isinstance(g, torch.Generator) for g in generators):
        raise ValueError(
            "`generator` must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or a list of them, one "
            f"per image; got {generator!r}."
        )
    if isinstance(generator, (list, tuple)) and len(generators) not in (1, batch_size):
        raise ValueError(f"`generator` has {len(generators)} generators but the batch has {batch_size} images.")


def check_start_latents(latents, shape: tuple[int, ...]) -> None:
    """`latents` (the starting noise given to `__call__`): a finite float tensor of exactly `shape` [B,4,h,w]."""
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        raise ValueError(f"`latents` must be a float torch.Tensor {list(shape)}, got {type(latents).__name__}.")
    if tuple(latents.shape) != shape:
        raise ValueError(
            f"`latents` is {list(latents.shape)} but these images need {list(shape)} ([batch, 4, height / 8, "
            "width / 8] at the processing size)."
        )
    _check_finite(latents, "latents", "the noise's values")


def _split_images(images, name: str) -> list:
    """One image, a list of images, or a batched tensor/array -> a list of single images."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"`{name}` is an empty list.")
        return list(images)
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        if images.shape[0] == 0:
            raise ValueError(f"`{name}` is an empty batch (shape {tuple(images.shape)}): give at least one image.")
        return list(images.unbind(0)) if isinstance(images, torch.Tensor) else list(images)
    return [images]


# The keywords `ShadowPipeline.from_pretrained` passes on: to every file download, and to each model's loader.
HUB_LOAD_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies")
MODEL_LOAD_KWARGS = ("variant", "use_safetensors", "low_cpu_mem_usage")
PIPELINE_FILE = "model_index.json"


def _resolve_dtype_kwarg(torch_dtype, dtype):
    if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
        raise ValueError(f"Got both `torch_dtype={torch_dtype}` and `dtype={dtype}`; pass one.")
    return dtype if dtype is not None else torch_dtype


def _dtype_kwargs(dtype) -> dict:
    """diffusers >= 0.42 names it `dtype` and warns on `torch_dtype`; older versions know only `torch_dtype`."""
    if dtype is None:
        return {}
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def find_pipeline_folders(folder: str | os.PathLike, max_depth: int = 2) -> list[Path]:
    """Folders up to `max_depth` levels below `folder` that hold a saved pipeline (a model_index.json), sorted."""
    folder = Path(folder)
    found = []
    for depth in range(1, max_depth + 1):
        found += [p.parent for p in folder.glob("/".join(["*"] * depth) + f"/{PIPELINE_FILE}")]
    return sorted(found)


def _check_pipeline_folder(name_or_path: str | os.PathLike) -> None:
    """A local folder without model_index.json: name the pipeline folders below it (a training run's `best/`, an
    old run's `final/`; a checkpoint-N/ holds training state, not a pipeline) instead of diffusers' bare
    "no file named model_index.json"."""
    folder = Path(name_or_path)
    if not folder.is_dir() or (folder / PIPELINE_FILE).is_file():
        return
    # An old run's final/ is what its user means; then best/; then whatever else lies below.
    below = sorted(find_pipeline_folders(folder), key=lambda p: (p.name != "final", p.name != "best", str(p)))
    if below:
        listing = ", ".join(str(p) for p in below)
        raise ValueError(
            f"{folder} holds no pipeline ({PIPELINE_FILE}), but a pipeline lies below it: load {below[0]} instead "
            f"(found: {listing})."
        )
    checkpoints = sorted(p.name for p in folder.glob("checkpoint-*") if p.is_dir())
    if checkpoints or (folder / "unet").is_dir():
        raise ValueError(
            f"{folder} holds no pipeline ({PIPELINE_FILE}): a training checkpoint (checkpoint-N/, unet/ only) is "
            "training state for --resume_from_checkpoint. Load the run's folder (its final pipeline) or best/; a "
            "stopped run has only best/ if validation ran."
        )


class ShadowPipeline(DiffusionPipeline):
    r"""Predicts the shadow map an object casts under a light (theta, phi, size) in ONE rectified-flow step, and
    composites it onto a background.

    Components:
        unet ([`ShadowUNet`]): SDXL UNet without text cross-attention; input [z_t, mask, object latent].
        vae ([`AutoencoderKL`]): SDXL's VAE, encodes the object and decodes the shadow map.
        scheduler ([`FlowMatchEulerDiscreteScheduler`]): rectified-flow Euler steps from t = 1 (noise) to 0.
        default_processing_resolution (`int`, *optional*): the training resolution; inputs are resized (aspect
            kept, padded) so the long side matches it. None means unet sample_size x VAE factor.
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = []

    def __init__(
        self,
        # Annotated with the base class on purpose: `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`
        # executes this file twice under one module name (the root copy for the pipeline, `unet/`'s copy for the
        # component), so the pipeline's `ShadowUNet` and the loaded UNet's class are two objects and diffusers' type
        # check would log "Expected types for unet: ... ShadowUNet ..., got ... ShadowUNet". Both derive from
        # diffusers' own ModelMixin, which is one object in the process.
        unet: ModelMixin,
        vae: AutoencoderKL,
        scheduler: FlowMatchEulerDiscreteScheduler,
        default_processing_resolution: int | None = None,
    ):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler)
        self.register_to_config(default_processing_resolution=default_processing_resolution)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if vae is not None else 8

    # ----- building and loading ------------------------------------------------------------------------------------

    @classmethod
    def from_sdxl(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        vae: AutoencoderKL | str | None = None,
        revision: str | None = None,
        variant: str | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs,
    ) -> ShadowPipeline:
        """An untrained shadow pipeline from any SDXL checkpoint in the diffusers layout (Hub id or folder): loads
        only `unet/` and `vae/` (never a text encoder), converts the UNet (see `ShadowUNet.from_sdxl_unet`) and adds a
        flow-matching scheduler. `vae` may be a loaded AutoencoderKL or a path/Hub id (e.g. an fp16-safe SDXL VAE)."""
        load_kwargs = {"revision": revision, "variant": variant, **_dtype_kwargs(torch_dtype), **kwargs}
        sdxl_unet = UNet2DConditionModel.from_pretrained(pretrained_model_name_or_path, subfolder="unet", **load_kwargs)
        unet = ShadowUNet.from_sdxl_unet(sdxl_unet)
        del sdxl_unet
        if vae is None:
            vae = AutoencoderKL.from_pretrained(pretrained_model_name_or_path, subfolder="vae", **load_kwargs)
        elif not isinstance(vae, AutoencoderKL):
            vae = AutoencoderKL.from_pretrained(vae, **{k: v for k, v in load_kwargs.items() if k != "variant"})
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=1.0)
        return cls(unet=unet, vae=vae, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> ShadowPipeline:
        """Loads a saved shadow pipeline (folder or Hub id) with this class's own code, so no `trust_remote_code` is
        needed when the project is importable. (`DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`
        loads the same folder with the copy of this file saved beside the weights.)

        Takes the keywords of any diffusers pipeline: `torch_dtype` (or `dtype`), `variant`, `revision`,
        `cache_dir`, `local_files_only`, `token`, `force_download`, `proxies`, `use_safetensors`,
        `low_cpu_mem_usage`, `device_map` (a device such as "cpu" or "cuda"; diffusers' multi-GPU "balanced" is
        refused: one GPU holds this model) and component overrides (`unet=`, `vae=`, `scheduler=`).
        `trust_remote_code` is accepted and not needed."""
        _check_pipeline_folder(pretrained_model_name_or_path)
        kwargs.pop("trust_remote_code", None)  # this class IS the code
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_LOAD_KWARGS if k in kwargs}
        dtype = _resolve_dtype_kwarg(kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None))
        device_map = kwargs.pop("device_map", None)
        if device_map == "balanced" or isinstance(device_map, dict):
            raise ValueError(
                f"`device_map={device_map!r}` splits a pipeline over several GPUs; the shadow pipeline fits one. Pass a "
                'device ("cuda", "cpu") or use `pipe.to(device)` / `pipe.enable_model_cpu_offload()`.'
            )
        model_kwargs = {k: kwargs.pop(k) for k in MODEL_LOAD_KWARGS if k in kwargs}
        model_kwargs.update(_dtype_kwargs(dtype), **hub_kwargs)
        if device_map is not None:
            model_kwargs["device_map"] = str(device_map)
        config = cls.load_config(pretrained_model_name_or_path, **hub_kwargs)
        components = {name: kwargs.pop(name) for name in ("unet", "vae", "scheduler") if name in kwargs}
        if kwargs:
            raise ValueError(
                f"Unexpected arguments for ShadowPipeline.from_pretrained: {', '.join(sorted(kwargs))}. Accepted: "
                f"{', '.join(('torch_dtype', 'dtype', 'device_map', *MODEL_LOAD_KWARGS, *HUB_LOAD_KWARGS))}, "
                "unet, vae, scheduler."
            )
        for name, model_class in (("unet", ShadowUNet), ("vae", AutoencoderKL)):
            if name not in components:
                components[name] = model_class.from_pretrained(
                    pretrained_model_name_or_path, subfolder=name, **model_kwargs
                )
        if "scheduler" not in components:
            components["scheduler"] = FlowMatchEulerDiscreteScheduler.from_pretrained(
                pretrained_model_name_or_path, subfolder="scheduler", **hub_kwargs
            )
        resolution = config.get("default_processing_resolution")
        return cls(**components, default_processing_resolution=resolution)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """Saves the diffusers folder plus this file at its root and in `unet/`, and records the custom classes in
        model_index.json, so `DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)` needs no
        other code. This folder is what `push_to_hub` uploads."""
        if getattr(self.unet.unet, "_hf_peft_config_loaded", False):
            raise ValueError(
                "The UNet carries an unfused LoRA, which the saved folder could not load: call `fuse_lora()` first, "
                "or share the adapter folder it came from."
            )
        push_to_hub = kwargs.pop("push_to_hub", False)
        super().save_pretrained(save_directory, **kwargs)
        save_directory = Path(save_directory)
        source = Path(inspect.getsourcefile(ShadowUNet))
        for folder in (save_directory, save_directory / "unet"):
            shutil.copyfile(source, folder / f"{MODULE_NAME}.py")
        index_path = save_directory / "model_index.json"
        model_index = json.loads(index_path.read_text())
        model_index["_class_name"] = [MODULE_NAME, type(self).__name__]
        model_index["unet"] = [MODULE_NAME, type(self.unet).__name__]
        index_path.write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n")
        if push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = kwargs.get("repo_id") or save_directory.name
            repo_id = create_repo(
                repo_id, exist_ok=True, private=kwargs.get("private"), token=kwargs.get("token")
            ).repo_id
            upload_folder(
                repo_id=repo_id,
                folder_path=save_directory,
                token=kwargs.get("token"),
                commit_message=kwargs.get("commit_message", "Upload ShadowPipeline"),
            )

    # ----- speed ---------------------------------------------------------------------------------------------------

    def enable_fast_inference(self, mode: str | None = "max-autotune", backend: str = "inductor", channels_last=None):
        """Compiles the UNet and the VAE's encoder and decoder with `torch.compile` (channels_last memory format on
        CUDA, where it pays once compiled but hurts in eager mode, docs/design.md §6). The first call at each new shape pays
        the compilation (minutes for the full-size model, see BENCHMARKS.md); later calls are fast. Outputs match the
        plain pipeline within the dtype's tolerance. `mode="max-autotune"` also captures CUDA graphs, so keep the
        processing size fixed (a light slider re-running `pipe(object_latents=..., ...)` does)."""
        if channels_last is None:
            channels_last = self._execution_device.type == "cuda"
        if channels_last:
            for module in (self.unet, self.vae):
                module.to(memory_format=torch.channels_last)
        self.unet.unet = torch.compile(self.unet.unet, mode=mode, backend=backend, fullgraph=True)
        self.vae.encoder = torch.compile(self.vae.encoder, mode=mode, backend=backend)
        self.vae.decoder = torch.compile(self.vae.decoder, mode=mode, backend=backend)
        return self

    def load_lora_weights(
        self,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        fuse: bool = False,
        **kwargs,
    ) -> ShadowPipeline:
        """Loads a LoRA saved by `train_shadow_sdxl.py --use_lora` onto this pipeline, which must be the converted base
        it was trained from (`ShadowPipeline.from_sdxl(base)`). Accepts the `unet_lora/` folder itself, or a folder or
        Hub repo that holds one. Replaces conv_in and the light projection with their fully trained copies and sets
        the training resolution. `fuse=True` merges the adapter into the weights (see `fuse_lora`). Needs peft.

            pipe = ShadowPipeline.from_sdxl("stabilityai/stable-diffusion-xl-base-1.0")
            pipe.load_lora_weights("shadow-sdxl-model/unet_lora")  # a --use_lora run folder
        """
        from peft import LoraConfig  # optional dependency, only for LoRA

        if getattr(self.unet.unet, "_hf_peft_config_loaded", False):
            raise ValueError(
                "This pipeline's UNet already carries a LoRA: load the adapter onto a fresh base pipeline."
            )
        folder = _lora_folder(pretrained_model_name_or_path, subfolder, **kwargs)
        trained_mask_channels = _lora_mask_channels(folder)
        if trained_mask_channels not in (None, self.unet.mask_channels):  # trained with --mask_channels
            self.unet = self.unet.with_mask_channels(trained_mask_channels)
        self.unet.unet.add_adapter(LoraConfig.from_pretrained(str(folder)))
        load_lora_state(self.unet, folder)
        info_path = folder / LORA_INFO
        resolution = (
            json.loads(info_path.read_text()).get("default_processing_resolution") if info_path.is_file() else None
        )
        if resolution:
            self.register_to_config(default_processing_resolution=int(resolution))
        if fuse:
            self.fuse_lora()
        return self

    def fuse_lora(self) -> None:
        """Merges the loaded LoRA into the UNet's weights and removes the adapter layers: the pipeline is then a plain
        ShadowPipeline (same outputs up to float rounding) that `save_pretrained` writes as a full model."""
        if not getattr(self.unet.unet, "_hf_peft_config_loaded", False):
            raise ValueError("No LoRA is loaded: call `load_lora_weights` first.")
        self.unet.unet.fuse_lora()
        self.unet.unet.unload_lora()

    # ----- defaults and checks -------------------------------------------------------------------------------------

    @property
    def default_resolution(self) -> int:
        """The training resolution recorded in the config, else unet sample_size x VAE factor (1024 for SDXL)."""
        resolution = self.config.default_processing_resolution
        return int(resolution) if resolution else int(self.unet.sample_size * self.vae_scale_factor)

    def check_inputs(
        self,
        objects,
        masks,
        lights,
        intensity,
        num_inference_steps,
        height,
        width,
        output_type,
        background,
        generator=None,
        objects_checked: bool = False,
    ):
        """Raises ValueError naming the argument and what is allowed; `objects`/`masks` are already split lists.
        `objects_checked`: they come from `encode_object`, which checked them (and warned about them) once already."""
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be one of 'pil', 'np', 'pt', 'latent', got {output_type!r}.")
        if output_type == "latent" and background is not None:
            raise ValueError(
                "`output_type='latent'` returns the shadow latents undecoded, so nothing can be composited: drop "
                "`background`, or use 'pil', 'np' or 'pt'."
            )
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, (int, np.integer))
            or num_inference_steps < 1
        ):
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        if num_inference_steps > 50:
            logger.warning(
                "`num_inference_steps`=%d: the model is trained for ONE step; more rarely helps.", num_inference_steps
            )
        check_light(*lights)
        if any(i < 0 for i in intensity):
            raise ValueError(f"`intensity` must be >= 0, got {intensity}.")
        if not objects_checked:
            self.check_object_inputs(objects, masks, height, width)
        if output_type in ("np", "pt") and len({tuple(o.shape[-2:]) for o in objects}) > 1:
            raise ValueError(
                "Images of different sizes cannot be stacked for `output_type` 'np'/'pt'; use output_type='pil' "
                "or call the pipeline once per image."
            )
        if background is not None and not isinstance(
            background, (PIL.Image.Image, np.ndarray, torch.Tensor, list, tuple)
        ):
            raise ValueError(
                f"`background` must be an image (PIL, numpy, tensor) or a list of them, got {type(background).__name__}."
            )
        check_generator(generator, len(objects))

    def check_object_inputs(self, objects, masks, height, width) -> None:
        """The image checks that `encode_object` and `__call__` share: a mask for every object, of its size, images
        at least MIN_IMAGE_SIDE on a side, a processing size the VAE and the UNet can take; an empty mask (or a fully
        transparent cut-out) is legal but gives an empty map, so it is warned about."""
        for name, value in (("height", height), ("width", width)):
            if value is not None:
                check_resolution(value, name)
        if len(masks) != len(objects):
            raise ValueError(f"`mask` has {len(masks)} entries but `object_image` has {len(objects)}.")
        for index, (obj, mask) in enumerate(zip(objects, masks)):
            if mask is None:
                raise ValueError(
                    f"`object_image`[{index}] is RGB and no `mask` was given: pass an RGBA cut-out (the mask is taken "
                    "from its alpha channel) or a `mask`."
                )
            if obj.shape[-2:] != mask.shape[-2:]:
                raise ValueError(
                    f"`object_image`[{index}] is {tuple(obj.shape[-2:])} (H, W) but its `mask` is {tuple(mask.shape[-2:])}."
                )
            check_image_extent(*obj.shape[-2:], f"`object_image`[{index}]")
            if not bool((mask >= 0.5).any()):
                logger.warning(
                    "`mask`[%d] is empty (no pixel >= 0.5; a fully transparent cut-out gives this too): there is no "
                    "object, so the shadow map will be (nearly) empty.",
                    index,
                )

    def _prepare_images(self, object_image, mask) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        objects = [image_to_tensor(image, "object_image") for image in _split_images(object_image, "object_image")]
        if mask is None:
            masks = [obj[3:4] if obj.shape[0] == 4 else None for obj in objects]
        else:
            masks = [gray_to_tensor(m, "mask") for m in _split_images(mask, "mask")]
            if len(masks) == 1 and len(objects) > 1:
                masks = masks * len(objects)
        return [obj[:3] for obj in objects], masks

    # ----- the model steps -----------------------------------------------------------------------------------------

    def _vae_dtype_context(self):
        """fp16 SDXL VAEs overflow: upcast to fp32 when the VAE config asks for it (diffusers' `force_upcast`)."""
        needs_upcast = self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        return _VaeUpcast(self.vae) if needs_upcast else contextlib.nullcontext()

    @torch.no_grad()
    def encode_object(
        self, object_image, mask=None, height: int | None = None, width: int | None = None
    ) -> ObjectLatents:
        """Resizes (aspect kept, padded), whitens the background and encodes the objects once. Pass the result as
        `object_latents=` to `__call__` to re-light the same objects without re-encoding them."""
        objects, masks = self._prepare_images(object_image, mask)
        self.check_object_inputs(objects, masks, height, width)
        return self._encode(objects, masks, height, width)

    @torch.no_grad()
    def encode_preprocessed(self, object_image: torch.Tensor, mask: torch.Tensor) -> ObjectLatents:
        """Encodes objects that are ALREADY preprocessed, as the data loader's batches carry them: `object_image`
        [B,3,H,W] in [-1, 1], white outside the mask, and `mask` [B,1,H,W] in [0, 1] at the processing size (the
        output of `preprocess_object`). Nothing is resized or re-binarised, so the UNet sees exactly the latents that
        training computes from the same batch; outputs come back at (H, W). Pass the result as `object_latents=`."""
        for name, value in (("object_image", object_image), ("mask", mask)):
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise ValueError(
                    f"`{name}` must be a float torch tensor (a data loader batch, see `preprocess_object`), got "
                    f"{type(value).__name__}{'' if not isinstance(value, torch.Tensor) else ' ' + str(value.dtype)}."
                )
            _check_finite(value, name)
        if object_image.ndim != 4 or object_image.shape[1] != 3:
            raise ValueError(f"`object_image` must be [B,3,H,W] in [-1, 1], got {tuple(object_image.shape)}.")
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != object_image.shape[0]:
            raise ValueError(f"`mask` must be [B,1,H,W] beside `object_image` [B,3,H,W], got {tuple(mask.shape)}.")
        height, width = object_image.shape[-2:]
        if tuple(mask.shape[-2:]) != (height, width) or height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(
                f"`object_image` {height}x{width} and `mask` {tuple(mask.shape[-2:])} must have the same size, a "
                f"multiple of {self.vae_scale_factor}: preprocess them with `preprocess_object` first."
            )
        if object_image.min() < -1.0 or object_image.max() > 1.0 or mask.min() < 0.0 or mask.max() > 1.0:
            raise ValueError("`object_image` must lie in [-1, 1] and `mask` in [0, 1] (the data loader's ranges).")
        objects = list(((object_image.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0).unbind(0))
        masks = list(mask.detach().float().cpu().unbind(0))
        box = PadBox(0, 0, height, width)
        return self._encode_batch(object_image, mask, [box] * len(objects), objects, masks)

    def _encode(self, objects, masks, height, width) -> ObjectLatents:
        target_hw = (height or self.default_resolution, width or self.default_resolution)
        # The same preprocessing as the training data: binarised mask, white background, resized and padded.
        prepared = [preprocess_object(obj, mask, target_hw) for obj, mask in zip(objects, masks)]
        vae_input = torch.stack([p[0] for p in prepared])  # [B,3,H,W] in [-1,1], white outside the mask
        mask_batch = torch.stack([p[1] for p in prepared])  # [B,1,H,W]
        return self._encode_batch(vae_input, mask_batch, [p[2] for p in prepared], objects, masks)

    def _encode_batch(self, vae_input, mask_batch, boxes, objects, masks) -> ObjectLatents:
        """The latents of preprocessed objects, computed as training computes them from a batch."""
        device = self._execution_device
        with self._vae_dtype_context():
            object_latents = encode_latents(self.vae, vae_input.to(device))  # [B,4,h,w]
        latent_hw = tuple(object_latents.shape[-2:])
        return ObjectLatents(
            object_latents=object_latents,
            mask_latent=mask_to_latent(mask_batch.to(device, torch.float32), latent_hw, self.unet.mask_channels),
            boxes=boxes,
            sizes=[tuple(o.shape[-2:]) for o in objects],
            objects=objects,
            masks=masks,
        )

    def predict_latents(
        self,
        prepared: ObjectLatents,
        light: torch.Tensor,
        num_inference_steps: int = 1,
        generator=None,
        rows: list[int] | None = None,
        latents: torch.Tensor | None = None,
    ):
        """Integrates the flow from pure noise at t = 1 to t = 0: one step gives x0 = x1 - v(x1, t=1). `rows` (one
        image index per row of `light`) runs several lights per object in the same batch: each object's latents,
        encoded once, and its starting noise are shared by all its lights, so a light's map is the one a single-light
        call with the same generator gives. `latents`: that starting noise given instead of drawn, [B,4,h,w]."""
        device, dtype = self._execution_device, self.unet.dtype
        object_latents = prepared.object_latents.to(device, dtype)
        mask_latent = prepared.mask_latent.to(device, dtype)
        if latents is None:
            latents = randn_tensor(object_latents.shape, generator=generator, device=device, dtype=dtype)  # [B,4,h,w]
        else:
            check_start_latents(latents, tuple(object_latents.shape))
            latents = latents.to(device, dtype)
        if rows is not None:
            index = torch.tensor(rows, device=device)
            object_latents, mask_latent, latents = object_latents[index], mask_latent[index], latents[index]  # [N,...]
        self.scheduler.set_timesteps(sigmas=inference_sigmas(num_inference_steps), device=device)
        timesteps = self.scheduler.timesteps
        light = light.to(device)
        for timestep in self.progress_bar(timesteps) if num_inference_steps > 1 else timesteps:
            model_input = torch.cat([latents, mask_latent, object_latents], dim=1)  # [B,8+k*k,h,w]
            velocity = self.unet(model_input, timestep.expand(latents.shape[0]), light).sample  # [B,4,h,w]
            latents = self.scheduler.step(velocity, timestep, latents).prev_sample
        return latents

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        object_image=None,
        mask=None,
        theta: float | Sequence[float] | None = None,
        phi: float | Sequence[float] | None = None,
        size: float | Sequence[float] | None = None,
        num_inference_steps: int = 1,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        background=None,
        intensity: float | Sequence[float] = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
        object_latents: ObjectLatents | None = None,
        lights: Sequence | None = None,
        ambient: float = 0.0,
        object_height: float | Sequence[float] | None = None,
        return_light_maps: bool = False,
        latents: torch.Tensor | None = None,
    ):
        r"""
        Predicts shadow maps for cut-out objects.

        Args:
            object_image: PIL image, numpy (uint8 HWC or float HWC in [0, 1]) or tensor ([B,3,H,W] float or uint8),
                one or a list. RGBA is accepted: the mask is its alpha channel when `mask` is None.
            mask: the object mask(s) in [0, 1] (1 = object), same size as the image; soft edges allowed.
            theta: light polar angle(s) in degrees, [0, 90) (0 = light straight above, shadow under the object).
                Default 30.
            phi: light azimuth(s) in degrees; 0 = light on the image's right, shadow to the left. Periodic. Default 0.
            size: area-light side(s), > 0 (2..8 in the paper's data; bigger = softer). Default 2.
            num_inference_steps: 1 (the model's regime) or more Euler steps along the flow.
            height, width: processing size (multiples of 8); default: the training resolution, square.
            generator: torch generator(s) for the starting noise.
            background: optional background image(s); when given, `images` holds the composites.
            intensity: shadow strength(s) >= 0 used for compositing only; `shadow_maps` stay raw.
            output_type: "pil", "np", "pt" or "latent" (see [`ShadowPipelineOutput`]).
            object_latents: the result of `encode_object` to skip re-encoding the same objects.
            lights: several lights at once instead of theta/phi/size: a list of lights for every image, or one list
                per image; each a `Light`, a dict {theta, phi, size, power} or a (theta, phi, size[, power]) tuple,
                power = relative total power (default 1). Every light's map is predicted in ONE batched UNet call
                (the object encoded once, its noise shared) and `shadow_maps` holds the composed map
                s = (1 - ambient) x clamp(sum_i c_i s_i) with `light_coefficients` (README "Several lights").
            ambient: with `lights`, the fraction in [0, 1) of the ground's irradiance that casts no drawable shadow
                (e.g. `lights_from_environment(...).ambient`); it only lightens the shadow.
            object_height: with `lights`, the object's height in the training units (largest side 2.0) used for
                the coefficients; default: estimated from each mask (`estimate_object_height`).
            return_light_maps: with `lights`, also return each light's own map as `light_maps`.
            latents: the starting noise at t = 1 instead of drawing it from `generator`, a float tensor
                [B, 4, height / 8, width / 8] (one per image; with `lights`, shared by each image's lights), e.g. to
                reuse one draw across calls.

        Examples:
        """
        # 1. Inputs as lists of [C,H,W] tensors in [0, 1]
        if object_latents is None:
            objects, masks = self._prepare_images(object_image, mask)
        else:
            if not isinstance(object_latents, ObjectLatents) or not object_latents.objects:
                raise ValueError(
                    "`object_latents` must be what `pipe.encode_object(...)` returns (ObjectLatents with its objects), "
                    f"got {type(object_latents).__name__}."
                )
            given = {"object_image": object_image, "mask": mask, "height": height, "width": width}
            ignored = [f"`{name}`" for name, value in given.items() if value is not None]
            if ignored:
                raise ValueError(
                    f"Give `object_latents` or {'/'.join(ignored)}, not both: the objects, their masks and the "
                    "processing size were fixed by `encode_object`; pass them there."
                )
            objects, masks = object_latents.objects, object_latents.masks
        batch_size = len(objects)
        light_lists = None
        if lights is not None:
            given = [name for name, value in (("theta", theta), ("phi", phi), ("size", size)) if value is not None]
            if given:
                raise ValueError(
                    f"Give either `lights` (several lights at once) or `{'`/`'.join(given)}` (one light), not both: "
                    "`lights` already sets every light's theta, phi and size."
                )
            light_lists = check_lights(lights, batch_size)
            ambient = check_ambient(ambient)
            if output_type == "latent":
                raise ValueError(
                    "`output_type='latent'` does not go with `lights=`: several lights' maps are composed after "
                    "decoding. Use 'pt' (or `return_light_maps=True` for each light's map)."
                )
            rows = [b for b, group in enumerate(light_lists) for _ in group]  # the image of each predicted map
            flat = [light for group in light_lists for light in group]
            lights = tuple([getattr(light, key) for light in flat] for key in LIGHT_KEYS)
        else:
            if ambient != 0.0 or object_height is not None or return_light_maps:
                raise ValueError("`ambient`, `object_height` and `return_light_maps` apply to `lights=` only.")
            rows = None
            theta, phi, size = (30.0 if theta is None else theta), (0.0 if phi is None else phi), size
            size = 2.0 if size is None else size
            lights = tuple(_as_list(v, n, batch_size) for v, n in ((theta, "theta"), (phi, "phi"), (size, "size")))
        intensities = _as_list(intensity, "intensity", batch_size)
        self.check_inputs(
            objects,
            masks,
            lights,
            intensities,
            num_inference_steps,
            height,
            width,
            output_type,
            background,
            generator,
            objects_checked=object_latents is not None,
        )
        if light_lists is not None:
            heights = self._object_heights(object_height, masks, batch_size)
            coefficients = [light_coefficients(group, h) for group, h in zip(light_lists, heights)]
        backgrounds = None
        if background is not None:  # read and checked before the model runs, not after
            backgrounds = [image_to_tensor(b, "background")[:3] for b in _split_images(background, "background")]
            if len(backgrounds) not in (1, batch_size):
                raise ValueError(
                    f"`background` has {len(backgrounds)} images; give one or one per object ({batch_size})."
                )
            for b in backgrounds:
                _check_not_empty(*b.shape[-2:], "`background`")
            backgrounds = backgrounds * batch_size if len(backgrounds) == 1 else backgrounds

        # 2. Encode the objects (resize with the aspect kept, pad, white background)
        prepared = object_latents if object_latents is not None else self._encode(objects, masks, height, width)

        # 3. One (or more) rectified-flow steps from noise
        light = torch.tensor(lights, dtype=torch.float64).T  # [N,3] raw degrees / size; phi wrapped in the UNet
        latents = self.predict_latents(prepared, light, num_inference_steps, generator, rows, latents)  # [N,4,h,w]
        if output_type == "latent":  # undecoded, as diffusers' pipelines give them: decode_shadow(pipe.vae, latents)
            self.maybe_free_model_hooks()
            return (latents, None) if not return_dict else ShadowPipelineOutput(shadow_maps=latents, images=None)

        # 4. Decode the gray map and undo the resize
        with self._vae_dtype_context():
            shadow_batch = decode_shadow(self.vae, latents).cpu()  # [B,1,H',W'] in [0,1]
        image_of_row = rows if rows is not None else list(range(batch_size))
        row_maps = [
            clear_under_object(
                unpad_and_resize(shadow_batch[n : n + 1], prepared.boxes[b], prepared.sizes[b])[0].clamp(0, 1),
                prepared.masks[b],
            )
            for n, b in enumerate(image_of_row)
        ]  # each [1,H,W], zero on the object
        light_maps = None
        if light_lists is None:
            shadow_maps = row_maps
        else:  # several lights: compose each image's maps (docs/design.md §8, README "Several lights")
            light_maps = [torch.stack([m for m, b in zip(row_maps, rows) if b == i]) for i in range(batch_size)]
            shadow_maps = [compose_light_maps(maps, c, ambient) for maps, c in zip(light_maps, coefficients)]

        # 5. Composite when a background is given
        images = None
        if backgrounds is not None:
            images = [
                composite_tensors(o[None], m[None], s[None], b[None], intensities[i])[0]
                for i, (o, m, s, b) in enumerate(zip(prepared.objects, prepared.masks, shadow_maps, backgrounds))
            ]
        self.maybe_free_model_hooks()

        # 6. Output type
        shadow_out, images_out = _format_outputs(shadow_maps, images, output_type)
        light_maps_out = None
        if return_light_maps:
            light_maps_out = [
                [shadow_map_to_pil(m) for m in maps]
                if output_type == "pil"
                else (maps if output_type == "pt" else maps[:, 0].numpy())
                for maps in light_maps
            ]
        if not return_dict:
            return (shadow_out, images_out, light_maps_out) if return_light_maps else (shadow_out, images_out)
        return ShadowPipelineOutput(shadow_maps=shadow_out, images=images_out, light_maps=light_maps_out)

    @staticmethod
    def _object_heights(object_height, masks, batch_size: int) -> list[float]:
        if object_height is None:
            return [estimate_object_height(mask) for mask in masks]
        heights = _as_list(object_height, "object_height", batch_size)
        if any(h < 0 for h in heights):
            raise ValueError(f"`object_height` must be >= 0, got {heights}.")
        return heights


def _format_outputs(shadow_maps: list[torch.Tensor], images: list[torch.Tensor] | None, output_type: str):
    if output_type == "pil":
        pil_images = None
        if images is not None:
            pil_images = [
                PIL.Image.fromarray((i.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))
                for i in images
            ]
        return [shadow_map_to_pil(s) for s in shadow_maps], pil_images
    shadow_batch = torch.stack(shadow_maps)  # [B,1,H,W]
    image_batch = torch.stack(images) if images is not None else None  # [B,3,H,W]
    if output_type == "pt":
        return shadow_batch, image_batch
    return shadow_batch[:, 0].numpy(), (image_batch.permute(0, 2, 3, 1).numpy() if image_batch is not None else None)


class _VaeUpcast:
    def __init__(self, vae):
        self.vae = vae

    def __enter__(self):
        self.vae.to(torch.float32)
        return self

    def __exit__(self, *exc):
        self.vae.to(torch.float16)
        return False


# --------------------------------------------------------------------------------------------------------------------
# 6. LoRA files: the reader of what `train_shadow_sdxl.py`'s `save_lora_state` writes (training resume and
#    `ShadowPipeline.load_lora_weights`).
# --------------------------------------------------------------------------------------------------------------------


def load_lora_state(unet: ShadowUNet, folder: str | os.PathLike) -> None:
    """Loads the adapter weights and the fully trained modules of a LoRA folder into `unet`, which must
    already carry an adapter with the same configuration. Raises ValueError naming any weight that does not fit."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    inner = unet.unet
    result = set_peft_model_state_dict(inner, load_file(str(folder / LORA_ADAPTER_WEIGHTS)))
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [k for k in getattr(result, "missing_keys", []) if ".lora_" in k]
    if unexpected or missing:
        raise ValueError(
            f"The LoRA in {folder} does not fit this UNet: unexpected {unexpected[:3]}, missing {missing[:3]} "
            f"({len(unexpected)} and {len(missing)} in all). Was it trained on another base model?"
        )
    full = load_file(str(folder / LORA_FULL_WEIGHTS))
    own = inner.state_dict()
    wrong = [k for k, v in full.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{folder / LORA_FULL_WEIGHTS} does not fit this UNet: {wrong[:3]} (shape or name).")
    inner.load_state_dict(full, strict=False)


def _lora_mask_channels(folder: Path) -> int | None:
    """The mask channels of the conv_in a LoRA folder's fully trained modules hold (None when they hold none)."""
    from safetensors import safe_open

    path = folder / LORA_FULL_WEIGHTS
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        if "conv_in.weight" not in handle.keys():
            return None
        return input_mask_channels(handle.get_slice("conv_in.weight").get_shape()[1])


def _lora_folder(name_or_path: str | os.PathLike, subfolder: str | None, **kwargs) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        candidates = [path / subfolder] if subfolder else [path, path / LORA_SUBFOLDER]
        for candidate in candidates:
            if (candidate / "adapter_config.json").is_file():
                return candidate
        raise ValueError(f"No LoRA (adapter_config.json) in {' or '.join(str(c) for c in candidates)}.")
    from huggingface_hub import snapshot_download

    subfolder = subfolder or LORA_SUBFOLDER
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    local = snapshot_download(str(name_or_path), allow_patterns=[f"{subfolder}/*"], **hub_kwargs)
    return Path(local) / subfolder
