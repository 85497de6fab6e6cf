"""Visual prototypes (the Dynamic Embedding Module) and the per-batch vision context they live in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from padt.decoders import DecoderMemory
from padt.vision.codec import VRTCodec


class VisualPrototypes(nn.Module):
    """Turns merged patch features into VRT prototypes: ``P = n + up(down(n))`` with ``n = LayerNorm(x)``.

    By default the LayerNorm's weight and bias start at zero, so every prototype is 0 at initialisation and VRTs
    start neutral, as in the reference; ``norm_init`` starts the weight elsewhere (``PaDTConfig.vrt_norm_init``).
    ``down``/``up`` are a bias-free rank-``rank`` pair. With
    ``use_projection=False`` the prototypes are the raw merged features (the paper's "without f_vp").
    A position code, when given (ours; see ``PaDTConfig.prototype_position_encoding``), is added to the merged
    features before the LayerNorm, so it does not change their start.
    """

    def __init__(
        self, hidden_size: int, rank: int, eps: float = 1e-6, use_projection: bool = True, norm_init: float = 0.0
    ) -> None:
        super().__init__()
        self.use_projection = use_projection
        self.norm_init = norm_init
        if use_projection:
            self.norm = nn.LayerNorm(hidden_size, eps=eps)
            self.down = nn.Linear(hidden_size, rank, bias=False)
            self.up = nn.Linear(rank, hidden_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Explicit, so that the zero start never depends on which keys a checkpoint happens to lack.
        for child in self.children():
            self.init_child(child)

    def init_child(self, child: nn.Module) -> None:
        """Initialise one child module (norm: weight ``norm_init``, bias 0; down/up: N(0, 0.02)).

        Per child because transformers' loader initialises missing weights module by module and skips modules
        without parameters of their own (this one) for models defined outside transformers.
        """
        if child is self._modules.get("norm"):
            nn.init.constant_(child.weight, self.norm_init)
            nn.init.zeros_(child.bias)
        elif child is self._modules.get("down") or child is self._modules.get("up"):
            nn.init.normal_(child.weight, std=0.02)

    def forward(self, merged_features: torch.Tensor, position_code: torch.Tensor | None = None) -> torch.Tensor:
        """[N', D] merged patch features (plus an optional [N', D] position code) -> [N', D] prototypes."""
        if not self.use_projection:
            return merged_features
        if position_code is not None:
            merged_features = merged_features + position_code.to(merged_features.dtype)
        normed = self.norm(merged_features)
        return normed + self.up(self.down(normed))


class StateRecorder:
    """Collects the last-layer state of every generation step while :meth:`VisionContext.recording` is open.

    Step ``s`` holds the state that predicted generated token ``s``: the decoder's input for a VRT there.
    """

    def __init__(self, num_samples: int, step_shape: tuple[int, ...], like: torch.Tensor) -> None:
        self._steps: list[torch.Tensor] = []
        self._empty = like.new_zeros(num_samples, 0, *step_shape)

    def record(self, last_states: torch.Tensor) -> None:
        """Add one step: [B, D] states of the last position ([B, L + 1, D] layer states with layer pooling)."""
        self._steps.append(last_states)

    def states(self) -> torch.Tensor:
        """[B, steps, D] or, with layer pooling, [B, steps, L + 1, D] (steps may be 0)."""
        return torch.stack(self._steps, dim=1) if self._steps else self._empty


@dataclass
class VisionContext:
    """Everything a batch's images contribute, computed once per batch and reused at every decoding step.

    Attributes:
        codec: the batch's VRT id space.
        image_embeds: [P, D] merged features (raster order) that fill the ``<|image_pad|>`` positions.
        prototypes: [P, D] VRT prototypes: input embeddings of VRT ids and rows of the VRT classifier.
        vrt_mask: bool [B, P], True where sample ``b`` may name VRT ``p``.
        memory: the decoder's view of the images (prototypes, pre-merger features, rotary PE, positions).
        grid_thw: [I, 3] the processor's ViT grids.
        recorder: where the model's forward puts each step's last-layer states, while :meth:`recording` is open.
        state_layers: L + 1 when the model's decoder pools layer states (``PaDTConfig.vrt_state_layers``): each
            recorded step then holds that many states per sample. 0 without layer pooling.
        deepstack: Qwen3-VL's DeepStack features, one [P, D] tensor per vision layer it feeds into the language
            model (rows as ``image_embeds``); empty for backbones without DeepStack.
    """

    codec: VRTCodec
    image_embeds: torch.Tensor
    prototypes: torch.Tensor
    vrt_mask: torch.Tensor
    memory: DecoderMemory
    grid_thw: torch.Tensor
    recorder: StateRecorder | None = field(default=None, repr=False)
    state_layers: int = 0
    deepstack: tuple[torch.Tensor, ...] = ()

    @contextmanager
    def recording(self) -> Iterator[StateRecorder]:
        """Record the last-layer state of every forward step inside the ``with`` block (generation)::

            with vision.recording() as recorded:
                model.generate(..., vision=vision)
            states = recorded.states()   # [B, steps, D]
        """
        width = self.prototypes.shape[-1]
        step_shape = (self.state_layers, width) if self.state_layers else (width,)
        self.recorder = StateRecorder(self.codec.num_samples, step_shape, self.prototypes)
        try:
            yield self.recorder
        finally:
            self.recorder = None

    def rows_for_batch(self, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``rows`` (one per image token of this context, [P, ...]) for a batch of ``batch_size`` rows:
        ``generate(num_return_sequences=k)`` repeats every sample k times in a row, and so its images' rows."""
        copies = batch_size // self.codec.num_samples
        if copies > 1 and batch_size == copies * self.codec.num_samples:
            return rows[repeat_sample_rows(self.codec.sample_spans(), copies).to(rows.device)]
        return rows

    @staticmethod
    def stacked(contexts: list[VisionContext]) -> VisionContext:
        """One batch's context whose sample ``b`` holds the images of one-sample context ``contexts[b]``.

        Used to ask questions about encoded images in one batch (the same context may come several times):
        nothing of the vision tower runs again, and each sample names only its own rows, so each question's
        results equal a separate call's.
        """
        if any(c.codec.num_samples != 1 for c in contexts):
            raise ValueError("only one-sample contexts can be stacked")
        codec = VRTCodec(
            contexts[0].codec.vocab_size,
            tuple(hw for c in contexts for hw in c.codec.merged_hw),
            tuple(b for b, c in enumerate(contexts) for _ in c.codec.merged_hw),
            len(contexts),
        )
        mask = codec.logit_mask(contexts[0].vrt_mask.device)
        names = any(bool(c.vrt_mask.any()) for c in contexts)
        memories = [c.memory for c in contexts]

        def cat(name: str) -> torch.Tensor:
            return torch.cat([getattr(c, name) for c in contexts])

        return VisionContext(
            codec=codec,
            image_embeds=cat("image_embeds"),
            prototypes=cat("prototypes"),
            vrt_mask=mask if names else torch.zeros_like(mask),  # text-box models name none
            memory=DecoderMemory(
                low_res=torch.cat([m.low_res for m in memories]),
                low_pe=tuple(torch.cat([m.low_pe[i] for m in memories]) for i in range(2)),
                high_res=torch.cat([m.high_res for m in memories]),
                high_pe=tuple(torch.cat([m.high_pe[i] for m in memories]) for i in range(2)),
                grid_hw=torch.cat([m.grid_hw for m in memories]),
                token_rc=torch.cat([m.token_rc for m in memories]),
            ),
            grid_thw=cat("grid_thw"),
            state_layers=contexts[0].state_layers,
            deepstack=tuple(torch.cat(layer) for layer in zip(*(c.deepstack for c in contexts))),
        )


def repeat_sample_rows(spans: list[tuple[int, int]], copies: int) -> torch.Tensor:
    """Row index repeating each sample's rows ``[start, end)`` ``copies`` times in a row, sample after sample."""
    rows = [torch.arange(start, end) for start, end in spans for _ in range(copies)]
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
