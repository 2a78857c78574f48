"""Look at an adapter file without loading it: a LoRA, a textual-inversion embedding or a VAE, the family it
targets, its key layout, its rank and its size, all from the safetensors header (like `checkpoint_inspect`).

The family is detected from the tensors, never from the file name:
- a LoRA's cross-attention `to_k` matrix takes the text context as input, so its input width is the
  family's cross-attention dim (768 SD1, 1024 SD2, 2048 SDXL, 1280 the SDXL refiner); SDXL LoRAs may carry
  both text encoders (`lora_te1_`/`lora_te2_`, `text_encoder`/`text_encoder_2`);
- an embedding's vector width is its text encoder's hidden size (768 SD1, 1024 SD2); SDXL embeddings carry
  one vector set per text encoder (`clip_l` 768 and `clip_g` 1280);
- a VAE fits every family whose latents have its channel count (4 for all the supported ones): its family
  is None and `latent_channels` says what it needs;
- a ControlNet (a file, or a diffusers folder) is read by `control.control_inspect`, an IP-Adapter and its
  CLIP image encoder (`ipadapter/`, `clip_vision/`) by `control.ipadapter_inspect`.

Adapters live in MODEL_ROOT's `loras/`, `embeddings/`, `vae/` and `controlnet/` folders (`discover_adapters`);
pickle files are refused there as they are for checkpoints, and a file that cannot be used is reported with the reason
instead of breaking the listing.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field

from serve_app.core.errors import AdapterFileError, CheckpointError, CheckpointNotFoundError
from serve_app.core.strict_model import StrictModel
from serve_app.model.control.control_inspect import controlnet_fields, read_controlnet_header
from serve_app.model.control.ipadapter_inspect import clip_vision_fields, ipadapter_fields, read_encoder_header
from serve_app.model.families import FAMILY_BY_CROSS_ATTENTION_DIM, Family, supported_dims_text
from serve_app.model.inspection.checkpoint_inspect import PICKLE_SUFFIXES, dominant_dtype, pickle_refusal
from serve_app.model.inspection.safetensors_header import TensorHeader, parameter_count, read_safetensors_header
from serve_app.model.inspection.transformer_lora import transformer_lora_family


class AdapterKind(str, Enum):
    LORA = "lora"
    EMBEDDING = "embedding"
    VAE = "vae"
    CONTROLNET = "controlnet"
    IPADAPTER = "ipadapter"
    CLIP_VISION = "clip_vision"


ADAPTER_FOLDERS = {AdapterKind.LORA: "loras", AdapterKind.EMBEDDING: "embeddings", AdapterKind.VAE: "vae",
                   AdapterKind.CONTROLNET: "controlnet", AdapterKind.IPADAPTER: "ipadapter",
                   AdapterKind.CLIP_VISION: "clip_vision"}
_FOLDER_KINDS = (AdapterKind.CONTROLNET, AdapterKind.CLIP_VISION)  # kinds that may be a folder
EMBEDDING_FAMILY_BY_WIDTH = {768: Family.SD1, 1024: Family.SD2}
_LYCORIS_MARKERS = ("hada_w1", "lokr_w1", ".oft_", "lora_mid")


class AdapterFormat(str, Enum):
    KOHYA = "kohya"  # LoRA: lora_unet_* / lora_te*_ keys, lora_down / lora_up / alpha (A1111, kohya-ss)
    DIFFUSERS = "diffusers"  # LoRA: unet.* / text_encoder*.* keys, lora_A / lora_B (PEFT) or lora.down / lora.up;
    #                          embedding: one token -> vectors; VAE: encoder.down_blocks.* (diffusers' own layout)
    A1111 = "a1111"  # embedding: emb_params, or clip_l + clip_g for SDXL
    ORIGINAL = "original"  # VAE: encoder.down.* (the original LDM layout of single files)
    COMFY = "comfy"  # LoRA of FLUX / SD3: diffusion_model.double_blocks.* (ComfyUI / BFL keys)


class AdapterInfo(StrictModel):
    """What an adapter file is, read from its header only."""

    name: str = Field(description="File name without `.safetensors`: what requests ask for.")
    kind: AdapterKind
    path: str = Field(description="Where the file is (relative to MODEL_ROOT in API answers).")
    format: AdapterFormat
    family: Family | None = Field(description="The base family it was made for; None: any (a VAE).")
    rank: int | None = Field(None, description="LoRA rank (the down matrices' output width).")
    text_encoders: int = Field(0, description="Text encoders a LoRA also adapts (0, 1, or 2 for SDXL).")
    vectors: int | None = Field(None, description="Token vectors of an embedding.")
    width: int | None = Field(None, description="Vector width of an embedding (SDXL: clip_l + clip_g).")
    latent_channels: int | None = Field(None, description="Latent channels of a VAE.")
    parameters: int | None = Field(None, description="Weights of a ControlNet (its loaded size is this times "
                                   "the mode's dtype width).")
    embed_dim: int | None = Field(None, description="IP-Adapter: the image embedding width it takes (plain); image "
                                  "encoder: its projection dim.")
    hidden_dim: int | None = Field(None, description="IP-Adapter: the encoder hidden width it takes (plus); image "
                                   "encoder: its hidden size.")
    control_modes: int | None = Field(None, description="FLUX Union ControlNet: how many control types it takes "
                                      "(a unit's `control_type`).")
    conditioning_channels: int | None = Field(None, description="SD3 ControlNet: latent channels it reads besides "
                                              "the image's (1: an inpainting ControlNet, which reads the mask).")
    dtype: str
    tensors: int
    file_bytes: int


def _lora(path: Path, tensors: dict[str, TensorHeader]) -> dict:
    keys = list(tensors)
    lycoris = next((k for k in keys if any(m in k for m in _LYCORIS_MARKERS)), None)
    if lycoris is not None:
        raise AdapterFileError(f"{path}: a LyCORIS (LoHa/LoKr/OFT) adapter ({lycoris!r}); only LoRA files "
                               "(kohya or diffusers/PEFT layout) are served", param="lora")
    if (transformer := transformer_lora_family(keys)) is not None:  # FLUX / SD3: diffusers' loaders convert
        made_for, layout = transformer
        down = next((k for k in keys if k.endswith((".lora_A.weight", ".lora_down.weight", ".lora.down.weight"))),
                    None)
        return dict(format=AdapterFormat(layout), family=made_for, rank=tensors[down].shape[0] if down else None,
                    text_encoders=int(any(k.startswith(("lora_te1_", "lora_te_", "text_encoder.")) for k in keys)))
    down_suffixes: tuple[str, ...]
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        fmt, down_suffixes, unet, to_k = AdapterFormat.KOHYA, (".lora_down.weight",), "lora_unet_", "attn2_to_k"
        encoders = {p for p in ("lora_te_", "lora_te1_", "lora_te2_") if any(k.startswith(p) for k in keys)}
    elif any(k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for k in keys):
        fmt, unet, to_k = AdapterFormat.DIFFUSERS, "unet.", "attn2.to_k"
        down_suffixes = (".lora_A.weight", ".lora.down.weight", ".lora_down.weight")
        encoders = {p for p in ("text_encoder.", "text_encoder_2.") if any(k.startswith(p) for k in keys)}
    else:
        raise AdapterFileError(f"{path}: not a LoRA: no kohya (lora_unet_*, lora_te*_) or diffusers/PEFT (unet.*, "
                               f"text_encoder.*) keys; it starts with {sorted(keys)[:3]}", param="lora")
    downs = [k for k in keys if k.endswith(down_suffixes)]
    cross = [k for k in downs if k.startswith(unet) and to_k in k]
    if not cross:
        raise AdapterFileError(f"{path}: a {fmt.value} LoRA without a cross-attention to_k matrix: the family it "
                               "was made for cannot be told from its tensors", param="lora")
    dim = tensors[cross[0]].shape[-1]
    family = FAMILY_BY_CROSS_ATTENTION_DIM.get(dim)
    if family is None:
        raise AdapterFileError(f"{path}: a LoRA for cross-attention dim {dim}; supported: {supported_dims_text()}",
                               param="lora")
    return dict(format=fmt, family=family, rank=tensors[cross[0]].shape[0], text_encoders=len(encoders))


def _embedding(path: Path, tensors: dict[str, TensorHeader]) -> dict:
    def vectors(t: TensorHeader) -> int:
        return t.shape[0] if len(t.shape) == 2 else 1

    if "clip_l" in tensors and "clip_g" in tensors:
        return dict(format=AdapterFormat.A1111, family=Family.SDXL, vectors=vectors(tensors["clip_l"]),
                    width=tensors["clip_l"].shape[-1] + tensors["clip_g"].shape[-1])
    if "emb_params" in tensors:
        fmt, t = AdapterFormat.A1111, tensors["emb_params"]
    elif len(tensors) == 1:
        fmt, t = AdapterFormat.DIFFUSERS, next(iter(tensors.values()))
    else:
        raise AdapterFileError(f"{path}: not a textual-inversion embedding: expected `emb_params`, `clip_l` + "
                               f"`clip_g`, or one token's vectors; it has {len(tensors)} tensors", param="embedding")
    family = EMBEDDING_FAMILY_BY_WIDTH.get(t.shape[-1]) if 1 <= len(t.shape) <= 2 else None
    if family is None:
        raise AdapterFileError(f"{path}: an embedding of shape {t.shape}: no supported text encoder has that width "
                               f"({', '.join(f'{w} {f.value}' for w, f in EMBEDDING_FAMILY_BY_WIDTH.items())}, or "
                               "clip_l + clip_g for sdxl)", param="embedding")
    return dict(format=fmt, family=family, vectors=vectors(t), width=t.shape[-1])


def _vae(path: Path, tensors: dict[str, TensorHeader]) -> dict:
    names = {k.removeprefix("first_stage_model.").removeprefix("vae."): t for k, t in tensors.items()}
    conv_in = names.get("decoder.conv_in.weight")
    if conv_in is None or len(conv_in.shape) != 4:
        raise AdapterFileError(f"{path}: not a VAE: no decoder.conv_in.weight", param="vae")
    if any(k.startswith("encoder.down_blocks.") for k in names):
        fmt = AdapterFormat.DIFFUSERS
    elif any(k.startswith("encoder.down.") for k in names):
        fmt = AdapterFormat.ORIGINAL
    else:
        raise AdapterFileError(f"{path}: a VAE decoder without an encoder in a known layout", param="vae")
    return dict(format=fmt, family=None, latent_channels=conv_in.shape[1])


_INSPECTORS = {AdapterKind.LORA: _lora, AdapterKind.EMBEDDING: _embedding, AdapterKind.VAE: _vae,
               AdapterKind.IPADAPTER: lambda p, t: {**ipadapter_fields(p, t),
                                                    "parameters": parameter_count(t.values())}}


def _controlnet(p: Path) -> AdapterInfo:
    """A ControlNet file or diffusers folder (`control_inspect`)."""
    weights, tensors, metadata = read_controlnet_header(p)
    size = sum(f.stat().st_size for f in p.iterdir() if f.is_file()) if p.is_dir() else weights.stat().st_size
    name = p.name if p.is_dir() else p.name[: -len(".safetensors")]
    return AdapterInfo(name=name, kind=AdapterKind.CONTROLNET, path=str(p.resolve()),
                       dtype=dominant_dtype(list(tensors.values())), tensors=len(tensors), file_bytes=size,
                       **controlnet_fields(p, tensors, metadata))


def _clip_vision(p: Path) -> AdapterInfo:
    weights, tensors, _ = read_encoder_header(p)
    size = sum(f.stat().st_size for f in p.iterdir() if f.is_file()) if p.is_dir() else weights.stat().st_size
    name = p.name if p.is_dir() else p.name[: -len(".safetensors")]
    return AdapterInfo(name=name, kind=AdapterKind.CLIP_VISION, path=str(p.resolve()), tensors=len(tensors),
                       dtype=dominant_dtype(list(tensors.values())), file_bytes=size,
                       parameters=parameter_count(tensors.values()), **clip_vision_fields(p, tensors))


def inspect_adapter(path: str | Path, kind: AdapterKind) -> AdapterInfo:
    """Inspect one adapter file of `kind`; raise a typed error naming the file otherwise."""
    p = Path(path).expanduser()
    if kind is AdapterKind.CONTROLNET and p.is_dir():
        return _controlnet(p)
    if kind is AdapterKind.CLIP_VISION and p.is_dir():
        return _clip_vision(p)
    if not p.is_file():
        raise CheckpointNotFoundError(f"{p}: adapter file does not exist", param=kind.value)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise pickle_refusal(p, param=kind.value)
    if p.suffix.lower() != ".safetensors":
        raise AdapterFileError(f"{p}: not an adapter: expected a .safetensors file, got '{p.suffix or p.name}'",
                               param=kind.value)
    if kind is AdapterKind.CONTROLNET:
        return _controlnet(p)
    if kind is AdapterKind.CLIP_VISION:
        return _clip_vision(p)
    tensors, _ = read_safetensors_header(p)
    found = _INSPECTORS[kind](p, tensors)
    return AdapterInfo(name=p.name[: -len(".safetensors")], kind=kind, path=str(p.resolve()),
                       dtype=dominant_dtype(list(tensors.values())), tensors=len(tensors),
                       file_bytes=p.stat().st_size, **found)


class AdapterProblem(StrictModel):
    """A file in an adapter folder that cannot be used, and why."""

    kind: AdapterKind
    path: str
    error: str


def discover_adapters(model_root: Path) -> tuple[list[AdapterInfo], list[AdapterProblem]]:
    """Every adapter file in MODEL_ROOT's adapter folders (sorted by kind, then name), and the files that are
    there but cannot be used."""
    found: list[AdapterInfo] = []
    problems: list[AdapterProblem] = []
    for kind, folder in ADAPTER_FOLDERS.items():
        directory = Path(model_root).expanduser() / folder
        if not directory.is_dir():
            continue
        for path in sorted(p for p in directory.iterdir() if not p.name.startswith(".")
                           and (p.is_file() or (kind in _FOLDER_KINDS and p.is_dir()))):
            try:
                found.append(inspect_adapter(path, kind))
            except CheckpointError as exc:
                problems.append(AdapterProblem(kind=kind, path=str(path), error=str(exc)))
    return found, problems
