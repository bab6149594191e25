"""`auto` precision: bf16 on a GPU and on a CPU that computes bf16 natively, fp32 on other CPUs."""

from __future__ import annotations

import pytest
import torch

from omniseq.config import ConfigError
from omniseq.model import precision


@pytest.mark.parametrize(
    "caps, expected",
    [({"avx512_bf16": True}, True), ({"amx_bf16": True}, True), ({"avx2": True}, False), ({}, False)],
)
def test_auto_asks_the_cpu(monkeypatch, caps, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert precision.use_bf16("auto", torch.device("cpu")) is expected


def test_auto_is_bf16_on_a_gpu_and_an_explicit_choice_is_kept(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})
    assert precision.use_bf16("auto", torch.device("cuda"))
    assert precision.use_bf16("bf16", torch.device("cpu")) and not precision.use_bf16("fp32", torch.device("cuda"))


def test_auto_device_is_cuda_exactly_when_torch_sees_one(monkeypatch):
    for seen in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda seen=seen: seen)
        assert precision.pick_device("auto").type == ("cuda" if seen else "cpu")
    assert precision.pick_device("cpu").type == "cpu"


def test_a_device_that_is_not_there_or_not_a_choice_is_a_config_error(monkeypatch):
    from omniseq.config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device: cuda asked for, but torch sees no CUDA device"):
        precision.pick_device("cuda")
    with pytest.raises(ConfigError, match=r"sample.device: expected one of \['auto', 'cpu', 'cuda'\], got 'gpu'"):
        precision.pick_device("gpu", key="sample.device")


def test_an_unknown_dtype_is_an_error_naming_its_key():
    with pytest.raises(ConfigError, match=r"dtype: expected one of \['auto', 'bf16', 'fp32'\], got 'float16'"):
        precision.use_bf16("float16", torch.device("cpu"))
