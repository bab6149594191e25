"""Which device and dtype `auto` mean here: CUDA when there is one; bf16 where the hardware computes it.

A CPU without native bf16 (no AVX512-BF16, no AMX-BF16: the AMD EPYC machines with AVX2 only) emulates bf16
matmuls: the demo model's stage 1 ran 161 tokens/s there in bf16 against ~13,000 tokens/s on a machine with
AMX-BF16 (docs/training.md). So `auto` asks the CPU, and a config that pins `bf16` is taken at its word.
"""

from __future__ import annotations

import torch

from omniseq.config import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")


def pick_device(choice: str, key: str = "device") -> torch.device:
    """`choice` is auto | cpu | cuda; auto = CUDA when torch sees a GPU. `cuda` without one is a ConfigError
    naming `key`, not a crash deep inside the first `.to()`."""
    if choice not in DEVICES:
        raise ConfigError(f"{key}: expected one of {list(DEVICES)}, got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: cuda asked for, but torch sees no CUDA device (use auto or cpu)")
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16, as torch's CPU capability probe reports them (False where it cannot tell)."""
    probe = getattr(torch.cpu, "get_capabilities", None)
    caps = probe() if probe is not None else {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def use_bf16(choice: str, device: torch.device, key: str = "dtype") -> bool:
    """`choice` is bf16 | fp32 | auto; auto = bf16 on a GPU and on a CPU with native bf16. Anything else is a
    ConfigError naming `key` (float16 would otherwise run in fp32 without a word)."""
    if choice not in PRECISIONS:
        raise ConfigError(f"{key}: expected one of {list(PRECISIONS)}, got {choice!r}")
    if choice != "auto":
        return choice == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def torch_rng_state(device: torch.device) -> dict:
    """torch's generators a training loop on `device` draws from, as checkpoint entries: the CPU's always, the
    GPU's too on CUDA (k-means init, the quantizers' sampling and code expiry run there)."""
    state = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def set_torch_rng_state(state: dict, device: torch.device) -> None:
    """Restores what `torch_rng_state` saved; a checkpoint written on the CPU resumed on CUDA keeps the GPU's seed."""
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
