"""Import torch-geometric-temporal without torch_sparse.

torch-geometric-temporal 0.56.2 imports ``torch_sparse`` only for the
``SparseTensor`` type, and ``torch_sparse`` has no wheels (it compiles for over
30 minutes). Upstream dropped the dependency after that release
(pytorch_geometric_temporal PR #304) by taking ``SparseTensor`` from
``torch_geometric.typing``; this does the same for the released package.
"""

from __future__ import annotations

import importlib
import sys
import types


def import_torch_geometric_temporal() -> types.ModuleType:
    """Register a minimal ``torch_sparse`` if it is missing, then import the library."""
    try:
        importlib.import_module("torch_sparse")
    except ImportError:
        from torch_geometric.typing import SparseTensor

        shim = types.ModuleType("torch_sparse")
        shim.SparseTensor = SparseTensor
        sys.modules["torch_sparse"] = shim
    return importlib.import_module("torch_geometric_temporal")
