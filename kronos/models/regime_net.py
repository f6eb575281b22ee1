"""The regime encoder's network: input projection, S4D blocks, a head to state logits.

See :mod:`kronos.models.regime` for the architecture. Torch only: loading and
running a saved encoder never imports Lightning, which
:mod:`kronos.models.regime_fit` uses to train it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["RegimeNet", "S4DKernel", "S4DLayer"]


class S4DKernel(nn.Module):
    """The convolution kernel of a diagonal state space, ZOH-discretized (S4D-Lin init)."""

    def __init__(self, d_model: int, d_state: int, dt_min: float, dt_max: float) -> None:
        super().__init__()
        n = d_state // 2  # conjugate pairs: the real output keeps one of each
        log_dt = torch.rand(d_model) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_a_real = nn.Parameter(torch.log(0.5 * torch.ones(d_model, n)))
        self.a_imag = nn.Parameter(
            math.pi * torch.arange(n, dtype=torch.float32).repeat(d_model, 1)
        )
        self.c = nn.Parameter(torch.view_as_real(torch.randn(d_model, n, dtype=torch.cfloat)))

    def forward(self, length: int) -> torch.Tensor:
        """The kernel ``(d_model, length)``."""
        dt = torch.exp(self.log_dt)
        a = torch.complex(-torch.exp(self.log_a_real), self.a_imag)
        dta = a * dt[:, None]
        c = torch.view_as_complex(self.c.contiguous()) * (torch.exp(dta) - 1.0) / a
        # exp(l dtA) for l = j B + i as exp(i dtA) exp(j B dtA): 2 sqrt(L) exponentials
        # per mode instead of L, then one batched product over the modes
        block = math.isqrt(max(length - 1, 0)) + 1  # block**2 >= length
        blocks = -(-length // block)  # <= block
        steps = torch.arange(block, device=a.device, dtype=self.log_dt.dtype)
        small = torch.exp(dta[:, :, None] * steps)  # (H, N, B)
        large = torch.exp(dta[:, :, None] * (steps[:blocks] * block))  # (H, N, J)
        kernel = torch.bmm(large.transpose(1, 2), c[:, :, None] * small)  # (H, J, B)
        return 2 * kernel.real.reshape(kernel.shape[0], -1)[:, :length]


class S4DLayer(nn.Module):
    """S4D convolution with skip ``D``, GELU, dropout, then a 1x1 convolution with GLU."""

    def __init__(
        self, d_model: int, d_state: int, dropout: float, dt_min: float, dt_max: float
    ) -> None:
        super().__init__()
        self.kernel = S4DKernel(d_model, d_state, dt_min, dt_max)
        self.d = nn.Parameter(torch.randn(d_model))
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Sequential(nn.Conv1d(d_model, 2 * d_model, 1), nn.GLU(dim=-2))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``(batch, d_model, length)`` -> same shape; causal in ``length``."""
        length = u.shape[-1]
        k = self.kernel(length)
        n_fft = 1 << (2 * length - 1).bit_length()  # zero padding: no circular wrap-around
        y = torch.fft.irfft(torch.fft.rfft(u, n=n_fft) * torch.fft.rfft(k, n=n_fft), n=n_fft)[
            ..., :length
        ]
        y = y + u * self.d[:, None]
        return self.output(self.dropout(self.activation(y)))


class RegimeNet(nn.Module):
    """Input projection, residual S4D blocks with LayerNorm, a linear head to state logits."""

    def __init__(
        self,
        n_inputs: int,
        n_states: int,
        d_model: int,
        d_state: int,
        n_layers: int,
        dropout: float,
        dt_min: float,
        dt_max: float,
    ) -> None:
        super().__init__()
        self.encoder = nn.Linear(n_inputs, d_model)
        self.layers = nn.ModuleList(
            S4DLayer(d_model, d_state, dropout, dt_min, dt_max) for _ in range(n_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, n_states)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length, n_inputs)`` -> the last block's output ``(batch, length, d_model)``."""
        h = self.encoder(x)
        for layer, norm in zip(self.layers, self.norms, strict=True):
            z = self.dropout(layer(h.transpose(-1, -2))).transpose(-1, -2)
            h = norm(h + z)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """State logits ``(batch, length, n_states)``."""
        return self.head(self.hidden(x))

    def ssm_parameters(self) -> list[nn.Parameter]:
        """The state-space parameters (trained without weight decay)."""
        return [p for layer in self.layers for p in layer.kernel.parameters()]
