"""Diffusers configs of the ControlNets shared as single files, per family, for files that do not carry their
own (`control_inspect.METADATA_CONTROLNET_CONFIG`): the architectures of lllyasviel's SD 1.5 ControlNets
(v1.0/v1.1), thibaud's SD 2.1 ones and diffusers' full SDXL ones. A file of another architecture fails
its load with a message naming it; serve such a file as a diffusers folder (its own config.json)."""

from __future__ import annotations

from typing import Any

from serve_app.model.families import Family

_COMMON: dict[str, Any] = dict(
    in_channels=4, conditioning_channels=3, flip_sin_to_cos=True, freq_shift=0, layers_per_block=2,
    downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    conditioning_embedding_out_channels=[16, 32, 96, 256], controlnet_conditioning_channel_order="rgb",
)
_SD_BLOCKS = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]

CONTROLNET_CONFIGS: dict[Family, dict[str, Any]] = {
    Family.SD1: dict(_COMMON, block_out_channels=[320, 640, 1280, 1280], down_block_types=_SD_BLOCKS,
                     cross_attention_dim=768, attention_head_dim=8),
    Family.SD2: dict(_COMMON, block_out_channels=[320, 640, 1280, 1280], down_block_types=_SD_BLOCKS,
                     cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True),
    Family.SDXL: dict(_COMMON, block_out_channels=[320, 640, 1280],
                      down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                      cross_attention_dim=2048, attention_head_dim=[5, 10, 20], use_linear_projection=True,
                      transformer_layers_per_block=[1, 2, 10], addition_embed_type="text_time",
                      addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
}
