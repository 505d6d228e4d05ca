"""One optimiser step under mixed precision, shared by the Trainer, the speed benchmark and
the CUDA tests: autocast for the forward, then zero_grad -> (scaled) backward -> step."""

from __future__ import annotations

import torch


class AmpStep:
    """``with s.autocast(): loss = ...`` then ``s.step(loss)``.

    ``dtype``: None (fp32), ``torch.bfloat16`` or ``torch.float16``; fp16 uses a GradScaler,
    which skips steps whose gradients overflow (the official CARE setting).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, dtype: torch.dtype | None, device_type: str
    ):
        self.optimizer, self.dtype, self.device_type = optimizer, dtype, device_type
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    def autocast(self, cache_enabled: bool = True):
        return torch.autocast(
            device_type=self.device_type,
            dtype=self.dtype,
            enabled=self.dtype is not None,
            cache_enabled=cache_enabled,
        )

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.apply()

    def apply(self) -> None:
        """The optimiser step on gradients already computed (the CUDA-graph step's)."""
        self.scaler.step(self.optimizer)
        self.scaler.update()
