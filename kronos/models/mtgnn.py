"""MTGNN (torch-geometric-temporal) as a graph forecaster, with a learned or a prior graph.

The architecture is torch-geometric-temporal's ``MTGNN`` (Wu et al. 2020:
dilated inception convolutions over time, mix-hop graph propagation over the
symbols); data, training and artifacts are
:class:`~kronos.models.graph.GraphForecaster`'s. The network reads one input
channel (the sector-normalised return) and emits ``horizon * 3`` channels per
node: the quantiles (0.05, 0.5, 0.95) of each step, trained with the pinball
loss and sorted at prediction.

``graph`` chooses the adjacency the propagation uses:

- ``"learned"`` (the default): MTGNN's graph-learning layer builds it from two
  node embeddings, keeping the ``subgraph_size`` strongest neighbours of each
  node. ``A[i, j] > 0`` means node ``i`` draws on node ``j`` (MTGNN propagates
  along ``A`` and its transpose). After fitting it is a fixed matrix: saved
  as ``learned_graph.npz`` (symbols + matrix), drawn beside the prior graph in
  ``learned_graph.png``, and summarised in ``config.json`` under
  ``learned_graph``: the most strongly coupled pairs (``top_pairs``, with
  their sector and prior correlation), the names most nodes draw on
  (``hubs``), and the share of learned edges inside a sector against the
  share of all pairs that are (``same_sector_share``,
  ``same_sector_base_rate``): does it rediscover the sectors? With
  MTGNN's ``tanhalpha=3`` the weights saturate near 1, so ties are common and
  ``hubs`` is often the clearer reading;
- ``"prior"``: the inter-asset graph (sectors and trailing correlation,
  :func:`kronos.features.graph.inter_asset_graph`), fixed.

torch-geometric-temporal is imported through :mod:`kronos.models.graph_compat`.
Dropout (``TrainingConfig.dropout``) is MTGNN's.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
import torch
from torch import nn

from kronos.errors import ConfigError
from kronos.models.base import HORIZON, ForecastError, TrainingConfig
from kronos.models.graph import N_QUANTILES, GraphForecaster
from kronos.models.graph_compat import import_torch_geometric_temporal

__all__ = [
    "MtgnnForecaster",
    "MtgnnPriorForecaster",
    "hubs",
    "plot_adjacency",
    "read_learned_graph",
    "same_sector_share",
    "top_pairs",
]

TOP_PAIRS = 10


class _MtgnnNet(nn.Module):
    """MTGNN on ``[B, input_size, N]`` windows, out ``[B, horizon, N, 3]``."""

    def __init__(self, *, horizon: int, learn_graph: bool, prior: np.ndarray, **kwargs: Any):
        super().__init__()
        import_torch_geometric_temporal()
        from torch_geometric_temporal.nn.attention import MTGNN

        self.horizon = horizon
        self.learn_graph = learn_graph
        # build_adj=False: the learned adjacency is computed here (see _learned) and passed in
        self.mtgnn = MTGNN(
            gcn_true=True, build_adj=False, in_dim=1, out_dim=horizon * N_QUANTILES, **kwargs
        )
        self.register_buffer("prior", torch.tensor(prior, dtype=torch.float32), persistent=False)

    def _learned(self) -> torch.Tensor:
        """MTGNN's graph-learning layer (input-independent) on all nodes."""
        return self.mtgnn._graph_constructor(self.mtgnn._idx.to(self.prior.device))

    def float64(self) -> _MtgnnNet:
        """A float64 copy; the graph-learning layer stays float32 (it cannot run in float64)."""
        net = copy.deepcopy(self).double().eval()
        net.mtgnn._graph_constructor.float()
        return net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, nodes = x.shape
        a = (self._learned() if self.learn_graph else self.prior).to(x.dtype)
        out = self.mtgnn(x.transpose(1, 2).unsqueeze(1), A_tilde=a)  # [B, h * Q, N, 1]
        return out.squeeze(-1).reshape(batch, self.horizon, N_QUANTILES, nodes).transpose(2, 3)

    @torch.no_grad()
    def adjacency(self) -> np.ndarray:
        """The adjacency the propagation uses (learned, or the prior)."""
        a = self._learned() if self.learn_graph else self.prior
        return a.double().cpu().numpy()


def top_pairs(
    symbols: Sequence[str],
    adjacency: np.ndarray,
    sectors: Sequence[str | None],
    correlation: np.ndarray,
    k: int = TOP_PAIRS,
) -> list[dict[str, Any]]:
    """The ``k`` most strongly coupled pairs: ``A[i, j] + A[j, i]``, strongest first."""
    strength = adjacency + adjacency.T
    i, j = np.triu_indices(len(symbols), k=1)
    order = np.argsort(-strength[i, j], kind="stable")
    out = []
    for n in order[:k]:
        a, b = int(i[n]), int(j[n])
        if strength[a, b] <= 0:
            break
        out.append(
            {
                "pair": [symbols[a], symbols[b]],
                "weight": float(strength[a, b]),
                "direction": (
                    f"{symbols[a]} <- {symbols[b]}"
                    if adjacency[a, b] >= adjacency[b, a]
                    else f"{symbols[b]} <- {symbols[a]}"
                ),
                "same_sector": bool(sectors[a] and sectors[a] == sectors[b]),
                "prior_correlation": float(correlation[a, b]),
            }
        )
    return out


def hubs(symbols: Sequence[str], adjacency: np.ndarray, k: int = TOP_PAIRS) -> list[dict[str, Any]]:
    """The ``k`` names the most nodes draw on (column sums of ``A``), strongest first."""
    weight = adjacency.sum(axis=0)
    count = np.count_nonzero(adjacency, axis=0)
    order = sorted(range(len(symbols)), key=lambda j: (-weight[j], symbols[j]))
    return [
        {"symbol": symbols[j], "drawn_on_by": int(count[j]), "weight": float(weight[j])}
        for j in order[:k]
        if weight[j] > 0
    ]


def same_sector_share(adjacency: np.ndarray, sectors: Sequence[str | None]) -> dict[str, float]:
    """Share of the graph's edges inside a sector, against the share of all pairs that are."""
    labels = np.asarray([s or "" for s in sectors], dtype=object)
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] != "")
    off = ~np.eye(len(labels), dtype=bool)
    edges = (adjacency > 0) & off
    return {
        "edges": float(edges.sum()),
        "same_sector_share": float(same[edges].mean()) if edges.any() else 0.0,
        "same_sector_base_rate": float(same[off].mean()) if off.any() else 0.0,
    }


def plot_adjacency(
    symbols: Sequence[str], learned: np.ndarray, prior: np.ndarray, path: Path, title: str
) -> None:
    """Heatmaps of the learned and the prior adjacency, side by side, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(symbols)
    size = max(6.0, 0.28 * n)
    fig = Figure(figsize=(2 * size + 1.5, size))
    FigureCanvasAgg(fig)
    for k, (matrix, label) in enumerate(
        ((learned, "learned (row i draws on column j)"), (prior, "prior: sectors + correlation"))
    ):
        ax = fig.add_subplot(1, 2, k + 1)
        image = ax.imshow(matrix, cmap="viridis", vmin=0.0)
        ax.set_title(label)
        if n <= 60:
            ax.set_xticks(range(n), labels=list(symbols), rotation=90, fontsize=7)
            ax.set_yticks(range(n), labels=list(symbols), fontsize=7)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


class MtgnnForecaster(GraphForecaster):
    """MTGNN over a universe: sector-normalised inputs, learned (or prior) graph, p05/p50/p95.

    Architecture (MTGNN's names): ``graph`` (``"learned"`` or ``"prior"``),
    ``layers``, ``conv_channels``, ``residual_channels``, ``skip_channels``,
    ``end_channels``, ``kernel_set``/``kernel_size``, ``dilation_exponential``,
    ``gcn_depth``, ``propalpha``; for the learned graph ``subgraph_size``
    (neighbours kept per node, at most the number of symbols), ``node_dim``
    and ``tanhalpha``. The rest: :class:`~kronos.models.graph.GraphForecaster`.
    """

    name: ClassVar[str] = "mtgnn"
    _default_graph: ClassVar[str] = "learned"

    def __init__(
        self,
        input_size: int = 90,
        horizon: int = HORIZON,
        sectors: Mapping[str, str | None] | None = None,
        training: TrainingConfig | None = None,
        graph: Literal["learned", "prior"] | None = None,
        layers: int = 3,
        conv_channels: int = 16,
        residual_channels: int = 16,
        skip_channels: int = 32,
        end_channels: int = 64,
        kernel_set: Sequence[int] = (2, 3, 6, 7),
        kernel_size: int = 7,
        dilation_exponential: int = 2,
        gcn_depth: int = 2,
        propalpha: float = 0.05,
        subgraph_size: int = 8,
        node_dim: int = 16,
        tanhalpha: float = 3.0,
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
        self.graph = graph
        self.layers = layers
        self.conv_channels = conv_channels
        self.residual_channels = residual_channels
        self.skip_channels = skip_channels
        self.end_channels = end_channels
        self.kernel_set = kernel_set
        self.kernel_size = kernel_size
        self.dilation_exponential = dilation_exponential
        self.gcn_depth = gcn_depth
        self.propalpha = propalpha
        self.subgraph_size = subgraph_size
        self.node_dim = node_dim
        self.tanhalpha = tanhalpha

    def _graph_kind(self) -> str:
        kind = self.graph or self._default_graph
        if kind not in ("learned", "prior"):
            raise ConfigError(f"graph must be 'learned' or 'prior', not {kind!r}")
        return kind

    def _architecture(self) -> dict[str, Any]:
        return {
            "graph": self._graph_kind(),
            "layers": self.layers,
            "conv_channels": self.conv_channels,
            "residual_channels": self.residual_channels,
            "skip_channels": self.skip_channels,
            "end_channels": self.end_channels,
            "kernel_set": list(self.kernel_set),
            "kernel_size": self.kernel_size,
            "dilation_exponential": self.dilation_exponential,
            "gcn_depth": self.gcn_depth,
            "propalpha": self.propalpha,
            "subgraph_size": self.subgraph_size,
            "node_dim": self.node_dim,
            "tanhalpha": self.tanhalpha,
        }

    def _network(self, n_nodes: int, prior: np.ndarray, training: TrainingConfig) -> _MtgnnNet:
        return _MtgnnNet(
            horizon=self.horizon,
            learn_graph=self._graph_kind() == "learned",
            prior=prior,
            gcn_depth=self.gcn_depth,
            num_nodes=n_nodes,
            kernel_set=list(self.kernel_set),
            kernel_size=self.kernel_size,
            dropout=training.dropout,
            subgraph_size=min(self.subgraph_size, n_nodes),
            node_dim=self.node_dim,
            dilation_exponential=self.dilation_exponential,
            conv_channels=self.conv_channels,
            residual_channels=self.residual_channels,
            skip_channels=self.skip_channels,
            end_channels=self.end_channels,
            seq_length=self.input_size,
            layers=self.layers,
            propalpha=self.propalpha,
            tanhalpha=self.tanhalpha,
            layer_norm_affline=True,
        )

    # ------------------------------------------------------------ the graph

    def adjacency(self) -> np.ndarray:
        """The ``(n, n)`` adjacency the fitted network propagates along, in ``symbols_`` order."""
        self._check_fitted()
        return self.network_.adjacency()

    def learned_graph(self) -> pl.DataFrame:
        """``target, source, weight``: the nonzero entries of :meth:`adjacency`.

        The target draws on the source; strongest first.
        """
        a = self.adjacency()
        i, j = np.nonzero(a)
        names = np.asarray(self.symbols_, dtype=object)
        return pl.DataFrame(
            {"target": names[i].tolist(), "source": names[j].tolist(), "weight": a[i, j]},
            schema={"target": pl.String, "source": pl.String, "weight": pl.Float64},
        ).sort("weight", descending=True)

    def top_coupled_pairs(self, k: int = TOP_PAIRS) -> list[dict[str, Any]]:
        """The ``k`` pairs the network couples most strongly (see :func:`top_pairs`)."""
        return top_pairs(
            self.symbols_, self.adjacency(), self.graph_.sectors, self.graph_.correlation, k
        )

    def _artifact_extras(self, directory: Path) -> dict[str, Any]:
        if self._graph_kind() != "learned":
            return {}
        learned = self.adjacency()
        np.savez(
            directory / "learned_graph.npz",
            symbols=np.asarray(self.symbols_, dtype=str),
            adjacency=learned,
        )
        plot_adjacency(
            self.symbols_,
            learned,
            self.graph_.adjacency,
            directory / "learned_graph.png",
            f"{self.name} {self.version}: learned graph vs prior (cutoff {self.graph_.cutoff})",
        )
        pairs = self.top_coupled_pairs()
        return {
            "learned_graph": {
                "file": "learned_graph.npz",
                "plot": "learned_graph.png",
                "edges": int(np.count_nonzero(learned)),
                "top_pairs": pairs,
                "top_pairs_same_sector": sum(p["same_sector"] for p in pairs),
                "hubs": hubs(self.symbols_, learned),
                **same_sector_share(learned, self.graph_.sectors),
            }
        }


class MtgnnPriorForecaster(MtgnnForecaster):
    """MTGNN propagating along the fixed inter-asset graph (``graph="prior"``)."""

    name: ClassVar[str] = "mtgnn_prior"
    _default_graph: ClassVar[str] = "prior"


def read_learned_graph(path: Path) -> tuple[list[str], np.ndarray]:
    """``learned_graph.npz``: the symbols and the matrix."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return [str(s) for s in f["symbols"]], np.asarray(f["adjacency"], dtype=np.float64)
    except (OSError, KeyError, ValueError) as exc:
        raise ForecastError(f"{path}: not a learned-graph file ({exc})") from exc
