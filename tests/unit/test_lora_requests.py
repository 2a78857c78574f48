"""LoRAs in requests: A1111 `<lora:...>` tags out of prompts, and resolution against MODEL_ROOT's LoRAs with
the mode's limits and family (errors naming the client's field)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.api.a1111_prompt_tags import split_lora_tags
from serve_app.api.adapter_catalog import AdapterCatalog
from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.a1111 import A1111Txt2ImgRequest
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.config.modes_file import ModeConfig, ModeLimits
from serve_app.core.errors import RequestValidationError, UnknownAdapterError
from serve_app.model.demo.demo_adapters import write_demo_adapters
from serve_app.model.families import Family

SD1 = ModeConfig(name="sd1", checkpoint="tiny-sd1", limits=ModeLimits(max_loras=2, max_lora_weight=1.5))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> AdapterCatalog:
    root = tmp_path_factory.mktemp("root")
    write_demo_adapters(root)
    return AdapterCatalog(root)


@pytest.mark.parametrize(("prompt", "clean", "loras"), [
    ("a cat <lora:ink:0.6>", "a cat", [{"name": "ink", "weight": 0.6}]),
    ("<lora:ink> a cat, <LORA:pastel:-0.5:0.8:lbw=OUTD>", "a cat,", [{"name": "ink", "weight": 1.0},
                                                                      {"name": "pastel", "weight": -0.5}]),
    ("no tags <here> at all", "no tags <here> at all", []),
    ("a <lyco:thing:1> dog", "a <lyco:thing:1> dog", []),
])
def test_lora_tags_leave_the_prompt(prompt: str, clean: str, loras: list) -> None:
    assert split_lora_tags(prompt) == (clean, loras)


def test_a_lora_tag_with_a_bad_weight_names_the_prompt() -> None:
    with pytest.raises(RequestValidationError, match="<lora:ink:heavy>") as info:
        split_lora_tags("a cat <lora:ink:heavy>")
    assert info.value.param == "prompt"


def test_native_loras_resolve_to_files_and_weights(catalog: AdapterCatalog) -> None:
    req = Txt2ImgRequest(prompt="x", loras=[{"name": "tiny-sd1-lora", "weight": 0.5},
                                            {"name": "tiny-sd1-lora-kohya"}])
    resolved = resolve_request(req, SD1, Family.SD1, adapters=catalog)
    assert [(lo.name, lo.weight) for lo in resolved.loras] == [("tiny-sd1-lora", 0.5), ("tiny-sd1-lora-kohya", 1.0)]
    assert all(Path(lo.path).is_file() and lo.file_bytes > 0 for lo in resolved.loras)
    assert resolve_request(Txt2ImgRequest(prompt="x"), SD1, Family.SD1, adapters=catalog).loras == []


@pytest.mark.parametrize(("loras", "error", "param", "text"), [
    ([{"name": "nope"}], UnknownAdapterError, "loras[0].name", "LoRAs for sd1: tiny-sd1-lora, tiny-sd1-lora-kohya"),
    ([{"name": "tiny-sdxl-lora"}], RequestValidationError, "loras[0].name", "made for sdxl; mode 'sd1' is sd1"),
    ([{"name": "tiny-sd1-lora", "weight": 2}], RequestValidationError, "loras[0].weight", "between -1.5 and 1.5"),
    ([{"name": "tiny-sd1-lora"}] * 3, RequestValidationError, "loras", "at most 2"),
])
def test_bad_loras_name_the_field(catalog: AdapterCatalog, loras: list, error: type, param: str, text: str) -> None:
    with pytest.raises(error, match=text) as info:
        resolve_request(Txt2ImgRequest(prompt="x", loras=loras), SD1, Family.SD1, adapters=catalog)
    assert info.value.param == param
    assert (info.value.status_code == 404) is (error is UnknownAdapterError)


def test_a1111_lora_errors_name_the_prompt(catalog: AdapterCatalog) -> None:
    native = A1111Txt2ImgRequest(prompt="a cat <lora:nope:1>").to_native("sd1")
    assert native.prompt == "a cat"
    with pytest.raises(UnknownAdapterError) as info:
        resolve_request(native, SD1, Family.SD1, adapters=catalog)
    assert info.value.param == "prompt" and "'nope'" in info.value.message


def test_a_huge_tagged_prompt_is_refused_before_its_tags_are_parsed() -> None:
    from serve_app.core.errors import RequestValidationError

    prompt = "<lora:" * 8_000_000  # 48 MB: parsing its tags would hold the router's loop for seconds
    with pytest.raises(RequestValidationError, match="more than the 65536") as err:
        split_lora_tags(prompt)
    assert err.value.param == "prompt" and "'<lora:<lora:" in err.value.message
