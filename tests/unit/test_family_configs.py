"""The shipped diffusers config folders (serve_app/model/loading/family_configs/) are complete and exact.

Offline and fast: models are built on the ``meta`` device (no weights allocated) only to count
their parameters against the public checkpoints' known counts.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from serve_app.model.families import FAMILY_BY_CROSS_ATTENTION_DIM, UNET_FAMILIES, Family
from serve_app.model.loading.family_configs import FAMILY_CONFIGS_ROOT, FAMILY_DIRS, config_dir

REPO_ROOT = Path(__file__).resolve().parents[2]

PIPELINE_CLASS = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline",
}

CROSS_ATTENTION_DIM = {"sd1": 768, "sd2": 1024, "sdxl": 2048, "sdxl-refiner": 1280}

# Parameter counts of the public checkpoints' components (diffusers / transformers layout).
# The refiner's 2,259,526,660 agrees with sd_xl_refiner_1.0.safetensors being 6.08 GB in fp16
# (UNet + OpenCLIP bigG text tower with projection + VAE = 3.04 G params).
PARAMS = {
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    },
    "sdxl-refiner": {"unet": 2_259_526_660, "vae": 83_653_863, "text_encoder_2": 694_659_840},
}

# (component, pad token) per family; CLIP-L pads with <|endoftext|>, the OpenCLIP towers with "!".
TOKENIZERS = {
    "sd1": {"tokenizer": "<|endoftext|>"},
    "sd2": {"tokenizer": "!"},
    "sdxl": {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"},
    "sdxl-refiner": {"tokenizer_2": "!"},
}

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]

families = pytest.mark.parametrize("family", FAMILY_DIRS)


def _dir(family: str) -> Path:
    return FAMILY_CONFIGS_ROOT / family


def _json(family: str, rel: str) -> dict:
    return json.loads((_dir(family) / rel).read_text(encoding="utf-8"))


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_one_folder_per_family():
    assert set(FAMILY_DIRS) == {f.value for f in UNET_FAMILIES}
    for family in FAMILY_DIRS:
        assert Path(config_dir(family)) == _dir(family)
        assert config_dir(Family(family)) == config_dir(family)
    with pytest.raises(KeyError):
        config_dir("sd3")


@families
def test_every_json_parses(family):
    files = sorted(_dir(family).rglob("*.json"))
    assert len(files) >= 6
    for path in files:
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict), path


@families
def test_model_index_names_pipeline_and_components(family):
    index = _json(family, "model_index.json")
    assert index["_class_name"] == PIPELINE_CLASS[family]
    components = {k: v for k, v in index.items() if isinstance(v, list)}
    for name, (library, cls) in components.items():
        folder = _dir(family) / name
        if library is None:
            assert cls is None and not folder.exists(), name
        else:
            assert library in ("diffusers", "transformers"), name
            assert folder.is_dir(), f"{family}: {name} has no folder"
    present = {name for name, (library, _) in components.items() if library is not None}
    on_disk = {p.name for p in _dir(family).iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert present == on_disk
    if family in ("sd1", "sd2"):
        assert components["safety_checker"] == [None, None]
        assert components["feature_extractor"] == [None, None]
        assert index["requires_safety_checker"] is False
    if family == "sdxl-refiner":
        assert index["requires_aesthetics_score"] is True
        assert components["text_encoder"] == [None, None] and components["tokenizer"] == [None, None]


@families
def test_unet_cross_attention_dim_maps_back_to_family(family):
    dim = _json(family, "unet/config.json")["cross_attention_dim"]
    assert dim == CROSS_ATTENTION_DIM[family]
    assert FAMILY_BY_CROSS_ATTENTION_DIM[dim].value == family


@families
def test_meta_parameter_counts(family):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    counts = {}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(_dir(family) / "unet"))
        counts["unet"] = _count(unet)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(_dir(family) / "vae"))
        counts["vae"] = _count(vae)
        for name in ("text_encoder", "text_encoder_2"):
            if (_dir(family) / name).is_dir():
                config = CLIPTextConfig.from_pretrained(_dir(family) / name, local_files_only=True)
                expected_cls = _json(family, "model_index.json")[name][1]
                assert config.architectures == [expected_cls]
                cls = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}[
                    expected_cls
                ]
                model = cls(config)
                assert next(model.parameters()).device.type == "meta"
                counts[name] = _count(model)
    assert counts == PARAMS[family]


@families
def test_scheduler_loads(family):
    import diffusers

    config = _json(family, "scheduler/scheduler_config.json")
    assert config["_class_name"] == _json(family, "model_index.json")["scheduler"][1]
    scheduler = getattr(diffusers, config["_class_name"]).from_pretrained(
        _dir(family), subfolder="scheduler", local_files_only=True
    )
    expected = "v_prediction" if family == "sd2" else "epsilon"
    assert scheduler.config.prediction_type == expected
    assert scheduler.config.num_train_timesteps == 1000


@families
def test_tokenizers_are_real_clip_bpe(family):
    from transformers import CLIPTokenizer

    for name, pad in TOKENIZERS[family].items():
        tok = CLIPTokenizer.from_pretrained(_dir(family) / name, local_files_only=True)
        assert tok("a photo of a cat").input_ids == CAT_IDS
        assert len(tok) == 49408
        assert tok.model_max_length == 77
        assert tok.pad_token == pad
        assert (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)
        ids = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
        assert len(ids) == 77 and ids[7] == tok.pad_token_id


@families
def test_pipeline_accepts_the_components(family):
    """The pipeline class takes exactly what model_index declares (components built on meta)."""
    import diffusers
    import transformers

    index = _json(family, "model_index.json")
    kwargs = {}
    with torch.device("meta"):  # schedulers are built after this block: they hold real tensors
        for name, value in index.items():
            if name.startswith("_"):
                continue
            if not isinstance(value, list):
                kwargs[name] = value
                continue
            library, cls_name = value
            if library is None:
                kwargs[name] = None
                continue
            cls = getattr(diffusers if library == "diffusers" else transformers, cls_name)
            if name.startswith("tokenizer"):
                kwargs[name] = cls.from_pretrained(_dir(family) / name, local_files_only=True)
            elif name.startswith("text_encoder"):
                kwargs[name] = cls(transformers.CLIPTextConfig.from_pretrained(_dir(family) / name))
            elif name == "scheduler":
                continue
            else:
                kwargs[name] = cls.from_config(cls.load_config(_dir(family) / name))
    scheduler_cls = getattr(diffusers, index["scheduler"][1])
    kwargs["scheduler"] = scheduler_cls.from_pretrained(_dir(family), subfolder="scheduler", local_files_only=True)
    with torch.device("meta"):
        pipe = getattr(diffusers, index["_class_name"])(**kwargs)
    assert type(pipe).__name__ == PIPELINE_CLASS[family]
    assert pipe.vae_scale_factor == 8


def _generator():
    path = REPO_ROOT / "scripts" / "make_family_configs.py"
    spec = importlib.util.spec_from_file_location("make_family_configs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@families
def test_shipped_json_matches_generator(family):
    """The folder is what scripts/make_family_configs.py writes (nobody edited it by hand)."""
    gen = _generator()
    for rel, obj in gen.FAMILIES[family].items():
        assert _json(family, rel) == json.loads(json.dumps(obj)), rel
    assert gen.TOKENIZERS[family] == TOKENIZERS[family]
