"""The few torch APIs whose spelling changed between torch 2.0 and today."""

from __future__ import annotations

from typing import Callable

import torch


def compiler_disable(fn: Callable) -> Callable:
    """torch.compiler.disable (torch >= 2.1), or torch._dynamo.disable before it."""
    compiler = getattr(torch, "compiler", None)
    disable = getattr(compiler, "disable", None)
    if disable is None:
        import importlib

        disable = importlib.import_module("torch._dynamo").disable
    return disable(fn)


# One C call that says whether autocast is on for any device (torch >= 2.4): the
# common case, autocast off, skips the per-device queries below.
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", None)


def any_autocast() -> bool:
    """Whether autocast may be on for some device: exact on torch >= 2.4 (one C call),
    always True before it (then autocast_state asks per device)."""
    return _any_autocast is None or bool(_any_autocast())


def autocast_state(device_type: str) -> str:
    """'noautocast' or 'autocast:<dtype>' for autocast on device_type ('cpu' or 'cuda')."""
    if _any_autocast is not None and not _any_autocast():
        return "noautocast"
    try:  # torch >= 2.4 takes the device type
        enabled = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if enabled else None
    except (TypeError, AttributeError):
        if device_type == "cuda":
            enabled = torch.is_autocast_enabled()
            dtype = torch.get_autocast_gpu_dtype() if enabled else None
        else:
            enabled = torch.is_autocast_cpu_enabled()
            dtype = torch.get_autocast_cpu_dtype() if enabled else None
    return f"autocast:{dtype}" if enabled else "noautocast"
