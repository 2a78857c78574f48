"""What a component file is (a text encoder, a VAE, a denoiser), told from its tensors, and a checkpoint's
facts with the component files its mode names merged in.

A mode whose checkpoint lacks components (a transformer-only FLUX file) names them in its modes file:
`components: {text_encoders: [clip_l.safetensors, t5xxl.safetensors], vae: ae.safetensors}`; a mode whose
checkpoint has them may name files that replace its own. Each file is checked against the mode's family from
its tensors: a T5-XXL file on an SDXL mode, a 4-channel (SD) VAE on a FLUX mode or an SD1 UNet as a FLUX
transformer is refused, naming the file and both families.

Signatures (after any known prefix such as `text_encoders.t5xxl.transformer.`, `text_model.`, `vae.`):
- CLIP: `embeddings.token_embedding.weight` (transformers layout): width 768 = clip_l, 1280 = clip_g;
- T5: `encoder.block.0.layer.0.SelfAttention.q.weight` + `shared.weight`, width 4096 = t5xxl;
- VAE: `decoder.conv_in.weight` (original and diffusers layouts), its input = the latent channels (4 for the
  UNet families, 16 for SD3 and FLUX);
- a denoiser: whatever `family_detection` recognises.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from serve_app.core.errors import ConfigError
from serve_app.core.strict_model import StrictModel
from serve_app.model.families import FLOW_FAMILIES, REQUIRED_COMPONENTS, UNET_FAMILIES, Family
from serve_app.model.inspection.family_detection import detect_family
from serve_app.model.inspection.safetensors_header import TensorHeader, parameter_count, read_safetensors_header

ComponentKind = Literal["clip_l", "clip_g", "t5xxl", "vae", "transformer", "unet"]
TEXT_ENCODER_KINDS = ("clip_l", "clip_g", "openclip_h", "t5xxl")
_CLIP_KEY = "embeddings.token_embedding.weight"
_T5_KEY = "encoder.block.0.layer.0.SelfAttention.q.weight"
_VAE_KEY = "decoder.conv_in.weight"
_CLIP_BY_WIDTH = {768: "clip_l", 1280: "clip_g"}
FLOW_LATENT_CHANNELS, UNET_LATENT_CHANNELS = 16, 4
_NAMES = {"clip_l": "a CLIP-L text encoder", "clip_g": "an OpenCLIP-G text encoder", "t5xxl": "a T5-XXL text encoder",
          "vae": "a VAE", "transformer": "a transformer", "unet": "a UNet"}


class ComponentFile(StrictModel):
    """One component file: what it holds and for which families."""

    path: str = Field(description="Absolute path of the file.")
    kind: ComponentKind = Field(description="What it is.")
    prefix: str = Field("", description="Key prefix its tensors carry (stripped when it is loaded).")
    layout: str = Field("diffusers", description="`original` (LDM/BFL) or `diffusers`/transformers key names.")
    families: list[Family] = Field(description="The families it fits.")
    width: int = Field(0, description="Hidden width of a text encoder, latent channels of a VAE.")
    param_count: int = Field(description="Stored parameters.")
    param_bytes: int = Field(description="Stored bytes.")
    file_bytes: int = Field(description="Bytes on disk.")
    fingerprint: str = Field(description="Identifies this file version: path, size and modification time.")


def _prefix_of(keys: list[str], suffix: str) -> str | None:
    for key in keys:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def _refuse(path: Path, field: str, why: str) -> ConfigError:
    return ConfigError(f"{field}: {path.name}: {why}", param=field)


def inspect_component(path: Path, field: str = "components") -> ComponentFile:
    """What the component file `path` is; a ConfigError naming `field` and the file when it is none."""
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        raise _refuse(path, field, "a component file must be an existing .safetensors file")
    tensors, metadata = read_safetensors_header(path)
    keys = list(tensors)
    stat = path.stat()
    common = dict(path=str(path), param_count=parameter_count(tensors.values()),
                  param_bytes=sum(t.data_offsets[1] - t.data_offsets[0] for t in tensors.values()),
                  file_bytes=stat.st_size, fingerprint=f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    if (prefix := _prefix_of(keys, _T5_KEY)) is not None and (shared := _t5_width(tensors, prefix)):
        return ComponentFile(kind="t5xxl", prefix=prefix, families=list(FLOW_FAMILIES), width=shared, **common)
    if (prefix := _prefix_of(keys, _CLIP_KEY)) is not None:
        width = tensors[prefix + _CLIP_KEY].shape[1]
        kind = _CLIP_BY_WIDTH.get(width)
        if kind is None:
            raise _refuse(path, field, f"a CLIP text encoder of width {width} (768 = clip_l, 1280 = clip_g)")
        fams = [f for f in Family if kind in REQUIRED_COMPONENTS[f]]
        return ComponentFile(kind=kind, prefix=prefix, families=fams, width=width, **common)
    if (prefix := _prefix_of(keys, _VAE_KEY)) is not None:
        channels = tensors[prefix + _VAE_KEY].shape[1]
        fams = list(FLOW_FAMILIES) if channels == FLOW_LATENT_CHANNELS else list(UNET_FAMILIES) \
            if channels == UNET_LATENT_CHANNELS else []
        layout = "original" if any(k.startswith(prefix + "encoder.down.") for k in keys) else "diffusers"
        return ComponentFile(kind="vae", prefix=prefix, layout=layout, families=fams, width=channels, **common)
    verdict = detect_family(tensors, metadata)
    if verdict.family is not None:
        return ComponentFile(kind="unet" if verdict.family.denoiser == "unet" else "transformer",
                             prefix=verdict.prefix, layout=verdict.layout, families=[verdict.family], **common)
    raise _refuse(path, field, "not a component file: no CLIP (`embeddings.token_embedding`), T5 (`encoder.block`), "
                  f"VAE (`decoder.conv_in`) or denoiser tensors ({verdict.reason})")


def _t5_width(tensors: dict[str, TensorHeader], prefix: str) -> int:
    shared = tensors.get(prefix + "shared.weight") or tensors.get(prefix + "encoder.embed_tokens.weight")
    return shared.shape[1] if shared is not None else tensors[prefix + _T5_KEY].shape[1]


def check_component(component: ComponentFile, family: Family, mode: str, field: str) -> None:
    """Refuse a component file made for another family than the mode's, naming the file and both families."""
    if family in component.families:
        return
    made_for = ", ".join(f.value for f in component.families) or "no served family"
    name = Path(component.path).name
    detail = f" with {component.width} latent channels" if component.kind == "vae" else ""
    raise ConfigError(f"{field}: {name} is {_NAMES[component.kind]}{detail} for {made_for}; mode {mode!r} is "
                      f"{family.value}, which takes {', '.join(REQUIRED_COMPONENTS[family])}", param=field)


class ComponentPaths(StrictModel):
    """The component files a mode names, resolved to absolute paths."""

    text_encoders: list[str] = Field(default_factory=list, description="Text encoder files.")
    vae: str | None = Field(None, description="VAE file.")
    transformer: str | None = Field(None, description="Transformer (denoiser) file of SD3 / FLUX.")
    unet: str | None = Field(None, description="UNet (denoiser) file of the SD 1.x / 2.x / SDXL families.")
    config: str | None = Field(None, description="A diffusers folder whose configs and tokenizers are used.")

    def files(self) -> list[tuple[str, str]]:
        """(modes-file field, path) of every component file."""
        named = [(f"components.text_encoders[{i}]", p) for i, p in enumerate(self.text_encoders)]
        named += [(f"components.{k}", p) for k in ("vae", "transformer", "unet") if (p := getattr(self, k))]
        return named
