"""`auto` precision: bf16 on a GPU and on a CPU that computes bf16 natively, fp32 on other CPUs."""

from __future__ import annotations

import pytest
import torch

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
