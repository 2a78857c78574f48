"""Tiny random-weight FLUX.1 and SD3 pipelines: the real diffusers architectures (FluxPipeline,
StableDiffusion3Pipeline) with the real text-context widths (T5-XXL 4096, CLIP-L 768, OpenCLIP-G 1280, 16
latent channels) and tiny depths, tokenizers built locally (the byte-level CLIP one; a character-level
Unigram T5 tokenizer made with the `tokenizers` library). Nothing comes from a hub.

They make a 64x64 image in about a second on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from serve_app.model.demo.architectures import byte_level_clip_tokenizer

T5_WIDTH = 4096  # T5-XXL's width: FLUX's txt_in and SD3's context embedder read it
_T5_SPECIALS = ("<pad>", "</s>", "<unk>")


def character_t5_tokenizer(max_length: int = 64) -> Any:
    """A T5 tokenizer whose vocabulary is the printable ASCII characters (Unigram model, scores equal)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5Tokenizer

    pieces = [*_T5_SPECIALS, *(chr(c) for c in range(32, 127))]
    tok = Tokenizer(models.Unigram([(p, 0.0 if i < len(_T5_SPECIALS) else -1.0) for i, p in enumerate(pieces)],
                                   unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5Tokenizer(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=max_length)


def _t5_encoder(vocab_size: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=T5_WIDTH, d_kv=16, d_ff=64, num_layers=1,
                                   num_heads=2, relative_attention_num_buckets=8, pad_token_id=0,
                                   eos_token_id=1))


def _clip(hidden: int, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=514, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=hidden // 64, max_position_embeddings=77, projection_dim=hidden,
                            bos_token_id=512, eos_token_id=513, pad_token_id=513)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _vae_16ch(scaling: float, shift: float) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16),
                         layers_per_block=1, latent_channels=16, norm_num_groups=8, sample_size=64,
                         scaling_factor=scaling, shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False)


# FLUX.1 Fill's transformer input per packed latent pixel: 64 noisy-latent + 64 masked-image-latent + 256 mask
# channels (the 8x8 pixel mask of each of the 2x2 latent pixels a token packs); it outputs the 64 latent ones
FLUX_LATENT_WIDTH, FLUX_FILL_INPUT_WIDTH = 64, 64 + 64 + 256


def build_tiny_flux_pipeline(guidance: bool = True, seed: int = 5, fill: bool = False) -> Any:
    """A tiny FLUX.1 pipeline: dev (guidance embedder) or schnell (none); `fill`: FLUX.1 Fill (FluxFillPipeline,
    the inpainting transformer, with guidance)."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    torch.manual_seed(seed)
    tokenizer_2 = character_t5_tokenizer()
    widths = {"in_channels": FLUX_FILL_INPUT_WIDTH, "out_channels": FLUX_LATENT_WIDTH} if fill else {
        "in_channels": FLUX_LATENT_WIDTH}
    transformer = FluxTransformer2DModel(patch_size=1, **widths, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
                                         pooled_projection_dim=768, guidance_embeds=guidance or fill,
                                         axes_dims_rope=(4, 6, 6))
    pipeline = diffusers.FluxFillPipeline if fill else diffusers.FluxPipeline
    return pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae_16ch(0.3611, 0.1159),
                    text_encoder=_clip(768, projection=False), tokenizer=byte_level_clip_tokenizer(),
                    text_encoder_2=_t5_encoder(len(tokenizer_2)), tokenizer_2=tokenizer_2, transformer=transformer)


def build_tiny_sd3_pipeline(seed: int = 6) -> Any:
    """A tiny SD3.5-style pipeline (MMDiT with dual attention in its first block and qk-norm)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tokenizer_3 = character_t5_tokenizer()
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
                                        caption_projection_dim=32, pooled_projection_dim=768 + 1280,
                                        pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm")
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae_16ch(1.5305, 0.0609),
        text_encoder=_clip(768, projection=True), tokenizer=byte_level_clip_tokenizer(),
        text_encoder_2=_clip(1280, projection=True), tokenizer_2=byte_level_clip_tokenizer(pad_token="!"),
        text_encoder_3=_t5_encoder(len(tokenizer_3)), tokenizer_3=tokenizer_3, transformer=transformer)
