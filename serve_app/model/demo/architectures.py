"""The tiny demo architectures: configs with real cross-attention widths and tiny depths, a local byte-level
CLIP tokenizer, and the random-weight pipelines built from them (seeded, so deterministic).

The text encoders keep the real hidden widths (768 CLIP-L, 1024 OpenCLIP-H, 1280 OpenCLIP-bigG) so the UNet's
cross-attention dims are the real ones; depth and channel counts are tiny so a 64x64 image takes a fraction
of a second on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from serve_app.model.families import INPAINTING_IN_CHANNELS, Family

DEMO_PREFIX = "tiny-"
_SEEDS = {Family.SD1: 1, Family.SD2: 2, Family.SDXL: 3, Family.SDXL_REFINER: 4}
_TIME_EMBED = 8  # SDXL add-time embedding width per micro-conditioning number
_TE2_PROJECTION = 32  # pooled text embedding width of the second SDXL text encoder


DEMO_INPAINTING = "tiny-sd1-inpainting"  # the demo's inpainting variant (a diffusers folder)


def demo_name(family: Family) -> str:
    return f"{DEMO_PREFIX}{family.value}"


def byte_level_clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A CLIP tokenizer whose vocabulary is the 256 bytes (and their end-of-word forms), no merges."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2/CLIP's byte -> character table

    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for ch in chars:
            vocab[ch + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, pad_token=pad_token)


def _text_encoder_config(hidden: int, projection_dim: int = _TE2_PROJECTION, act: str = "quick_gelu") -> dict[str, Any]:
    return dict(
        vocab_size=514,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=hidden // 64,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection_dim,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )


def unet_config(family: Family, in_channels: int = 4) -> dict[str, Any]:
    common: dict[str, Any] = dict(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=32,
    )
    if family is Family.SD1:
        return dict(
            common,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768,
            attention_head_dim=8,
        )
    if family is Family.SD2:
        return dict(
            common,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=1024,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
        )
    n_time_ids = 6 if family is Family.SDXL else 5  # the refiner drops target size, adds aesthetic score
    return dict(
        common,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2048 if family is Family.SDXL else 1280,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED,
        projection_class_embeddings_input_dim=n_time_ids * _TIME_EMBED + _TE2_PROJECTION,
    )


def vae_config(family: Family) -> dict[str, Any]:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025 if family.is_sdxl else 0.18215,
    )


_SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
)


def build_demo_pipeline(family: Family, inpainting: bool = False):
    """Build the tiny diffusers pipeline of `family` with deterministic random weights; `inpainting`: an SD1
    inpainting variant (UNet in_channels 9: latents, mask, masked-image latents)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(_SEEDS[family])
    unet = UNet2DConditionModel(**unet_config(family, in_channels=INPAINTING_IN_CHANNELS if inpainting else 4))
    vae = AutoencoderKL(**vae_config(family))
    scheduler = DDIMScheduler(**_SCHEDULER_CONFIG)
    if family is Family.SD1:
        te = CLIPTextModel(CLIPTextConfig(**_text_encoder_config(768)))
        return (StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline)(
            vae=vae, text_encoder=te, tokenizer=byte_level_clip_tokenizer(), unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    if family is Family.SD2:
        te = CLIPTextModel(CLIPTextConfig(**_text_encoder_config(1024, act="gelu")))
        return StableDiffusionPipeline(
            vae=vae, text_encoder=te, tokenizer=byte_level_clip_tokenizer(pad_token="!"), unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**_text_encoder_config(1280, act="gelu")))
    if family is Family.SDXL:
        te1 = CLIPTextModel(CLIPTextConfig(**_text_encoder_config(768)))
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=byte_level_clip_tokenizer(),
            tokenizer_2=byte_level_clip_tokenizer(pad_token="!"), unet=unet, scheduler=scheduler,
        )
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=te2, tokenizer=None,
        tokenizer_2=byte_level_clip_tokenizer(pad_token="!"), unet=unet, scheduler=scheduler,
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    )
