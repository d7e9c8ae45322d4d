"""GDDIMFlowScheduler inside a flow-matching pipeline: a tiny StableDiffusion3Pipeline built from random
components (no download). solver_order 1 equals FlowMatchEuler to float precision, every option gives finite
images, save/load and switching schedulers work, image-to-image runs."""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
import torch

from gddim.flow_scheduler import GDDIMFlowScheduler

transformers = pytest.importorskip("transformers")

WORDS = ["a", "cat", "dog", "photo", "of"]


def tokenizer(folder) -> "transformers.CLIPTokenizer":
    """A CLIP tokenizer over a few whole words; every other word is the unknown token."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{w}</w>": i + 2 for i, w in enumerate(WORDS)}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def text_encoder(seed: int) -> "transformers.CLIPTextModelWithProjection":
    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(vocab_size=len(WORDS) + 2, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, projection_dim=16,
                                         max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return transformers.CLIPTextModelWithProjection(config).eval()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1,
                                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                                  caption_projection_dim=16, pooled_projection_dim=32, out_channels=4,
                                                  pos_embed_max_size=8)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                                  down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                                  norm_num_groups=4, sample_size=8, shift_factor=0.06, scaling_factor=1.5)
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer.eval(), vae=vae.eval(), scheduler=GDDIMFlowScheduler(shift=3.0),
        text_encoder=text_encoder(1), tokenizer=tokenizer(folder), text_encoder_2=text_encoder(2),
        tokenizer_2=tokenizer(folder), text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, steps: int = 4, **kwargs) -> np.ndarray:
    return pipe("a photo of a cat", num_inference_steps=steps, height=8, width=8, guidance_scale=2.0,
                generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images


def test_order_one_equals_flow_match_euler(pipeline):
    euler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipeline.scheduler = GDDIMFlowScheduler.from_config(euler.config, solver_order=1, use_corrector=False)
    ours = generate(pipeline)
    pipeline.scheduler = euler
    theirs = generate(pipeline)
    assert ours.shape == (1, 8, 8, 3) and np.isfinite(ours).all()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("options", [dict(), dict(solver_order=2, use_corrector=False), dict(solver_order=4),
                                     dict(lam=0.5), dict(interpolation="sqrt_t"), dict(use_karras_sigmas=True)],
                         ids=str)
def test_every_option_gives_finite_images(pipeline, options):
    pipeline.scheduler = GDDIMFlowScheduler(shift=3.0, **options)
    image = generate(pipeline, steps=5)
    assert image.shape == (1, 8, 8, 3) and np.isfinite(image).all() and image.std() > 0


def test_save_load_and_switching(pipeline, tmp_path):
    pipeline.scheduler = GDDIMFlowScheduler(shift=3.0, solver_order=2)
    before = generate(pipeline)
    pipeline.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    loaded = diffusers.StableDiffusion3Pipeline.from_pretrained(tmp_path / "pipe", text_encoder_3=None,
                                                                tokenizer_3=None, use_safetensors=True)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, GDDIMFlowScheduler) and loaded.scheduler.config.solver_order == 2
    np.testing.assert_allclose(generate(loaded), before, rtol=0, atol=1e-6)
    for peer in (diffusers.FlowMatchEulerDiscreteScheduler, diffusers.UniPCMultistepScheduler,
                 diffusers.DPMSolverMultistepScheduler):
        loaded.scheduler = peer.from_config(pipeline.scheduler.config)
        assert np.isfinite(generate(loaded)).all()
        loaded.scheduler = GDDIMFlowScheduler.from_config(loaded.scheduler.config)
        assert loaded.scheduler.config.shift == 3.0 and np.isfinite(generate(loaded)).all()


def test_image_to_image(pipeline):
    img2img = diffusers.StableDiffusion3Img2ImgPipeline(**pipeline.components)
    img2img.set_progress_bar_config(disable=True)
    img2img.scheduler = GDDIMFlowScheduler(shift=3.0)
    start = np.random.default_rng(0).random((1, 8, 8, 3)).astype(np.float32)
    image = img2img("a dog", image=torch.from_numpy(start).permute(0, 3, 1, 2), strength=0.6, num_inference_steps=5,
                    guidance_scale=2.0, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 8, 8, 3) and np.isfinite(image).all()
    assert img2img.scheduler.step_index == 5  # it began at step 2 of 5 (strength 0.6) and ran to the end
