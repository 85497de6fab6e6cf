"""Layer-wise attention pooling of the language model's states for the decoder's VRT inputs (optional).

By default the decoder reads, for each VRT, the last layer's state that predicted it (as the paper and the
released checkpoints do). With ``PaDTConfig.vrt_state_layers`` set, it reads a learned mix of that state and the
outputs of the chosen earlier layers, in the manner of UniFusion's layer-wise attention pooling: the last-layer
state asks (a low-rank query) how much of each layer's (normalised) state to take, per VRT. The mix enters
through a zero-initialised output projection, so a new model starts exactly where the default one does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import RMSNorm


class LayerAttentionPooling(nn.Module):
    """[N, L + 1, D] states (the chosen layers' outputs, then the last layer's final-normed state) -> [N, D].

    ``out = h_last + W_o · Σ_l α_l · norm_l(h_l)`` with ``α = softmax_l(q(h_last) · (k(norm_l(h_l)) + e_l) / √r)``;
    the last layer is one of the pooled ``l`` (its norm is the model's own). ``W_o`` starts at zero.

    Args:
        hidden_size: D, the language model's width.
        num_layers: L, how many earlier layers are pooled with the last one.
        rank: r, width of the attention's queries and keys.
        eps: epsilon of the per-layer RMS norms (intermediate layers carry the residual stream's growing scale).
    """

    def __init__(self, hidden_size: int, num_layers: int, rank: int = 64, eps: float = 1e-6) -> None:
        super().__init__()
        self.norms = nn.ModuleList(RMSNorm(hidden_size, eps=eps) for _ in range(num_layers))
        self.query = nn.Linear(hidden_size, rank, bias=False)
        self.key = nn.Linear(hidden_size, rank, bias=False)
        self.layer_embedding = nn.Parameter(torch.zeros(num_layers + 1, rank))
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for child in self.children():
            self.init_child(child)
        nn.init.normal_(self.layer_embedding, std=0.02)

    def init_child(self, child: nn.Module) -> None:
        """Initialise one child module: norms at gain 1, query/key N(0, 0.02), the output projection at zero."""
        if isinstance(child, RMSNorm):
            nn.init.ones_(child.weight)
        elif child is self.out:
            nn.init.zeros_(child.weight)
        elif isinstance(child, nn.Linear):
            nn.init.normal_(child.weight, std=0.02)

    def forward(self, layer_states: torch.Tensor) -> torch.Tensor:
        if layer_states.shape[-2] != len(self.norms) + 1:
            raise ValueError(
                f"layer pooling expects {len(self.norms) + 1} states per VRT (the chosen layers, then the last), "
                f"got {layer_states.shape[-2]}"
            )
        last = layer_states[..., -1, :]
        normed = torch.stack([norm(layer_states[..., i, :]) for i, norm in enumerate(self.norms)] + [last], dim=-2)
        keys = self.key(normed) + self.layer_embedding.to(normed.dtype)  # [N, L + 1, r]
        query = self.query(last)  # [N, r]
        weights = torch.softmax((keys @ query[..., None]).squeeze(-1) / math.sqrt(query.shape[-1]), dim=-1)
        pooled = (weights[..., None] * normed).sum(dim=-2)
        return last + self.out(pooled)
