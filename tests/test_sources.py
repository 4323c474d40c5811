"""The one model registry: built-in ResNets, torchvision, timm and user callables by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sigprop.sources import ModelSource, Source


def test_resnet_source_builds_the_configured_network_from_a_seed() -> None:
    source = ModelSource.parse("resnet", depth=3, width=4)
    assert (source.source, str(source)) == (Source.RESNET, "resnet")
    (net, info), (again, _) = source.builder()(1), source.builder()(1)
    assert info["depth"] == 3 and info["width"] == 4 and info["name"] == "resnet"
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), again.parameters(),
                                                 strict=True))


@pytest.mark.parametrize(("text", "source", "name"), [
    ("torchvision:resnet18", Source.TORCHVISION, "resnet18"),
    ("timm:resnet18", Source.TIMM, "resnet18"),
    ("model:examples/custom_net.py:build", Source.MODEL, "examples/custom_net.py:build"),
])
def test_names_parse_and_build(text: str, source: Source, name: str) -> None:
    parsed = ModelSource.parse(text)
    assert (parsed.source, parsed.name, str(parsed)) == (source, name, text)
    model, info = parsed.builder()(0)
    assert isinstance(model, torch.nn.Module) and info["name"] == name


@pytest.mark.parametrize(("text", "message"), [
    ("keras:resnet", "unknown model source 'keras'"),
    ("resnet:deep", "write 'resnet' (with keyword arguments)"),
    ("torchvision", "write 'resnet' (with keyword arguments)"),
    ("torchvision:resnet5O", "unknown torchvision classification model 'resnet5O'; did you mean"),
    ("timm:resnet5O", "unknown timm model 'resnet5O'; did you mean"),
    ("model:no/such/file.py:build", "no such file"),
])
def test_bad_names_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelSource.parse(text).builder()


def test_a_user_callable_gets_its_keyword_arguments(tmp_path: Path) -> None:
    source = tmp_path / "net.py"
    source.write_text("from torch import nn\n\ndef build(width=2):\n"
                      "    return nn.Linear(width, width)\n")
    model, info = ModelSource.parse(f"model:{source}:build", width=5).builder()(0)
    assert model.in_features == 5 and info["width"] == 5
