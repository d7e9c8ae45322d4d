"""GDDIMScheduler inside diffusers pipelines built from tiny random components (no download): DDPMPipeline, and
StableDiffusionPipeline / StableDiffusionImg2ImgPipeline with a tiny text encoder and a tokenizer whose vocabulary
the test writes. In each: solver_order=1 is DDIMScheduler, every option gives finite images, save/load and
switching work."""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
import torch

from gddim.diffusers import GDDIMScheduler
from test_diffusers import tiny_unet

transformers = pytest.importorskip("transformers", reason="Stable Diffusion pipelines need transformers (test extra)")

SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
OPTIONS = [{}, {"solver_order": 1}, {"solver_order": 2, "predict_x0": False, "use_corrector": False,
                                     "final_sigmas_type": "sigma_min"},
           {"use_karras_sigmas": True}, {"thresholding": True}, {"clip_sample": True}, {"lam": 0.5},
           {"interpolation": "logsnr", "final_sigmas_type": "sigma_min"}]


def byte_vocabulary(folder) -> tuple[str, str]:
    """vocab.json and merges.txt of a byte-level BPE with no merges: every byte alone, and at a word's end."""
    chars = [chr(b) for b in range(ord("!"), ord("~") + 1)] + [chr(b) for b in range(ord("¡"), ord("¬") + 1)] \
        + [chr(b) for b in range(ord("®"), ord("ÿ") + 1)]
    chars += [chr(256 + n) for n in range(256 - len(chars))]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return str(folder / "vocab.json"), str(folder / "merges.txt")


@pytest.fixture(scope="module")
def sd_components(tmp_path_factory):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2)
    vae = diffusers.AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=2, sample_size=16)
    vocab, merges = byte_vocabulary(tmp_path_factory.mktemp("tokenizer"))
    tokenizer = transformers.CLIPTokenizer(vocab, merges, model_max_length=16)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(), "tokenizer": tokenizer,
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def sd_pipeline(components, scheduler, image_to_image: bool = False):
    kind = diffusers.StableDiffusionImg2ImgPipeline if image_to_image else diffusers.StableDiffusionPipeline
    pipe = kind(**components, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, image=None, steps: int = 4) -> np.ndarray:
    extra = {"height": 16, "width": 16} if image is None else {"image": image, "strength": 0.75}
    return pipe("a tiny red square", num_inference_steps=steps, guidance_scale=3.0, output_type="np",
                generator=torch.Generator().manual_seed(0), **extra).images


def start_image() -> torch.Tensor:
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("image_to_image", [False, True], ids=["text-to-image", "image-to-image"])
def test_stable_diffusion_first_order_is_ddim(sd_components, image_to_image):
    ddim = diffusers.DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False,
                                   timestep_spacing="trailing")
    image = start_image() if image_to_image else None
    want = generate(sd_pipeline(sd_components, ddim, image_to_image), image)
    ours = GDDIMScheduler.from_config(ddim.config, solver_order=1)
    got = generate(sd_pipeline(sd_components, ours, image_to_image), image)
    assert want.shape == (1, 16, 16, 3) and want.std() > 1e-3
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_stable_diffusion_every_option_gives_finite_images(sd_components, options):
    ours = GDDIMScheduler(**SD_SCHEDULE, **options)
    for image_to_image in (False, True):
        images = generate(sd_pipeline(sd_components, ours, image_to_image), start_image() if image_to_image else None)
        assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()


def test_stable_diffusion_saves_loads_and_switches(sd_components, tmp_path):
    pipe = sd_pipeline(sd_components, GDDIMScheduler(**SD_SCHEDULE, solver_order=3))
    want = generate(pipe)
    pipe.save_pretrained(tmp_path)
    loaded = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path, safety_checker=None, use_safetensors=True)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, GDDIMScheduler) and loaded.scheduler.config.solver_order == 3
    np.testing.assert_allclose(generate(loaded), want, rtol=0, atol=1e-6)
    for peer in (diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler, diffusers.DDIMScheduler):
        loaded.scheduler = peer.from_config(loaded.scheduler.config)
        assert np.isfinite(generate(loaded)).all()
        loaded.scheduler = GDDIMScheduler.from_config(loaded.scheduler.config)
        assert np.isfinite(generate(loaded)).all()


def test_stable_diffusion_forwards_timesteps_and_sigmas(sd_components):
    # pipelines hand set_timesteps a list of timesteps or of σ: the same levels give the same images
    pipe = sd_pipeline(sd_components, GDDIMScheduler(**SD_SCHEDULE, timestep_spacing="linspace"))
    want = generate(pipe)
    levels, sigmas = pipe.scheduler.timesteps.tolist(), pipe.scheduler.sigmas[:-1].tolist()
    pipe.scheduler = GDDIMScheduler.from_config(pipe.scheduler.config)
    np.testing.assert_allclose(pipe("a tiny red square", timesteps=levels, guidance_scale=3.0, output_type="np",
                                    height=16, width=16, generator=torch.Generator().manual_seed(0)).images,
                               want, rtol=0, atol=0)
    by_sigmas = pipe("a tiny red square", sigmas=sigmas, guidance_scale=3.0, output_type="np", height=16, width=16,
                     generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_allclose(by_sigmas, want, rtol=0, atol=1e-5)  # σ in float32 moves the levels by ~1e-7


def ddpm_images(scheduler, steps: int = 5) -> np.ndarray:
    pipe = diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="np").images


def test_ddpm_pipeline_first_order_is_ddim():
    # DDPMPipeline passes no eta: DDIMScheduler's deterministic step
    want = ddpm_images(diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing"))
    got = ddpm_images(GDDIMScheduler(solver_order=1))
    assert want.std() > 1e-3
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_ddpm_pipeline_every_option_gives_finite_images(options):
    images = ddpm_images(GDDIMScheduler(**options))
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


def test_ddpm_pipeline_saves_loads_and_switches(tmp_path):
    pipe = diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=GDDIMScheduler(use_karras_sigmas=True, solver_order=3))
    pipe.save_pretrained(tmp_path)
    loaded = diffusers.DDPMPipeline.from_pretrained(tmp_path, use_safetensors=True)
    assert isinstance(loaded.scheduler, GDDIMScheduler) and loaded.scheduler.config.use_karras_sigmas
    np.testing.assert_allclose(ddpm_images(loaded.scheduler), ddpm_images(pipe.scheduler), rtol=0, atol=0)
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(loaded.scheduler.config)
    assert dpm.config.use_karras_sigmas and dpm.config.solver_order == 3 and np.isfinite(ddpm_images(dpm)).all()
    back = GDDIMScheduler.from_config(dpm.config)
    assert back.config.use_karras_sigmas and back.config.solver_order == 3 and back.config.predict_x0
    assert np.isfinite(ddpm_images(back)).all()
