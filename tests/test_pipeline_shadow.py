"""ShadowUNet conversion, rectified-flow math, the shared interfaces and ShadowPipeline (docs/design.md §3, §8)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DConditionModel

import pipeline_shadow as ps
from pipeline_shadow import ShadowPipeline, ShadowUNet

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "shadow-small"

# ----- helpers ---------------------------------------------------------------------------------------------------


def _rgba_object(height=48, width=64, box=(10, 30, 20, 40)) -> PIL.Image.Image:
    rgba = np.zeros((height, width, 4), np.uint8)
    top, bottom, left, right = box
    rgba[top:bottom, left:right] = [200, 60, 40, 255]
    return PIL.Image.fromarray(rgba, "RGBA")


def _activate_light(unet: ShadowUNet, seed: int = 0) -> None:
    """The converted model ignores the light at init (zero last layer); give the projection random weights so tests
    can see the light's effect."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in unet.unet.class_embedding.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def _call(pipe, image, seed=0, **kwargs):
    kwargs.setdefault("output_type", "np")
    return pipe(image, generator=torch.Generator().manual_seed(seed), **kwargs).shadow_maps


# ----- shared interfaces -----------------------------------------------------------------------------------------


def test_wrap_phi():
    assert ps.wrap_phi(370.0) == 10.0 and ps.wrap_phi(-10.0) == 350.0
    phis = torch.tensor([0.0, 10.0, 359.0, 360.0, -1.0])
    assert torch.equal(ps.wrap_phi(phis), torch.tensor([0.0, 10.0, 359.0, 0.0, 359.0], dtype=torch.float64))


def test_resize_and_pad_keeps_aspect_and_round_trips():
    rows, cols = torch.meshgrid(torch.linspace(0, 1, 30), torch.linspace(0, 1, 60), indexing="ij")
    image = torch.stack([rows, cols, rows * cols])[None]  # smooth, so resampling is nearly lossless
    padded, box = ps.resize_and_pad(image, (64, 64), fill=1.0)
    assert padded.shape == (1, 3, 64, 64)
    assert (box.height, box.width) == (32, 64)  # 1:2 kept, never squashed
    assert torch.all(padded[..., : box.top, :] == 1.0) and torch.all(padded[..., box.top + box.height :, :] == 1.0)
    restored = ps.unpad_and_resize(padded, box, (30, 60))
    assert restored.shape == image.shape
    assert (restored - image).abs().max() < 0.05  # a down/up-sampling round trip, not an exact one


def test_prepare_object_image_whitens_outside_mask():
    rgb = torch.zeros(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, 1:3] = 1.0
    prepared = ps.prepare_object_image(rgb, mask)
    assert prepared.min() == -1.0 and prepared.max() == 1.0
    assert torch.all(prepared[..., 0, 0] == 1.0) and torch.all(prepared[..., 1, 1] == -1.0)


def test_shadow_vae_encoding_round_trip_without_vae():
    shadow = torch.rand(2, 1, 8, 8)
    as_input = ps.shadow_to_vae_input(shadow)
    assert as_input.shape == (2, 3, 8, 8) and as_input.min() >= -1 and as_input.max() <= 1
    assert torch.allclose(ps.vae_output_to_shadow(as_input), shadow, atol=1e-6)


def test_gray_to_tensor_reads_16_bit_png(tmp_path):
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    PIL.Image.fromarray(values).save(tmp_path / "s.png")
    tensor = ps.gray_to_tensor(PIL.Image.open(tmp_path / "s.png"))
    assert torch.allclose(tensor, torch.tensor([[[0.0, 32768 / 65535, 1.0]]]), atol=1e-6)


def test_mask_to_latent_area_average():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :8] = 1.0
    latent = ps.mask_to_latent(mask, (2, 2))
    assert torch.equal(latent, torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))


def test_detailed_mask_latent_keeps_what_the_area_average_loses():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, 3] = 1.0  # a one-pixel pole: 1/8 of a latent cell's width
    area = ps.mask_to_latent(mask, (2, 2))
    detailed = ps.mask_to_latent(mask, (2, 2), channels=64)
    assert detailed.shape == (1, 64, 2, 2)
    torch.testing.assert_close(detailed.mean(dim=1, keepdim=True), area)  # the mean is the paper's mask, for any k
    assert set(detailed[0, :, 0, 0].unique().tolist()) == {0.0, 1.0}  # every pixel of the cell, not 0.125 smeared
    assert detailed[0, 3, 0, 0] == 1.0 and detailed[0, 4, 0, 0] == 0.0  # row-major inside the cell: column 3 is set
    assert detailed[0, :, 0, 1].sum() == 0.0
    mid = ps.mask_to_latent(mask, (2, 2), channels=4)  # 2 x 2 samples a cell: pixel column 3 lies in sample column 0
    assert torch.equal(mid[0, :, 0, 0], torch.tensor([0.25, 0.0, 0.25, 0.0]))


@pytest.mark.parametrize("channels", [1, 4, 64])
def test_flipped_mask_latent_is_the_latent_of_the_flipped_mask(channels):
    mask = (torch.rand(2, 1, 32, 24, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    latent = ps.mask_to_latent(mask, (4, 3), channels)
    assert torch.equal(ps.flip_mask_latent(latent), ps.mask_to_latent(mask.flip(-1), (4, 3), channels))
    assert torch.equal(ps.flip_mask_latent(latent[0]), ps.mask_to_latent(mask[:1].flip(-1), (4, 3), channels)[0])


@pytest.mark.parametrize("channels", [0, 2, 8, 63, -4])
def test_mask_channels_must_be_a_square(channels):
    with pytest.raises(ValueError, match=f"square number of channels.*got {channels}"):
        ps.mask_to_latent(torch.zeros(1, 1, 8, 8), (1, 1), channels)


def test_with_mask_channels_computes_what_the_area_mask_model_does(tiny_pipeline, tmp_path):
    unet = tiny_pipeline.unet
    _activate_light(unet)
    with torch.no_grad():  # a mask weight that matters: the converted model starts with zeros there
        unet.unet.conv_in.weight[:, 4:5].normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    detailed = unet.with_mask_channels(16)
    assert (unet.mask_channels, detailed.mask_channels, detailed.in_channels) == (1, 16, 24)
    assert detailed.config.unet_config["in_channels"] == 24 and unet.config.unet_config["in_channels"] == 9
    generator = torch.Generator().manual_seed(2)
    mask = (torch.rand(2, 1, 64, 64, generator=generator) > 0.5).float()
    z_t, z_o = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    light, timestep = torch.tensor([[30.0, 90.0, 4.0], [10.0, 200.0, 2.0]]), torch.tensor([1000.0, 1000.0])

    def velocity(model, channels):
        inputs = torch.cat([z_t, ps.mask_to_latent(mask, (8, 8), channels), z_o], dim=1)
        with torch.no_grad():
            return model(inputs, timestep, light).sample

    torch.testing.assert_close(velocity(detailed, 16), velocity(unet, 1), atol=1e-5, rtol=1e-4)
    assert unet.with_mask_channels(1) is unet
    with pytest.raises(ValueError, match="area-averaged .*this one has 16"):
        detailed.with_mask_channels(64)
    detailed.save_pretrained(tmp_path / "unet")
    reloaded = ShadowUNet.from_pretrained(tmp_path / "unet")
    assert reloaded.mask_channels == 16
    torch.testing.assert_close(velocity(reloaded, 16), velocity(detailed, 16))


def test_pipeline_feeds_a_detailed_mask_to_its_unet(tiny_pipeline, tmp_path):
    _activate_light(tiny_pipeline.unet)
    with torch.no_grad():
        tiny_pipeline.unet.unet.conv_in.weight[:, 4:5].normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    image = _rgba_object()
    area = _call(tiny_pipeline, image, theta=30.0, phi=45.0, size=3.0)
    tiny_pipeline.unet = tiny_pipeline.unet.with_mask_channels(64)
    detailed = _call(tiny_pipeline, image, theta=30.0, phi=45.0, size=3.0)
    np.testing.assert_allclose(detailed, area, atol=1e-4)  # the same model, its mask at 8 x 8 samples a cell
    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    reloaded = ShadowPipeline.from_pretrained(tmp_path / "pipe")
    assert reloaded.unet.mask_channels == 64
    np.testing.assert_allclose(_call(reloaded, image, theta=30.0, phi=45.0, size=3.0), detailed, atol=1e-6)


# ----- rectified flow --------------------------------------------------------------------------------------------


def test_rectified_flow_recovers_x0_from_true_velocity():
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 4, 8, 8, generator=generator)
    t = torch.tensor([0.0, 0.25, 0.7, 1.0])
    x_t = ps.rf_interpolate(x0, noise, t)
    assert torch.allclose(x_t[0], x0[0]) and torch.allclose(x_t[3], noise[3])
    velocity = ps.rf_velocity(x0, noise)
    assert torch.allclose(ps.rf_predict_x0(x_t, velocity, t), x0, atol=1e-6)
    # One Euler step from t = 1 to 0 with the true velocity lands on x0 (the straight path).
    assert torch.allclose(ps.rf_euler_step(noise, velocity, torch.ones(4), torch.zeros(4)), x0, atol=1e-6)
    assert torch.equal(ps.rf_model_timestep(torch.tensor([0.5])), torch.tensor([500.0]))


@pytest.mark.parametrize("mode", ps.TIMESTEP_SAMPLING_CHOICES)
def test_sample_timesteps_in_unit_interval(mode):
    t = ps.sample_timesteps(4096, mode, generator=torch.Generator().manual_seed(0))
    assert t.shape == (4096,) and t.min() >= 0 and t.max() <= 1


def test_sample_timesteps_shapes_the_distribution():
    generator = torch.Generator().manual_seed(0)
    uniform = ps.sample_timesteps(20000, "uniform", generator=generator)
    shifted = ps.sample_timesteps(20000, "shifted", generator=generator)
    logit = ps.sample_timesteps(20000, "logit_normal", generator=generator)
    assert abs(uniform.mean() - 0.5) < 0.01
    assert shifted.mean() > 0.65  # biased toward t = 1, where one-step inference starts
    assert logit.std() < uniform.std()  # concentrated in the middle
    assert torch.all(ps.sample_timesteps(8, "single_step") == 1.0)
    with pytest.raises(ValueError, match="Unknown timestep sampling 'cosine'"):
        ps.sample_timesteps(2, "cosine")


def test_scheduler_step_matches_pure_euler():
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(sigmas=ps.inference_sigmas(4))
    assert torch.allclose(scheduler.sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert torch.allclose(scheduler.timesteps, ps.rf_model_timestep(torch.tensor([1.0, 0.75, 0.5, 0.25])))
    sample, velocity = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    stepped = scheduler.step(velocity, scheduler.timesteps[0], sample).prev_sample
    assert torch.allclose(stepped, ps.rf_euler_step(sample, velocity, torch.tensor([1.0]), torch.tensor([0.75])))


# ----- conversion ------------------------------------------------------------------------------------------------


def test_widen_conv_in_reproduces_old_conv():
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    weight, bias = ps.widen_conv_in(conv.weight.data, conv.bias.data, 9)
    assert weight.shape == (8, 9, 3, 3) and torch.all(weight[:, 4:] == 0)
    x = torch.randn(2, 4, 6, 6)
    widened = torch.nn.functional.conv2d(torch.cat([x, torch.randn(2, 5, 6, 6) * 0], 1), weight, bias, padding=1)
    assert torch.allclose(widened, conv(x), atol=1e-6)
    with pytest.raises(ValueError, match="Cannot widen"):
        ps.widen_conv_in(conv.weight.data, conv.bias.data, 3)


def test_conversion_drops_cross_attention_and_widens_conv_in(tiny_sdxl_dir, caplog):
    sdxl = UNet2DConditionModel.from_pretrained(tiny_sdxl_dir, subfolder="unet")
    assert any(".attn2." in name for name, _ in sdxl.named_parameters())  # the tiny SDXL really has them
    with caplog.at_level(logging.INFO, logger="pipeline_shadow"):
        unet = ShadowUNet.from_sdxl_unet(sdxl)
    names = [name for name, _ in unet.named_parameters()]
    assert not any(".attn2." in n or (".norm2." in n and "transformer_blocks" in n) for n in names)
    assert not any(n.startswith("unet.add_embedding") for n in names)
    assert unet.unet.conv_in.weight.shape[1] == 9 and torch.all(unet.unet.conv_in.weight[:, 4:] == 0)
    assert torch.equal(unet.unet.conv_in.weight[:, :4], sdxl.conv_in.weight)
    assert torch.all(unet.unet.class_embedding.linear_2.weight == 0)
    # Everything kept is copied from SDXL.
    sdxl_state = sdxl.state_dict()
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(unet.state_dict()[f"unet.{key}"], sdxl_state[key])
    # The config alone says how to rebuild it.
    assert unet.config.unet_config["in_channels"] == 9 and "cross_attention" not in unet.config
    assert unet.config.unet_config["projection_class_embeddings_input_dim"] == 768
    assert "dropped" in caplog.text and "conv_in widened 4 -> 9" in caplog.text and "light embedding" in caplog.text


def test_light_sinusoids_are_weightless(tiny_sdxl_dir):
    unet = ShadowUNet.from_sdxl_unet(UNet2DConditionModel.from_pretrained(tiny_sdxl_dir, subfolder="unet"))
    assert not list(unet.light_sinusoids.parameters()) and not list(unet.light_sinusoids.buffers())
    assert not any(name.startswith("light_sinusoids") for name in unet.state_dict())


def _shipped_module(monkeypatch):
    """The code copy saved beside the shipped weights, imported under its own name (what trust_remote_code runs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shipped_pipeline_shadow", SHIPPED / "unet" / "pipeline_shadow.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_shipped_unet_config_migrates_and_loads_bit_identically(caplog, monkeypatch):
    """models/shadow-small/unet/config.json carries the retired `cross_attention: false`: the current ShadowUNet
    drops it on load without a warning, takes every weight of the file, and predicts exactly what the code saved
    beside those weights predicts."""
    from safetensors.torch import load_file

    assert json.loads((SHIPPED / "unet" / "config.json").read_text())["cross_attention"] is False
    with caplog.at_level(logging.WARNING):
        unet = ShadowUNet.from_pretrained(SHIPPED, subfolder="unet")
    assert "not expected" not in caplog.text and "cross_attention" not in unet.config
    weights = load_file(str(SHIPPED / "unet" / "diffusion_pytorch_model.safetensors"))
    state = unet.state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)

    shipped_unet = _shipped_module(monkeypatch).ShadowUNet.from_pretrained(SHIPPED, subfolder="unet")
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 9, 16, 16, generator=generator)
    timestep, light = torch.tensor([1000.0, 1000.0]), torch.tensor([[30.0, 0.0, 2.0], [10.0, 200.0, 6.0]])
    with torch.no_grad():
        assert torch.equal(unet(sample, timestep, light).sample, shipped_unet(sample, timestep, light).sample)


def test_retired_config_key_with_an_unsupported_value_is_refused(tmp_path):
    config = json.loads((SHIPPED / "unet" / "config.json").read_text())
    assert "cross_attention" not in ps.migrate_shadow_unet_config(config)
    with pytest.raises(ValueError, match="`cross_attention` must be False"):
        ShadowUNet.from_config({**config, "cross_attention": True})


def test_full_size_parameter_counts():
    """The real SDXL config, built on the meta device (no memory, no download): 2.57 B -> 2.02 B parameters."""
    from random_sdxl import unet_config

    with torch.device("meta"):
        sdxl = UNet2DConditionModel.from_config(unet_config("full"))
        shadow = ShadowUNet(unet_config=ps.shadow_unet_config(sdxl.config))
    assert sum(p.numel() for p in sdxl.parameters()) == 2_567_463_684
    assert sum(p.numel() for p in shadow.parameters()) == 2_019_019_844


def test_zero_initialised_light_projection_ignores_light_at_init(tiny_sdxl_dir):
    unet = ShadowUNet.from_sdxl_unet(UNet2DConditionModel.from_pretrained(tiny_sdxl_dir, subfolder="unet"))
    sample = torch.randn(2, 9, 8, 8, generator=torch.Generator().manual_seed(0))
    timestep = torch.tensor([1000.0, 1000.0])
    with torch.no_grad():
        a = unet(sample, timestep, torch.tensor([[10.0, 0.0, 2.0], [10.0, 0.0, 2.0]])).sample
        b = unet(sample, timestep, torch.tensor([[40.0, 200.0, 8.0], [5.0, 90.0, 3.0]])).sample
        assert torch.equal(a, b)
        _activate_light(unet)
        c = unet(sample, timestep, torch.tensor([[40.0, 200.0, 8.0], [5.0, 90.0, 3.0]])).sample
    assert not torch.allclose(a, c)


def test_light_embedding_separates_nearby_degrees_and_wraps_phi(tiny_shadow_dir):
    unet = ShadowUNet.from_pretrained(tiny_shadow_dir, subfolder="unet")
    embedding = unet.light_embedding(torch.tensor([[30.0, 10.0, 2.0], [31.0, 370.0, 2.0], [30.0, 10.0, 2.0]]))
    assert embedding.shape == (3, 768)
    theta_part, phi_part = slice(0, 256), slice(256, 512)
    # One degree apart must be clearly distinguishable (raw degrees, not [0,1]-normalised).
    assert (embedding[0, theta_part] - embedding[1, theta_part]).abs().max() > 0.5
    assert torch.equal(embedding[1, phi_part], embedding[0, phi_part])
    with pytest.raises(ValueError, match=r"`light` must be \[B, 3\]"):
        unet.light_embedding(torch.zeros(2, 2))


def test_shadow_unet_round_trip_is_bit_identical(tiny_shadow_dir, tmp_path):
    unet = ShadowUNet.from_pretrained(tiny_shadow_dir, subfolder="unet")
    _activate_light(unet)
    unet.save_pretrained(tmp_path / "unet")
    reloaded = ShadowUNet.from_pretrained(tmp_path / "unet")
    sample = torch.randn(1, 9, 8, 8, generator=torch.Generator().manual_seed(1))
    light = torch.tensor([[20.0, 45.0, 3.0]])
    with torch.no_grad():
        assert torch.equal(
            unet(sample, torch.tensor([700.0]), light).sample, reloaded(sample, torch.tensor([700.0]), light).sample
        )


# ----- the pipeline ----------------------------------------------------------------------------------------------


def test_from_sdxl_defaults(tiny_sdxl_dir):
    pipe = ShadowPipeline.from_sdxl(tiny_sdxl_dir)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.default_resolution == 16 * 8  # unet sample_size x VAE factor when no training resolution is recorded
    assert not hasattr(pipe, "text_encoder")


def test_output_types_shapes_and_ranges(tiny_pipeline):
    image = _rgba_object(48, 64)
    pil = tiny_pipeline(image, generator=torch.Generator().manual_seed(0)).shadow_maps
    assert len(pil) == 1 and pil[0].mode == "L" and pil[0].size == (64, 48)  # back at the input size
    as_np = _call(tiny_pipeline, image)
    assert as_np.shape == (1, 48, 64) and as_np.dtype == np.float32 and 0 <= as_np.min() and as_np.max() <= 1
    as_pt = _call(tiny_pipeline, image, output_type="pt")
    assert as_pt.shape == (1, 1, 48, 64) and torch.allclose(as_pt[:, 0], torch.from_numpy(as_np))
    assert np.array_equal(np.asarray(pil[0]), (as_np[0] * 255).round().astype(np.uint8))


def test_clear_under_object_uses_the_binarised_mask():
    shadow = torch.full((1, 1, 2, 2), 0.8)
    mask = torch.tensor([[[[0.0, 0.4], [0.5, 1.0]]]])
    assert ps.clear_under_object(shadow, mask).flatten().tolist() == pytest.approx([0.8, 0.8, 0.0, 0.0])


def test_shadow_map_is_zero_on_the_object_only(tiny_pipeline):
    image = _rgba_object(48, 64)
    on_object = np.asarray(image)[..., 3] >= 128
    shadow = _call(tiny_pipeline, image)[0]
    assert on_object.any() and np.all(shadow[on_object] == 0)
    assert shadow[~on_object].max() > 0  # the untrained decoder's output survives off the object


def test_inputs_as_numpy_and_tensor_match_pil(tiny_pipeline):
    image = _rgba_object()
    rgba = np.array(image)
    reference = _call(tiny_pipeline, image)
    from_numpy = _call(tiny_pipeline, rgba[..., :3], mask=rgba[..., 3])
    tensor = torch.from_numpy(rgba[..., :3]).permute(2, 0, 1)[None].float() / 255
    from_tensor = _call(tiny_pipeline, tensor, mask=torch.from_numpy(rgba[..., 3] / 255.0).float()[None, None])
    assert np.allclose(reference, from_numpy, atol=1e-6) and np.allclose(reference, from_tensor, atol=1e-6)


def test_phi_is_periodic_and_light_matters(tiny_pipeline):
    _activate_light(tiny_pipeline.unet)
    image = _rgba_object()
    at_10 = _call(tiny_pipeline, image, phi=10.0)
    assert np.array_equal(at_10, _call(tiny_pipeline, image, phi=370.0))
    assert np.array_equal(at_10, _call(tiny_pipeline, image, phi=-350.0))
    assert not np.array_equal(at_10, _call(tiny_pipeline, image, phi=100.0))


def test_batch_matches_single_calls(tiny_pipeline):
    _activate_light(tiny_pipeline.unet)
    images = [_rgba_object(), _rgba_object(box=(5, 40, 10, 30))]
    generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    batch = tiny_pipeline(
        images, theta=[10.0, 40.0], phi=[0.0, 180.0], size=2.0, generator=generators, output_type="np"
    )
    single_0 = _call(tiny_pipeline, images[0], seed=1, theta=10.0, phi=0.0)
    single_1 = _call(tiny_pipeline, images[1], seed=2, theta=40.0, phi=180.0)
    assert np.allclose(batch.shadow_maps[0], single_0[0], atol=1e-5)
    assert np.allclose(batch.shadow_maps[1], single_1[0], atol=1e-5)


def test_more_steps_run_and_change_the_result(tiny_pipeline):
    image = _rgba_object()
    one = _call(tiny_pipeline, image)
    four = _call(tiny_pipeline, image, num_inference_steps=4)
    assert four.shape == one.shape and not np.array_equal(one, four)


def test_processing_resolution_and_explicit_size(tiny_pipeline):
    image = _rgba_object(48, 64)
    prepared = tiny_pipeline.encode_object(image)
    assert prepared.object_latents.shape == (1, 4, 8, 8)  # config resolution 64 -> 8x8 latents
    prepared = tiny_pipeline.encode_object(image, height=32, width=96)
    assert prepared.object_latents.shape == (1, 4, 4, 12)
    assert _call(tiny_pipeline, image, height=32, width=96).shape == (1, 48, 64)


def test_cached_object_latents_give_the_same_output(tiny_pipeline):
    _activate_light(tiny_pipeline.unet)
    image = _rgba_object()
    prepared = tiny_pipeline.encode_object(image)
    for phi in (0.0, 90.0):
        direct = _call(tiny_pipeline, image, phi=phi)
        cached = tiny_pipeline(
            object_latents=prepared, phi=phi, generator=torch.Generator().manual_seed(0), output_type="np"
        ).shadow_maps
        assert np.array_equal(direct, cached)


def test_background_gives_composites(tiny_pipeline):
    image = _rgba_object(48, 64)
    out = tiny_pipeline(image, background=PIL.Image.new("RGB", (200, 100), (0, 0, 255)), intensity=0.5)
    assert out.images[0].size == (64, 48) and out.images[0].mode == "RGB"
    composite_np = tiny_pipeline(image, background=np.full((10, 10, 3), 255, np.uint8), output_type="np").images
    assert composite_np.shape == (1, 48, 64, 3)
    # Inside the object the composite is the object itself.
    assert np.allclose(composite_np[0, 20, 30], np.array([200, 60, 40]) / 255, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"theta": 90.0}, r"`theta` must lie in \[0, 90\)"),
        ({"theta": -1.0}, r"`theta` must lie in \[0, 90\)"),
        ({"size": 0.0}, r"`size` \(area-light side\) must be > 0"),
        ({"intensity": -0.5}, "`intensity` must be >= 0"),
        ({"height": 60}, "`height` must be a positive multiple of 8 and >= 32"),
        ({"height": -8}, "`height` must be a positive multiple of 8 and >= 32"),
        ({"width": 63}, "`width` must be a positive multiple of 8 and >= 32"),
        ({"num_inference_steps": 0}, "`num_inference_steps` must be an integer >= 1"),
        ({"output_type": "tensor"}, "`output_type` must be one of"),
        ({"phi": [0.0, 90.0]}, "`phi` has 2 values but the batch has 1 images"),
        ({"theta": "steep"}, "`theta` must be a finite number"),
        ({"theta": float("nan")}, "`theta` must be a finite number"),
    ],
)
def test_check_inputs_errors(tiny_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline(_rgba_object(), **kwargs)


def test_input_errors(tiny_pipeline):
    rgb = PIL.Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="is RGB and no `mask` was given"):
        tiny_pipeline(rgb)
    with pytest.raises(ValueError, match=r"is \(32, 32\) \(H, W\) but its `mask` is \(16, 16\)"):
        tiny_pipeline(rgb, mask=PIL.Image.new("L", (16, 16)))
    with pytest.raises(ValueError, match="must be a PIL image, a numpy array or a torch tensor"):
        tiny_pipeline("object.png")
    with pytest.raises(ValueError, match=r"float values must lie in \[0, 1\]"):
        tiny_pipeline(torch.full((1, 3, 8, 8), 2.0), mask=torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match="use output_type='pil'"):
        tiny_pipeline([_rgba_object(32, 32), _rgba_object(48, 64)], output_type="np")
    # ... while "pil" handles mixed sizes.
    maps = tiny_pipeline([_rgba_object(32, 32), _rgba_object(48, 64)]).shadow_maps
    assert [m.size for m in maps] == [(32, 32), (64, 48)]


def test_composite_hand_made_case():
    obj = torch.zeros(3, 2, 2)
    obj[0] = 1.0  # red object
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.5]]])
    shadow = torch.tensor([[[0.0, 1.0], [0.5, 1.0]]])
    background = torch.full((3, 2, 2), 0.8)
    out = ps.composite(obj, mask, shadow, background, intensity=0.5)
    # Object pixel: the object. Shadow 1 x 0.5: background darkened by half. Shadow 0.5 x 0.5: by a quarter.
    assert torch.allclose(out[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(out[:, 0, 1], torch.full((3,), 0.4))
    assert torch.allclose(out[:, 1, 0], torch.full((3,), 0.6))
    # Soft mask 0.5 over a half-darkened background: 0.5 * object + 0.5 * 0.4.
    assert torch.allclose(out[:, 1, 1], torch.tensor([0.7, 0.2, 0.2]))
    # Intensity clamps: 3 x 1.0 -> fully dark.
    assert torch.allclose(ps.composite(obj, mask, shadow, background, intensity=3.0)[:, 0, 1], torch.zeros(3))
    with pytest.raises(ValueError, match="`intensity` must be >= 0"):
        ps.composite(obj, mask, shadow, background, intensity=-1.0)


def test_composite_pil_resizes_background_without_squashing():
    image = _rgba_object(48, 64)
    background = PIL.Image.new("RGB", (640, 100), (10, 200, 30))
    shadow = PIL.Image.new("L", (64, 48), 0)
    result = ps.composite(image, None, shadow, background)
    assert result.size == (64, 48) and result.getpixel((0, 0)) == (10, 200, 30)


# ----- loading and sharing ---------------------------------------------------------------------------------------


def test_save_and_reload_pipeline_is_bit_identical(tiny_pipeline, tmp_path):
    _activate_light(tiny_pipeline.unet)
    tiny_pipeline.register_to_config(default_processing_resolution=32)
    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_shadow", "ShadowPipeline"]
    assert index["unet"] == ["pipeline_shadow", "ShadowUNet"]
    assert (tmp_path / "pipe" / "pipeline_shadow.py").is_file() and (
        tmp_path / "pipe" / "unet" / "pipeline_shadow.py"
    ).is_file()
    reloaded = ShadowPipeline.from_pretrained(tmp_path / "pipe")  # no trust_remote_code needed for our own class
    assert reloaded.default_resolution == 32
    image = _rgba_object()
    assert np.array_equal(_call(tiny_pipeline, image, phi=45.0), _call(reloaded, image, phi=45.0))


def test_from_pretrained_rejects_unknown_arguments(tiny_shadow_dir):
    with pytest.raises(ValueError, match="Unexpected arguments for ShadowPipeline.from_pretrained: foo"):
        ShadowPipeline.from_pretrained(tiny_shadow_dir, foo=1)


def test_trust_remote_code_loads_folder_without_the_project(tiny_pipeline, tmp_path):
    """The saved folder is all `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` needs: run it from an
    unrelated directory, with the project off sys.path and an empty HF_HOME, offline."""
    _activate_light(tiny_pipeline.unet)
    folder = tmp_path / "pipe"
    tiny_pipeline.save_pretrained(folder)
    expected = _call(tiny_pipeline, torch.full((1, 3, 32, 32), 0.5), mask=torch.ones(1, 1, 32, 32), phi=30.0)
    np.save(tmp_path / "expected.npy", expected)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(pipe).__name__ == "ShadowPipeline" and type(pipe.unet).__name__ == "ShadowUNet"
        assert type(pipe).__module__.startswith("diffusers_modules"), type(pipe).__module__  # the folder's own copy
        out = pipe(torch.full((1, 3, 32, 32), 0.5), mask=torch.ones(1, 1, 32, 32), phi=30.0,
                   generator=torch.Generator().manual_seed(0), output_type="np").shadow_maps
        assert np.array_equal(out, np.load({str(tmp_path / "expected.npy")!r})), "outputs differ"
        print("OK")
        """
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_fast_inference_matches_the_plain_pipeline(tiny_pipeline):
    """The compiled path is the same computation: here through dynamo's graph capture with the `eager` backend (an
    inductor build of even the tiny UNet takes ~50 s on CI's CPU; `aot_eager` trips a GroupNorm contiguity check in
    torch 2.13 on CPU); on a GPU, `inductor` with CUDA graphs (benchmarks/bench_inference.py --fast)."""
    _activate_light(tiny_pipeline.unet)
    image = _rgba_object()
    plain = _call(tiny_pipeline, image, phi=30.0)
    tiny_pipeline.enable_fast_inference(mode=None, backend="eager")
    assert np.allclose(_call(tiny_pipeline, image, phi=30.0), plain, atol=1e-5)
    prepared = tiny_pipeline.encode_object(image)
    relit = tiny_pipeline(
        object_latents=prepared, phi=30.0, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    assert np.allclose(relit.shadow_maps, plain, atol=1e-5)


def test_example_doc_string_runs_as_written(tmp_path, monkeypatch):
    """The EXAMPLE_DOC_STRING, executed line by line with the shipped small model and a cut-out on disk."""
    code = "\n".join(
        line[4:] for line in ps.EXAMPLE_DOC_STRING.splitlines() if line.startswith(">>> ") or line.startswith("... ")
    )
    (tmp_path / "models").symlink_to(REPO / "models")
    _rgba_object(96, 128).save(tmp_path / "object.png")
    PIL.Image.new("RGB", (160, 120), (90, 140, 200)).save(tmp_path / "background.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "EXAMPLE_DOC_STRING", "exec"), {})
    assert PIL.Image.open(tmp_path / "shadow.png").size == (128, 96)
    assert PIL.Image.open(tmp_path / "composite.png").mode == "RGB"


# ----- input checks shared by every entry point (issue #18) --------------------------------------------------------


@pytest.mark.parametrize("entry", ["call", "encode_object"])
def test_encode_object_and_call_share_the_input_checks(tiny_pipeline, entry):
    run = tiny_pipeline if entry == "call" else tiny_pipeline.encode_object
    with pytest.raises(ValueError, match="is RGB and no `mask` was given"):
        run(PIL.Image.new("RGB", (32, 32)))
    for height in (60, 12, -8, 0, 24):
        with pytest.raises(ValueError, match=r"`height` must be a positive multiple of 8 and >= 32"):
            run(_rgba_object(), height=height)
    with pytest.raises(ValueError, match=r"`object_image`\[0\] is 0x0 \(W x H\): every side must be at least 8"):
        run(torch.zeros(1, 3, 0, 0), mask=torch.zeros(1, 1, 0, 0))
    with pytest.raises(ValueError, match=r"is 1x1 \(W x H\)"):
        run(_rgba_object(1, 1, box=(0, 1, 0, 1)))
    nan_image = torch.full((1, 3, 32, 32), 0.5)
    nan_image[0, 1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"`object_image` has 1 non-finite values \(NaN or Inf\)"):
        run(nan_image, mask=torch.ones(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"`mask` has 1024 non-finite values"):
        run(torch.full((1, 3, 32, 32), 0.5), mask=np.full((32, 32), np.inf, np.float32))


def test_empty_mask_and_transparent_cutout_warn(tiny_pipeline, caplog):
    transparent = PIL.Image.new("RGBA", (32, 32), (200, 60, 40, 0))
    for run in (tiny_pipeline, tiny_pipeline.encode_object):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline_shadow"):
            run(transparent)
            run(torch.full((1, 3, 32, 32), 0.5), mask=torch.zeros(1, 1, 32, 32))
        assert sum("is empty (no pixel >= 0.5" in r.getMessage() for r in caplog.records) == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline_shadow"):
        prepared = tiny_pipeline.encode_object(transparent)
        for phi in (0.0, 90.0, 180.0):  # re-lighting the encoded object: it was warned about once, at encoding
            tiny_pipeline(object_latents=prepared, phi=phi)
    assert sum("is empty (no pixel >= 0.5" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("light", "message"),
    [
        ({"theta": float("inf")}, "`theta` must be a finite number"),
        ({"phi": float("nan")}, "`phi` must be a finite number"),
        ({"theta": 95.0}, r"`theta` must lie in \[0, 90\)"),
        ({"size": -1.0}, r"`size` \(area-light side\) must be > 0 and <= 100"),
        ({"size": 1e6}, r"`size` \(area-light side\) must be > 0 and <= 100"),
    ],
)
def test_absurd_lights_are_refused_by_the_pipeline_and_the_unet(tiny_pipeline, light, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline(_rgba_object(), **light)
    row = [light.get("theta", 30.0), light.get("phi", 0.0), light.get("size", 2.0)]
    with pytest.raises(ValueError, match=message):  # the UNet itself: a user's own loop cannot embed it either
        tiny_pipeline.unet(torch.zeros(1, 9, 8, 8), torch.tensor([1000.0]), torch.tensor([row]))


def test_light_outside_the_trained_range_warns(tiny_pipeline, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline_shadow"):
        tiny_pipeline(_rgba_object(), theta=60.0, size=12.0)
    messages = [r.getMessage() for r in caplog.records]
    assert any("`theta` = 60 is outside the training range [0, 45]" in m for m in messages)
    assert any("`size` = 12 is outside the training range [2, 8]" in m for m in messages)


def test_every_pil_mode_is_read_or_refused_with_its_mode(tmp_path):
    """No mode becomes a blank image silently: 16-bit (either byte order) and float gray keep their values as object
    images and maps; coloured, transparent and non-gray modes are refused as maps, naming the mode or the reason."""
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    sixteen = (ramp * 65535).round().astype(np.uint16)
    images = {
        "I;16": PIL.Image.fromarray(sixteen),
        "I;16B": PIL.Image.frombytes("I;16B", (64, 64), sixteen.astype(">u2").tobytes()),
        "I": PIL.Image.fromarray(sixteen.astype(np.int32)),
        "F": PIL.Image.fromarray(ramp),
    }
    for mode, image in images.items():
        assert image.mode == mode
        for read in (ps.gray_to_tensor, ps.image_to_tensor):
            values = read(image)
            assert torch.allclose(values[0], torch.from_numpy(ramp), atol=1e-4), (mode, read.__name__)
    rgb = PIL.Image.fromarray((np.stack([ramp, ramp[::-1], ramp], 2) * 255).astype(np.uint8))
    refused = {
        "RGB": (rgb, "is colored"),
        "LA": (PIL.Image.merge("LA", [rgb.getchannel(0), rgb.getchannel(1)]), "has transparency"),
        "CMYK": (rgb.convert("CMYK"), "has image mode CMYK, which is not a gray image"),
        "YCbCr": (rgb.convert("YCbCr"), "has image mode YCbCr"),
        "HSV": (rgb.convert("HSV"), "has image mode HSV"),
        "La": (PIL.Image.merge("LA", [rgb.getchannel(0)] * 2).convert("La"), "has premultiplied-alpha mode La"),
    }
    for image, message in refused.values():
        with pytest.raises(ValueError, match=f"`mask` {message}"):
            ps.gray_to_tensor(image, "mask")
    with pytest.raises(ValueError, match="`object_image` has image mode La, which cannot be read as RGB"):
        ps.image_to_tensor(refused["La"][0])
    sixteen_rgb = np.repeat(sixteen[:, :, None], 3, axis=2)  # a 16-bit numpy object image keeps its scale too
    assert torch.allclose(ps.image_to_tensor(sixteen_rgb)[1], torch.from_numpy(ramp), atol=1e-4)
    for mode in ("CMYK", "YCbCr", "HSV", "LAB", "P", "1", "L"):  # colour / palette / bilevel objects convert properly
        converted = ps.image_to_tensor(rgb.convert(mode))
        assert converted.shape == (3, 64, 64) and converted.std() > 0.02, mode  # not blank


def test_trust_remote_code_in_process_leaves_nothing_in_the_users_cache(tiny_pipeline, tmp_path):
    """conftest points HF_HOME / HF_MODULES_CACHE at a throw-away folder before diffusers is imported: the module copy
    trust_remote_code makes goes there, not into ~/.cache/huggingface."""
    from conftest import TEST_CACHE_HOME
    from diffusers import DiffusionPipeline
    from diffusers.utils.constants import HF_MODULES_CACHE

    assert Path(HF_MODULES_CACHE).is_relative_to(TEST_CACHE_HOME)
    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    assert type(pipe).__module__.startswith("diffusers_modules")
    assert list(Path(HF_MODULES_CACHE).rglob("pipeline_shadow.py"))  # the copy landed in the test cache


def test_background_and_step_count_are_checked_before_the_model_runs(tiny_pipeline):
    with pytest.raises(ValueError, match=r"`background` is 0x0 \(W x H\): it must have at least one pixel"):
        tiny_pipeline(_rgba_object(), background=torch.zeros(3, 0, 0))
    with pytest.raises(ValueError, match=r"`background` is 0x0"):
        ps.composite(torch.ones(3, 16, 16), torch.ones(1, 16, 16), torch.zeros(1, 16, 16), torch.zeros(3, 0, 0))
    with pytest.raises(ValueError, match="`num_inference_steps` must be an integer >= 1"):
        tiny_pipeline(_rgba_object(), num_inference_steps=True)


# ----- inputs nobody tried: each refused with the argument named and the rule ------------------------------------


def test_pixel_dtypes_are_read_by_their_scale_or_refused_by_name():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2:6, 2:6] = 255
    as_uint8_tensor = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()  # torchvision's read_image gives this
    assert torch.equal(ps.image_to_tensor(as_uint8_tensor), ps.image_to_tensor(rgb))
    assert ps.gray_to_tensor(torch.full((8, 8), 255, dtype=torch.uint8)).max() == 1.0
    assert ps.gray_to_tensor((rgb[..., 0] > 0).astype(np.int64)).max() == 1.0  # 0/1 integers stay legal
    with pytest.raises(ValueError, match=r"`object_image` is int64 with values in \[0, 255\]: give uint8"):
        ps.image_to_tensor(rgb.astype(np.int64))
    with pytest.raises(ValueError, match=r"`mask` is int32 with values in \[0, 255\]"):
        ps.gray_to_tensor(rgb[..., 0].astype(np.int32))
    with pytest.raises(ValueError, match="`object_image` has dtype complex64, which is not a pixel type"):
        ps.image_to_tensor(torch.zeros(3, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="`object_image` has dtype object"):
        ps.image_to_tensor(rgb.astype(object))
    with pytest.raises(ValueError, match="`mask` is a meta tensor"):
        ps.gray_to_tensor(torch.zeros(8, 8, device="meta"))


def test_call_refuses_bad_generators_latents_batches_and_ambient_before_the_model_runs(tiny_pipeline):
    cutout = _rgba_object()
    with pytest.raises(ValueError, match="`generator` must be a torch.Generator"):
        tiny_pipeline(cutout, generator=0)
    with pytest.raises(ValueError, match="`generator` has 2 generators but the batch has 1 images"):
        tiny_pipeline(cutout, generator=[torch.Generator(), torch.Generator()])
    for empty in (torch.zeros(0, 4, 32, 32), np.zeros((0, 32, 32, 4), np.uint8)):
        with pytest.raises(ValueError, match="`object_image` is an empty batch"):
            tiny_pipeline(empty)
    with pytest.raises(ValueError, match="`object_latents` must be what `pipe.encode_object"):
        tiny_pipeline(object_latents=torch.zeros(1, 4, 8, 8))
    prepared = tiny_pipeline.encode_object(cutout, height=64, width=64)
    with pytest.raises(ValueError, match="Give `object_latents` or `object_image`, not both"):
        tiny_pipeline(cutout, object_latents=prepared)
    with pytest.raises(ValueError, match="Give `object_latents` or `height`/`width`, not both"):
        tiny_pipeline(object_latents=prepared, height=128, width=128)
    for ambient in ("0.1", float("nan"), True):
        with pytest.raises(ValueError, match=r"`ambient` .* must lie in \[0, 1\)"):
            tiny_pipeline(cutout, lights=[(30, 0, 2)], ambient=ambient)
    with pytest.raises(ValueError, match="`lights\\[0\\].power` must be finite"):  # a Light object is checked too
        tiny_pipeline(cutout, lights=[ps.Light(30.0, 0.0, 2.0, float("nan"))])
    with pytest.raises(ValueError, match=r"`object_image` must be a float torch tensor"):
        tiny_pipeline.encode_preprocessed(np.zeros((1, 3, 64, 64)), np.zeros((1, 1, 64, 64)))
    with pytest.raises(ValueError, match="`object_image` has 12288 non-finite values"):
        tiny_pipeline.encode_preprocessed(torch.full((1, 3, 64, 64), float("nan")), torch.ones(1, 1, 64, 64))
    # a 0-d array or numpy integer is one value, as a Python number is
    maps = tiny_pipeline([cutout, cutout], theta=np.array(30.0), num_inference_steps=np.int64(1), output_type="pt")
    assert len(maps.shadow_maps) == 2


def test_intensity_environment_and_device_rules():
    shadow = torch.rand(1, 8, 8)
    for intensity in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="`intensity` must be >= 0 and finite"):
            ps.shadow_layer(shadow, intensity)
        with pytest.raises(ValueError, match="`intensity` must be >= 0 and finite"):
            ps.composite(torch.rand(3, 8, 8), torch.ones(1, 8, 8), shadow, torch.rand(3, 8, 8), intensity)
    with pytest.raises(ValueError, match="`ambient` .* got '0.2'"):
        ps.compose_light_maps(np.zeros((1, 4, 4)), [1.0], ambient="0.2")
    for device in ("banana", "cuda:7" if not torch.cuda.is_available() else "cuda:999"):
        with pytest.raises(ValueError, match="`--device`"):
            ps.check_device(device)
    assert ps.check_device("cpu") == torch.device("cpu")


def test_unreadable_environment_files_are_named(tmp_path):
    text = tmp_path / "sky.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=f"Environment map {text} is not a readable image"):
        ps.load_environment(text)
    folder = tmp_path / "sky_folder.png"
    folder.mkdir()
    with pytest.raises(ValueError, match="is not a regular file"):
        ps.load_environment(folder)
    with pytest.raises(ValueError, match="does not exist"):
        ps.load_environment(tmp_path / "missing.png")


def test_latents_is_the_starting_noise_as_diffusers_pipelines_take_it(tiny_pipeline):
    cutouts = [_rgba_object(), _rgba_object(box=(5, 40, 8, 30))]
    shape = tuple(tiny_pipeline.encode_object(cutouts).object_latents.shape)  # [2,4,h,w]
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    drawn = tiny_pipeline(cutouts, generator=torch.Generator().manual_seed(7), output_type="pt").shadow_maps
    given = tiny_pipeline(cutouts, latents=noise, output_type="pt").shadow_maps
    torch.testing.assert_close(given, drawn)  # the generator's draw, given instead: the same maps
    other = tiny_pipeline(cutouts, latents=torch.randn(shape), output_type="pt").shadow_maps
    assert not torch.allclose(other, drawn)  # and the noise is what the prediction starts from
    two_lights = [[(30.0, 0.0, 2.0), (20.0, 90.0, 4.0)]] * 2  # several lights share their image's noise
    maps = tiny_pipeline(cutouts, lights=two_lights, latents=noise, output_type="pt", return_light_maps=True)
    alone = tiny_pipeline(cutouts, theta=20.0, phi=90.0, size=4.0, latents=noise, output_type="pt").shadow_maps
    torch.testing.assert_close(maps.light_maps[1][1], alone[1], atol=1e-5, rtol=0)
    bad_nan = noise.clone()
    bad_nan[0, 0, 0, 0] = float("nan")
    for bad, message in (
        (noise[:1], r"`latents` is \[1, 4, .*\] but these images need \[2, 4, "),
        (noise.double().long(), r"`latents` must be a float torch.Tensor"),
        (noise.numpy(), r"`latents` must be a float torch.Tensor \[2, 4, .*got ndarray"),
        (bad_nan, r"`latents` has 1 non-finite values"),
    ):
        with pytest.raises(ValueError, match=message):
            tiny_pipeline(cutouts, latents=bad)


def test_output_type_latent_gives_the_undecoded_shadow_latents(tiny_pipeline):
    """diffusers' habit: `output_type="latent"` stops before the decoder; decoding those latents as the pipeline does
    gives its 'pt' maps."""
    cutouts = [_rgba_object(), _rgba_object(box=(5, 40, 8, 30))]
    prepared = tiny_pipeline.encode_object(cutouts)
    kwargs = {"object_latents": prepared, "theta": 25.0, "phi": 60.0, "size": 3.0}
    latents = tiny_pipeline(**kwargs, generator=torch.Generator().manual_seed(4), output_type="latent").shadow_maps
    assert latents.shape == prepared.object_latents.shape and latents.dtype == torch.float32  # [2,4,h,w]
    maps = tiny_pipeline(**kwargs, generator=torch.Generator().manual_seed(4), output_type="pt").shadow_maps
    decoded = ps.decode_shadow(tiny_pipeline.vae, latents)
    for n, shadow_map in enumerate(maps):
        redrawn = ps.unpad_and_resize(decoded[n : n + 1], prepared.boxes[n], prepared.sizes[n])[0].clamp(0, 1)
        torch.testing.assert_close(ps.clear_under_object(redrawn, prepared.masks[n]), shadow_map)
    as_tuple = tiny_pipeline(
        **kwargs, generator=torch.Generator().manual_seed(4), output_type="latent", return_dict=False
    )
    torch.testing.assert_close(as_tuple[0], latents)
    assert as_tuple[1] is None
    with pytest.raises(ValueError, match="nothing can be composited: drop `background`"):
        tiny_pipeline(**kwargs, output_type="latent", background=PIL.Image.new("RGB", (32, 32)))
    with pytest.raises(ValueError, match="does not go with `lights=`"):
        tiny_pipeline(object_latents=prepared, lights=[[(30.0, 0.0, 2.0)]] * 2, output_type="latent")
    with pytest.raises(ValueError, match="must be one of 'pil', 'np', 'pt', 'latent', got 'latents'"):
        tiny_pipeline(**kwargs, output_type="latents")
