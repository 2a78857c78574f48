"""Regenerate ``serve_app/model/loading/family_configs/``: the diffusers-format config folders, one per family.

Dream Lab loads A1111-style single-file ``.safetensors`` checkpoints fully offline with::

    StableDiffusionPipeline.from_single_file(path, config=<family dir>, local_files_only=True)

``from_single_file`` takes the weights from the checkpoint, but the architecture (every
``config.json``), the scheduler, the pipeline's ``model_index.json`` and the tokenizers from
the ``config`` folder. This script writes those folders, with no access to the Hugging Face hub:

* ``sd1/``          like ``runwayml/stable-diffusion-v1-5`` (no safety checker, no feature extractor)
* ``sd2/``          like ``stabilityai/stable-diffusion-2-1`` (OpenCLIP-H text encoder, v-prediction)
* ``sdxl/``         like ``stabilityai/stable-diffusion-xl-base-1.0``
* ``sdxl-refiner/`` like ``stabilityai/stable-diffusion-xl-refiner-1.0`` (img2img only)

The JSON values below are those of the public hub repositories, with two deliberate changes:
safety checker and feature extractor are ``[null, null]`` everywhere (Dream Lab ships neither),
and the text encoders' configs carry no ``torch_dtype`` (transformers >= 5 builds a model in the
config's dtype, so ``float16`` there would make the text encoders fp16 whatever the caller asks
for; the caller picks the dtype with ``torch_dtype=``).

The tokenizer is the real OpenAI CLIP BPE tokenizer, rebuilt exactly as CLIP's
``SimpleTokenizer`` builds it from ``bpe_simple_vocab_16e6.txt.gz``. That file is not on the hub
here, but the PyPI wheel of ``open_clip_torch`` ships it (``open_clip/bpe_simple_vocab_16e6.txt.gz``).
``open_clip_torch`` is NOT a dependency of Dream Lab: this script only reads that one file.

How to run it (from the repository root, in the project's virtual environment)::

    # let the script fetch the BPE file itself (runs `pip download open_clip_torch --no-deps`)
    python scripts/make_family_configs.py

    # or point it at a copy you already have
    pip download open_clip_torch --no-deps -d /tmp/oc && (cd /tmp/oc && unzip -o open_clip_torch-*.whl 'open_clip/*.gz')
    python scripts/make_family_configs.py --bpe /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz

    # then check the result
    python -m pytest tests/unit/test_family_configs.py

It rewrites only the four family folders (``serve_app/model/loading/family_configs/__init__.py`` is kept), and
is deterministic: running it twice gives byte-identical files.

Each folder holds its own plain copy of the tokenizer files: ``from_single_file`` loads a tokenizer
from ``<config>/<component name>/`` and nothing else, and a wheel cannot carry symlinks. Only
``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json`` are written (~1.5 MB a copy, 5 copies);
the 3.6 MB ``tokenizer.json`` that transformers 5's ``save_pretrained`` adds is left out on purpose:
transformers 5 rebuilds it from vocab + merges in ~0.1 s, and transformers 4.x's (slow)
``CLIPTokenizer`` needs vocab + merges anyway.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "serve_app" / "model" / "loading" / "family_configs"

# sha256 of OpenAI CLIP's bpe_simple_vocab_16e6.txt.gz (the same bytes in openai/CLIP and open_clip).
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
BPE_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408
CHECK_PROMPT = "a photo of a cat"
CHECK_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]

# --------------------------------------------------------------------------------------------
# Component configs (values as in the public hub repositories)
# --------------------------------------------------------------------------------------------

_DOWN4 = ["DownEncoderBlock2D"] * 4
_UP4 = ["UpDecoderBlock2D"] * 4


def _vae(sample_size: int, scaling_factor: float, diffusers_version: str, force_upcast: bool | None = None) -> dict:
    cfg = {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": diffusers_version,
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": _DOWN4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
        "up_block_types": _UP4,
    }
    if force_upcast is not None:
        cfg["force_upcast"] = force_upcast
    return cfg


def _clip_text(
    *,
    architecture: str,
    hidden_size: int,
    intermediate_size: int,
    heads: int,
    layers: int,
    hidden_act: str,
    projection_dim: int,
) -> dict:
    # No "torch_dtype": see the module docstring.
    return {
        "architectures": [architecture],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        # eos_token_id 2 is what every SD hub repo has; transformers keys the legacy
        # "pool at argmax(input_ids)" behaviour on it, which is what SD was trained with.
        "eos_token_id": 2,
        "hidden_act": hidden_act,
        "hidden_size": hidden_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "projection_dim": projection_dim,
        "vocab_size": CLIP_VOCAB_SIZE,
    }


# CLIP ViT-L/14 text tower (openai/clip-vit-large-patch14): SD1 text_encoder, SDXL text_encoder.
CLIP_L = _clip_text(
    architecture="CLIPTextModel",
    hidden_size=768,
    intermediate_size=3072,
    heads=12,
    layers=12,
    hidden_act="quick_gelu",
    projection_dim=768,
)

# OpenCLIP ViT-H/14 text tower as SD2 uses it: the penultimate layer, so 23 of its 24 layers.
OPENCLIP_H = _clip_text(
    architecture="CLIPTextModel",
    hidden_size=1024,
    intermediate_size=4096,
    heads=16,
    layers=23,
    hidden_act="gelu",
    projection_dim=512,
)

# OpenCLIP ViT-bigG/14 text tower with its projection: SDXL base and refiner text_encoder_2.
OPENCLIP_BIGG = _clip_text(
    architecture="CLIPTextModelWithProjection",
    hidden_size=1280,
    intermediate_size=5120,
    heads=20,
    layers=32,
    hidden_act="gelu",
    projection_dim=1280,
)

_UNET_COMMON = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
}

_SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

UNET_SD1 = {
    **_UNET_COMMON,
    "_diffusers_version": "0.6.0",
    "attention_head_dim": 8,  # legacy name: 8 heads
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 768,
    "down_block_types": _SD_DOWN,
    "sample_size": 64,
    "up_block_types": _SD_UP,
}

UNET_SD2 = {
    **_UNET_COMMON,
    "_diffusers_version": "0.10.0.dev0",
    "attention_head_dim": [5, 10, 20, 20],  # legacy name: heads per level (64 channels a head)
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": _SD_DOWN,
    "sample_size": 96,
    "up_block_types": _SD_UP,
    "upcast_attention": True,
    "use_linear_projection": True,
}

_UNET_XL_COMMON = {
    **_UNET_COMMON,
    "_diffusers_version": "0.19.0.dev0",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_norm": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "mid_block_only_cross_attention": None,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "num_attention_heads": None,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "upcast_attention": None,
    "use_linear_projection": True,
}

UNET_SDXL = {
    **_UNET_XL_COMMON,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "projection_class_embeddings_input_dim": 2816,  # 1280 pooled + 6 * 256 time ids
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}

UNET_SDXL_REFINER = {
    **_UNET_XL_COMMON,
    "attention_head_dim": [6, 12, 24, 24],
    "block_out_channels": [384, 768, 1536, 1536],
    "cross_attention_dim": 1280,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "projection_class_embeddings_input_dim": 2560,  # 1280 pooled + 5 * 256 (sizes, crop, aesthetic score)
    "transformer_layers_per_block": 4,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}

SCHED_SD1 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

SCHED_SD2 = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

SCHED_SDXL = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

_NULL = [None, None]
_TOKENIZER = ["transformers", "CLIPTokenizer"]
_UNET = ["diffusers", "UNet2DConditionModel"]
_VAE = ["diffusers", "AutoencoderKL"]


def _sd_index(diffusers_version: str, scheduler: str) -> dict:
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers_version,
        "feature_extractor": _NULL,
        "requires_safety_checker": False,
        "safety_checker": _NULL,
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": _TOKENIZER,
        "unet": _UNET,
        "vae": _VAE,
    }


INDEX_SDXL = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": _TOKENIZER,
    "tokenizer_2": _TOKENIZER,
    "unet": _UNET,
    "vae": _VAE,
}

INDEX_SDXL_REFINER = {
    "_class_name": "StableDiffusionXLImg2ImgPipeline",
    "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": False,
    "requires_aesthetics_score": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": _NULL,
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": _NULL,
    "tokenizer_2": _TOKENIZER,
    "unet": _UNET,
    "vae": _VAE,
}

# OpenAI's CLIP pads with <|endoftext|>; the OpenCLIP towers (SD2, SDXL's second encoder) pad with "!".
PAD_OPENAI = "<|endoftext|>"
PAD_OPENCLIP = "!"

# family -> {relative file: JSON object}, and family -> {tokenizer folder: pad token}
FAMILIES: dict[str, dict[str, dict]] = {
    "sd1": {
        "model_index.json": _sd_index("0.6.0", "PNDMScheduler"),
        "scheduler/scheduler_config.json": SCHED_SD1,
        "text_encoder/config.json": CLIP_L,
        "unet/config.json": UNET_SD1,
        "vae/config.json": _vae(512, 0.18215, "0.6.0"),
    },
    "sd2": {
        "model_index.json": _sd_index("0.10.0.dev0", "DDIMScheduler"),
        "scheduler/scheduler_config.json": SCHED_SD2,
        "text_encoder/config.json": OPENCLIP_H,
        "unet/config.json": UNET_SD2,
        "vae/config.json": _vae(768, 0.18215, "0.10.0.dev0"),
    },
    "sdxl": {
        "model_index.json": INDEX_SDXL,
        "scheduler/scheduler_config.json": SCHED_SDXL,
        "text_encoder/config.json": CLIP_L,
        "text_encoder_2/config.json": OPENCLIP_BIGG,
        "unet/config.json": UNET_SDXL,
        "vae/config.json": _vae(1024, 0.13025, "0.20.0.dev0", force_upcast=True),
    },
    "sdxl-refiner": {
        "model_index.json": INDEX_SDXL_REFINER,
        "scheduler/scheduler_config.json": SCHED_SDXL,
        "text_encoder_2/config.json": OPENCLIP_BIGG,
        "unet/config.json": UNET_SDXL_REFINER,
        "vae/config.json": _vae(1024, 0.13025, "0.20.0.dev0", force_upcast=True),
    },
}

TOKENIZERS: dict[str, dict[str, str]] = {
    "sd1": {"tokenizer": PAD_OPENAI},
    "sd2": {"tokenizer": PAD_OPENCLIP},
    "sdxl": {"tokenizer": PAD_OPENAI, "tokenizer_2": PAD_OPENCLIP},
    "sdxl-refiner": {"tokenizer_2": PAD_OPENCLIP},
}

# --------------------------------------------------------------------------------------------
# The CLIP BPE tokenizer
# --------------------------------------------------------------------------------------------


def clip_vocab_and_merges(bpe_gz: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges exactly as ``clip.simple_tokenizer.SimpleTokenizer.__init__`` builds them."""
    lines = gzip.decompress(bpe_gz.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # 48,894 merges
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2/CLIP's byte -> character table

    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    if len(vocab) != CLIP_VOCAB_SIZE or len(set(vocab)) != CLIP_VOCAB_SIZE:
        raise SystemExit(f"unexpected CLIP vocabulary: {len(vocab)} entries, {len(set(vocab))} distinct")
    if any(len(m) != 2 for m in merges):
        raise SystemExit("malformed merge line in the BPE file")
    return {tok: i for i, tok in enumerate(vocab)}, merges  # type: ignore[return-value]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_bpe(explicit: str | None, workdir: Path) -> Path:
    """The BPE file: --bpe, else an installed open_clip, else extracted from `pip download open_clip_torch`."""
    if explicit:
        return Path(explicit)
    try:
        import importlib.util

        spec = importlib.util.find_spec("open_clip")
        if spec is not None and spec.origin is not None:
            candidate = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
            if candidate.is_file():
                return candidate
    except (ImportError, ValueError):
        pass
    print("fetching the CLIP BPE file from the open_clip_torch wheel (pip download, no install) ...")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "open_clip_torch", "--no-deps", "--only-binary=:all:",
         "-d", str(workdir)],
        check=True,
    )
    wheels = sorted(workdir.glob("open_clip_torch-*.whl"))
    if not wheels:
        raise SystemExit("pip download produced no open_clip_torch wheel")
    with zipfile.ZipFile(wheels[-1]) as zf:
        target = workdir / "bpe_simple_vocab_16e6.txt.gz"
        target.write_bytes(zf.read(BPE_IN_WHEEL))
    return target


def write_tokenizer(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]], pad_token: str) -> None:
    """A CLIPTokenizer folder loadable by transformers 4.x (slow and fast) and 5.x, offline."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(vocab=vocab, merges=list(merges), pad_token=pad_token, model_max_length=77)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        cfg = json.loads((Path(tmp) / "tokenizer_config.json").read_text(encoding="utf-8"))
    # Keep only the keys every transformers version understands (drops e.g. v5's "backend").
    keep = ("bos_token", "eos_token", "model_max_length", "pad_token", "tokenizer_class", "unk_token")
    cfg = {k: cfg[k] for k in keep}
    folder.mkdir(parents=True, exist_ok=True)
    _dump_json(folder / "tokenizer_config.json", cfg)
    # vocab.json / merges.txt: the files transformers 4.x's save_pretrained writes (compact JSON here).
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(folder / "merges.txt", "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)


def _dump_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_tokenizer(folder: Path, pad_token: str) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    ids = tok(CHECK_PROMPT).input_ids
    if ids != CHECK_IDS or tok.pad_token != pad_token or len(tok) != CLIP_VOCAB_SIZE or tok.model_max_length != 77:
        raise SystemExit(f"{folder}: tokenizer check failed: ids={ids} pad={tok.pad_token!r} len={len(tok)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bpe", help="path to bpe_simple_vocab_16e6.txt.gz (default: fetch it)")
    parser.add_argument("--out", default=str(OUT_DIR), help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    with tempfile.TemporaryDirectory() as work:
        bpe = find_bpe(args.bpe, Path(work))
        digest = _sha256(bpe)
        if digest != BPE_SHA256:
            raise SystemExit(f"{bpe}: sha256 {digest} is not CLIP's BPE file ({BPE_SHA256})")
        vocab, merges = clip_vocab_and_merges(bpe)

    out.mkdir(parents=True, exist_ok=True)
    for family, files in FAMILIES.items():
        folder = out / family
        if folder.exists():
            shutil.rmtree(folder)
        for rel, obj in files.items():
            _dump_json(folder / rel, obj)
        for name, pad in TOKENIZERS[family].items():
            write_tokenizer(folder / name, vocab, merges, pad)
            check_tokenizer(folder / name, pad)

    total = sum(p.stat().st_size for fam in FAMILIES for p in (out / fam).rglob("*") if p.is_file())
    print(f"wrote {', '.join(FAMILIES)} under {out} ({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
