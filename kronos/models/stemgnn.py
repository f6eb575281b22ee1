"""StemGNN (neuralforecast) as a graph forecaster: p05/p50/p95 for a universe at once.

The architecture is neuralforecast's ``StemGNN`` (Cao et al. 2020: a latent
correlation graph from self-attention over GRU states, then graph and
discrete Fourier transforms in two stacked blocks); data, training and
artifacts are :class:`~kronos.models.graph.GraphForecaster`'s. Two changes,
both in :class:`_KronosStemGNN`:

1. **Quantile outputs per series.** neuralforecast's ``MQLoss`` supports
   multivariate models, but ``StemGNN.forward`` lays its output out as
   ``[B, h, Q * N]`` (quantile-major) while ``MQLoss.domain_map`` reads
   ``[B, h, N * Q]`` (series-major): for ``N >= Q`` the three quantiles of
   series ``i`` then come from the head of three *different* nodes
   (``test_library_stemgnn_mixes_series_in_mqloss_layout`` shows it). Here the
   head's ``horizon * 3`` outputs of node ``i`` are the quantiles of series
   ``i``. The loss is the shared pinball loss on (0.05, 0.5, 0.95), not
   neuralforecast's training loop (one loop for both graph models).
2. **Prior graph.** StemGNN learns its graph from each batch of windows
   (attention averaged over the batch). The inter-asset graph (sectors and
   trailing correlation) enters as a prior: the attention matrix becomes
   ``(1 - prior_weight) * attention + prior_weight * P``, ``P`` the
   row-normalised adjacency, before StemGNN's symmetrisation and Laplacian.
   ``prior_weight=0`` is the library model.

Because the learned graph is a mean over the batch, a forecast depends on the
other windows of its batch: predictions run one window (origin) at a time.
Dropout (``TrainingConfig.dropout``) is StemGNN's attention dropout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from neuralforecast.losses.pytorch import MQLoss
from neuralforecast.models import StemGNN

from kronos.errors import ConfigError
from kronos.models.base import HORIZON, QUANTILES, TrainingConfig
from kronos.models.graph import N_QUANTILES, GraphForecaster
from kronos.models.lightning import trainer_options

__all__ = ["StemGnnForecaster"]


def _row_normalised(adjacency: np.ndarray) -> np.ndarray:
    rows = adjacency.sum(axis=1, keepdims=True)
    return np.divide(adjacency, rows, out=np.zeros_like(adjacency), where=rows > 0)


class _KronosStemGNN(StemGNN):
    """StemGNN with per-series quantile heads and a prior graph blended into its attention."""

    def set_prior(self, adjacency: np.ndarray, weight: float) -> None:
        """Blend ``weight`` of the row-normalised ``adjacency`` into the latent graph."""
        prior = torch.tensor(_row_normalised(adjacency), dtype=torch.float32)
        self.register_buffer("prior", prior, persistent=False)
        self.prior_weight = float(weight)

    def latent_correlation_layer(self, x):
        """The library's latent correlation layer, plus the prior blend."""
        inputs, _ = self.GRU(x.permute(2, 0, 1).contiguous())
        inputs = inputs.permute(1, 0, 2).contiguous()
        attention = torch.mean(self.self_graph_attention(inputs), dim=0)
        if self.prior_weight > 0:
            attention = (1 - self.prior_weight) * attention + self.prior_weight * self.prior.to(
                attention.dtype
            )
        degree = torch.sum(attention, dim=1)
        attention = 0.5 * (attention + attention.T)
        degree_l = torch.diag(degree)
        diagonal_degree_hat = torch.diag(1 / (torch.sqrt(degree) + 1e-7))
        laplacian = torch.matmul(
            diagonal_degree_hat, torch.matmul(degree_l - attention, diagonal_degree_hat)
        )
        return self.cheb_polynomial(laplacian), attention

    def cheb_polynomial(self, laplacian):
        """The library's, in the Laplacian's dtype (it builds the first term in float32)."""
        n = laplacian.size(0)
        laplacian = laplacian.unsqueeze(0)
        first = torch.zeros([1, n, n], device=laplacian.device, dtype=laplacian.dtype)
        second = laplacian
        third = 2 * torch.matmul(laplacian, second) - first
        fourth = 2 * torch.matmul(laplacian, third) - second
        return torch.cat([first, second, third, fourth], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``[B, input_size, N]`` -> ``[B, horizon, N, 3]``: each node's own quantiles."""
        batch = x.shape[0]
        mul_l, _ = self.latent_correlation_layer(x)
        X = x.unsqueeze(1).permute(0, 1, 3, 2).contiguous()
        result = []
        for stack_i in range(self.stack_cnt):
            forecast, X = self.stock_block[stack_i](X, mul_l)
            result.append(forecast)
        out = self.fc(result[0] + result[1])  # [B, N, h * Q]
        return out.reshape(batch, self.n_series, self.h, N_QUANTILES).permute(0, 2, 1, 3)


class StemGnnForecaster(GraphForecaster):
    """StemGNN over a universe: sector-normalised inputs, prior graph, p05/p50/p95.

    Architecture: ``multi_layer`` (StemGNN's hidden multiplier: its spectral
    blocks hold about ``2 * 12 * (4 * multi_layer * input_size)**2`` weights,
    so 1 keeps the 90-day model at ~3M), ``leaky_rate`` (attention
    LeakyReLU), ``prior_weight`` (share of the inter-asset graph in the latent
    graph). The rest: :class:`~kronos.models.graph.GraphForecaster`.
    """

    name: ClassVar[str] = "stemgnn"
    _batch_independent: ClassVar[bool] = False

    def __init__(
        self,
        input_size: int = 90,
        horizon: int = HORIZON,
        sectors: Mapping[str, str | None] | None = None,
        training: TrainingConfig | None = None,
        multi_layer: int = 1,
        leaky_rate: float = 0.2,
        prior_weight: float = 0.5,
        val_check_steps: int | None = 50,
        max_valid: int | None = 252,
        correlation_window: int = 252,
        correlation_min_periods: int = 60,
        min_correlation: float = 0.3,
        sector_weight: float = 0.5,
        predict_batch_size: int = 256,
    ):
        super().__init__(
            input_size=input_size,
            horizon=horizon,
            sectors=sectors,
            training=training,
            val_check_steps=val_check_steps,
            max_valid=max_valid,
            correlation_window=correlation_window,
            correlation_min_periods=correlation_min_periods,
            min_correlation=min_correlation,
            sector_weight=sector_weight,
            predict_batch_size=predict_batch_size,
        )
        self.multi_layer = multi_layer
        self.leaky_rate = leaky_rate
        self.prior_weight = prior_weight

    def _architecture(self) -> dict[str, Any]:
        return {
            "multi_layer": self.multi_layer,
            "leaky_rate": self.leaky_rate,
            "prior_weight": self.prior_weight,
        }

    def _network(self, n_nodes: int, prior: np.ndarray, training: TrainingConfig) -> _KronosStemGNN:
        if not 0.0 <= self.prior_weight <= 1.0:
            raise ConfigError(f"prior_weight must lie in [0, 1], not {self.prior_weight}")
        net = _KronosStemGNN(
            h=self.horizon,
            input_size=self.input_size,
            n_series=n_nodes,
            multi_layer=self.multi_layer,
            dropout_rate=training.dropout,
            leaky_rate=self.leaky_rate,
            loss=MQLoss(quantiles=list(QUANTILES)),
            random_seed=training.seed,
            **trainer_options(training),  # kept on the module; training is GraphForecaster's
        )
        net.set_prior(prior, self.prior_weight)
        return net
