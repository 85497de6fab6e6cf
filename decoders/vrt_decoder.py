"""The PaDT decoder: from the VRT hidden states of each object to its box, score and mask.

Per object, a query group ``[box token, score token, mask token, VRT_1 .. VRT_n]`` runs through two-way blocks
(SAM/DETR style) against its image's memory: first the low-res memory (the image's visual prototypes, one per
merged cell), then the high-res memory (low-res rows broadcast to their m x m patches plus the raw pre-merger
vision features). Heads read the three task tokens; the mask head dots the mask token with s x s sub-pixel
embeddings of every high-res token. All objects of a batch are decoded in one packed pass.

Layout and residual order follow the official decoder (Gorilla-Lab-SCUT/PaDT, ``padt_decoder.py``) so that its
weights load; :mod:`padt.decoders.official_names` maps parameter names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from padt.vision.geometry import normalised_centres

from .attention import Backend, DecoderAttention, PackedSeqs, resolve_backend
from .config import MASK_SPLIT, PaDTDecoderConfig
from .layers import MLP, RMSNorm, RotaryPE, init_weights, sine_position_encoding
from .memory import DecoderMemory, DecoderOutput, image_ranges

# Query tokens that lead every object's group; the heads read them at these offsets.
BOX_TOKEN, SCORE_TOKEN, MASK_TOKEN = 0, 1, 2
NUM_TASK_TOKENS = 3
BOX_COORDS = 4  # (cx, cy, w, h)


def _to(pe: RotaryPE, device: torch.device) -> RotaryPE:
    return RotaryPE(pe.cos.to(device), pe.sin.to(device))


@dataclass
class _QueryContext:
    """What every block needs about the packed queries besides their current values."""

    pos: torch.Tensor  # [Tq, C] initial queries, the additive positional term
    seqs: PackedSeqs  # one sequence per object
    backend: Backend


@dataclass
class _Level:
    """One memory level (low- or high-res) of the decoded objects' images."""

    pe: RotaryPE  # rotary cos/sin of the per-image rows, [sum over images of rows, head_dim]
    seqs: PackedSeqs  # per-object packing: object k has its image's row count
    index: torch.Tensor  # per-image row of each per-object row


class TwoWayBlock(nn.Module):
    """Pre-norm two-way block: query self-attn, query->memory cross-attn, query MLP, memory->query update.

    Positional terms: the initial queries ``query_pos`` are added to the inputs of query-side q/k projections;
    memory-side projections are rotated by the memory's 2-D rotary PE.

    Args:
        config: decoder config (widths, heads, eps).
        update_memory: run the memory->query update (the last block skips it when nothing reads the memory).
    """

    def __init__(self, config: PaDTDecoderConfig, update_memory: bool = True) -> None:
        super().__init__()
        c, eps, heads = config.hidden_size, config.rms_norm_eps, config.num_attention_heads
        self.self_attn_norm = RMSNorm(c, eps)
        self.self_attn = DecoderAttention(c, heads)
        self.cross_attn_query_norm = RMSNorm(c, eps)
        self.cross_attn_memory_norm = RMSNorm(c, eps)
        self.cross_attn = DecoderAttention(c, heads)
        self.mlp_norm = RMSNorm(c, eps)
        self.mlp = MLP([c, config.intermediate_size, c])
        self.update_memory = update_memory
        if update_memory:
            self.memory_update_query_norm = RMSNorm(c, eps)
            self.memory_update_memory_norm = RMSNorm(c, eps)
            self.memory_update = DecoderAttention(c, heads)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        query_seqs: PackedSeqs,
        memory: torch.Tensor,
        memory_pe: RotaryPE,
        memory_seqs: PackedSeqs,
        backend: Backend,
        memory_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update queries [Tq, C] and memory.

        ``memory`` [Tm, C] with ``memory_pe`` rows to match is either per object (packed as ``memory_seqs``) or,
        when ``memory_index`` is given, per image: then every projection of it is computed once per image and
        ``memory_index`` copies the projected rows to each object. The returned memory is per object when the
        block updates it, and unchanged (still per image) otherwise.
        """
        x = self.self_attn_norm(query)
        query = query + self.self_attn(x, x, query_pos, query_pos, query_seqs, query_seqs, backend)

        # Normed memory is dropped right after use: it is as large as the memory itself (K copies of an image).
        x = self.cross_attn_query_norm(query)
        mem = self.cross_attn_memory_norm(memory)
        query = query + self.cross_attn(
            x, mem, query_pos, memory_pe, query_seqs, memory_seqs, backend, kv_index=memory_index
        )
        del mem

        query = query + self.mlp(self.mlp_norm(query))

        if self.update_memory:
            x = self.memory_update_query_norm(query)
            mem = self.memory_update_memory_norm(memory)
            update = self.memory_update(
                mem, x, memory_pe, query_pos, memory_seqs, query_seqs, backend, q_index=memory_index
            )
            del mem
            if memory_index is not None:
                memory = memory.index_select(0, memory_index)
            memory = memory + update
        return query, memory


class InputProjection(nn.Module):
    """LLM width -> decoder width: RMSNorm(D) -> Linear(D, C) -> GELU -> Linear(C, C)."""

    def __init__(self, config: PaDTDecoderConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.llm_hidden_size, config.rms_norm_eps)
        self.mlp = MLP([config.llm_hidden_size, config.hidden_size, config.hidden_size])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x))


class UpscaleStage(nn.Module):
    """One 2x2 sub-pixel split: Linear(d, d) [-> RMSNorm] -> GELU, then d channels -> (2, 2, d/4)."""

    def __init__(self, dim: int, norm: bool, eps: float) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.norm = RMSNorm(dim, eps) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.gelu(x).unflatten(-1, (MASK_SPLIT, MASK_SPLIT, -1))


class MaskUpscaler(nn.Module):
    """High-res token [M, C] -> s x s sub-pixel embeddings [M, s, s, C / s**2], s = 2**stages.

    Stage t splits each channel vector into (row bit r_t, col bit c_t, rest); the sub-pixel row is
    r_1 r_2 ... r_k read as a binary number (first stage most significant), the column likewise. Only the first
    stage has an RMSNorm, as in the official decoder.
    """

    def __init__(self, config: PaDTDecoderConfig) -> None:
        super().__init__()
        area = MASK_SPLIT**2
        dims = [config.hidden_size // area**t for t in range(config.mask_upscale_stages)]
        self.stages = nn.ModuleList(UpscaleStage(d, norm=(t == 0), eps=config.rms_norm_eps) for t, d in enumerate(dims))
        self.subpixels = config.mask_subpixels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        # x: [M, r1, c1, r2, c2, ..., rk, ck, E] -> [M, r1..rk, c1..ck, E] -> [M, s, s, E]
        k = len(self.stages)
        perm = [0, *range(1, 2 * k, 2), *range(2, 2 * k + 1, 2), 2 * k + 1]
        x = x.permute(perm)
        return x.reshape(x.shape[0], self.subpixels, self.subpixels, x.shape[-1])


class PaDTDecoder(nn.Module):
    """Decode boxes, scores and masks of K objects from their VRT hidden states and their images' memory.

    Args:
        config: a :class:`PaDTDecoderConfig`.
    """

    def __init__(self, config: PaDTDecoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config.hidden_size
        self.task_tokens = nn.Embedding(NUM_TASK_TOKENS, c)  # box, score, mask query tokens
        self.vrt_embedding = nn.Embedding(1, c)  # marks VRT queries apart from the task tokens
        self.input_projection = InputProjection(config)
        n_blocks = config.num_low_res_blocks + config.num_high_res_blocks
        # Only the mask head reads the memory after the last block, so without it that update is dead weight.
        self.low_res_blocks = nn.ModuleList(
            TwoWayBlock(config, update_memory=config.mask_head or i + 1 < n_blocks)
            for i in range(config.num_low_res_blocks)
        )
        self.uses_high_res = config.num_high_res_blocks > 0 or config.mask_head
        if self.uses_high_res:
            self.high_res_norm = RMSNorm(c, config.rms_norm_eps)
        self.high_res_blocks = nn.ModuleList(
            TwoWayBlock(config, update_memory=config.mask_head or i + 1 < config.num_high_res_blocks)
            for i in range(config.num_high_res_blocks)
        )
        self.box_head = MLP([c, c, c, BOX_COORDS])
        self.score_head = nn.Linear(c, 1)
        if config.mask_head:
            self.mask_token_mlp = MLP([c, c, c, config.mask_embedding_dim])
            self.mask_upscaler = MaskUpscaler(config)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (Linear/Embedding N(0, 0.02), zero biases, RMSNorm gains 1)."""
        std = self.config.initializer_range
        self.apply(lambda module: init_weights(module, std))

    def forward(
        self,
        vrt_states: torch.Tensor,
        vrt_counts: torch.Tensor,
        object_image: torch.Tensor,
        memory: DecoderMemory,
        vrt_rows: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Decode K objects in one packed pass.

        Args:
            vrt_states: [sum n_k, D] VRT hidden states of all objects, object after object.
            vrt_counts: LongTensor [K], n_k >= 1 VRTs per object.
            object_image: LongTensor [K], index into ``memory``'s images of each object's image.
            memory: the I images' vision features (see :class:`DecoderMemory`).
            vrt_rows: LongTensor [sum n_k], the row of ``memory.low_res`` (images packed one after another,
                merged cells in raster order) of the patch each VRT names. Required when
                ``config.vrt_patch_features`` is on, ignored otherwise.

        Returns:
            :class:`DecoderOutput` with boxes [K, 4] (cx, cy, w, h in [0, 1] of the processed image),
            score_logits [K], mask_logits [K, max H*s, max W*s] or None, mask_hw [K, 2].
        """
        cfg = self.config
        self._check_inputs(vrt_states, vrt_counts, object_image, memory, vrt_rows)
        device, dtype = vrt_states.device, self.task_tokens.weight.dtype
        object_image = object_image.to(device=device, dtype=torch.long)
        vrt_counts = vrt_counts.to(device=device, dtype=torch.long)
        grid_hw = memory.grid_hw.to(device=device, dtype=torch.long)
        mask_hw = grid_hw[object_image] * cfg.mask_subpixels
        num_obj = object_image.numel()
        if num_obj == 0:
            return self._empty_output(grid_hw, mask_hw)

        high_counts = grid_hw[:, 0] * grid_hw[:, 1]
        low, mem, high_yx = self._low_res_memory(memory, grid_hw, high_counts, object_image, dtype)
        query, query_seqs, token_pos = self._pack_queries(vrt_states, vrt_counts, mem, vrt_rows, dtype)
        query_pos = query  # the initial queries stay the positional term of every block
        ctx = _QueryContext(query_pos, query_seqs, resolve_backend(cfg.attn_implementation, query))
        query, mem, per_image = self._run_blocks(self.low_res_blocks, query, mem, True, low, ctx)

        high_index, high_lengths = image_ranges(high_counts, object_image)
        high = _Level(_to(memory.high_pe, device), PackedSeqs.from_lengths(high_lengths), high_index)
        if self.uses_high_res:
            mem = self._high_res_memory(mem, memory, high_yx, high_index, per_image, dtype)
            query, mem, per_image = self._run_blocks(self.high_res_blocks, query, mem, per_image, high, ctx)
        return self._heads(query, token_pos, mem, per_image, high, memory.token_rc, grid_hw, mask_hw)

    def _low_res_memory(
        self,
        memory: DecoderMemory,
        grid_hw: torch.Tensor,
        high_counts: torch.Tensor,
        object_image: torch.Tensor,
        dtype: torch.dtype,
    ) -> tuple[_Level, torch.Tensor, torch.Tensor | None]:
        """The low-res level, its memory [sum over images of merged cells, C] and the patch centres (or None).

        The memory is projected once per image; the first memory update copies it per object. The (y, x) patch
        centres [ΣN, 2] are returned for the high-res position encoding when ``memory_position_encoding`` is on.
        """
        cfg, device = self.config, grid_hw.device
        low_index, low_lengths = image_ranges(high_counts // cfg.spatial_merge_size**2, object_image)
        low = _Level(_to(memory.low_pe, device), PackedSeqs.from_lengths(low_lengths), low_index)
        mem = self.input_projection(memory.low_res.to(device=device, dtype=dtype))
        high_yx = None
        if cfg.memory_position_encoding:
            high_yx = normalised_centres(memory.token_rc.to(device), grid_hw.repeat_interleave(high_counts, dim=0))
            low_yx = high_yx.view(-1, cfg.spatial_merge_size**2, 2).mean(dim=1)  # centre of each merge block
            mem = mem + sine_position_encoding(low_yx, cfg.hidden_size).to(dtype)
        return low, mem, high_yx

    def _pack_queries(
        self,
        vrt_states: torch.Tensor,
        vrt_counts: torch.Tensor,
        low_mem: torch.Tensor,
        vrt_rows: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, PackedSeqs, torch.Tensor]:
        """Queries [box, score, mask, VRT_1..VRT_n] per object, packed: (queries [Tq, C], packing, task-token rows).

        The task-token rows are object after object, ``NUM_TASK_TOKENS`` each.
        """
        cfg, device = self.config, vrt_counts.device
        num_obj = vrt_counts.numel()
        query_seqs = PackedSeqs.from_lengths(vrt_counts + NUM_TASK_TOKENS)
        starts = query_seqs.cu_seqlens[:-1].long()
        token_pos = (starts[:, None] + torch.arange(NUM_TASK_TOKENS, device=device)).flatten()
        vrt_obj = torch.repeat_interleave(torch.arange(num_obj, device=device), vrt_counts)
        vrt_rank = torch.arange(vrt_obj.numel(), device=device) - F.pad(vrt_counts.cumsum(0), (1, 0))[vrt_obj]
        vrt_pos = starts[vrt_obj] + NUM_TASK_TOKENS + vrt_rank
        vrt_queries = self.input_projection(vrt_states.to(dtype)) + self.vrt_embedding.weight
        if cfg.vrt_patch_features:
            vrt_queries = vrt_queries + low_mem.index_select(0, vrt_rows.to(device=device, dtype=torch.long))
        task_queries = self.task_tokens.weight.expand(num_obj, -1, -1).flatten(0, 1)
        query = vrt_queries.new_zeros(int(query_seqs.cu_seqlens[-1]), cfg.hidden_size)
        query = query.index_copy(0, vrt_pos, vrt_queries).index_copy(0, token_pos, task_queries)
        return query, query_seqs, token_pos

    def _high_res_memory(
        self,
        low_mem: torch.Tensor,
        memory: DecoderMemory,
        high_yx: torch.Tensor | None,
        high_index: torch.Tensor,
        per_image: bool,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """High-res memory: each low-res row broadcast to its m*m patches + the raw pre-merger features, normed.

        Per image while ``per_image`` holds (``low_mem`` is still one copy per image), else per object.
        """
        cfg = self.config
        high_raw = memory.high_res.to(device=high_index.device, dtype=dtype)
        if not per_image:
            high_raw = high_raw.index_select(0, high_index)
        mem = self.high_res_norm(low_mem.repeat_interleave(cfg.spatial_merge_size**2, dim=0) + high_raw)
        if cfg.memory_position_encoding:
            encoding = sine_position_encoding(high_yx, cfg.hidden_size).to(dtype)
            mem = mem + (encoding if per_image else encoding.index_select(0, high_index))
        return mem

    def _heads(
        self,
        query: torch.Tensor,
        token_pos: torch.Tensor,
        mem: torch.Tensor,
        per_image: bool,
        high: _Level,
        token_rc: torch.Tensor,
        grid_hw: torch.Tensor,
        mask_hw: torch.Tensor,
    ) -> DecoderOutput:
        """Box, score and (with the mask head) mask outputs from the task tokens of the decoded queries."""
        cfg = self.config
        tokens = query.index_select(0, token_pos).view(-1, NUM_TASK_TOKENS, cfg.hidden_size)
        boxes = self.box_head(tokens[:, BOX_TOKEN]).sigmoid()
        score_logits = self.score_head(tokens[:, SCORE_TOKEN]).squeeze(-1)
        mask_logits = None
        if cfg.mask_head:
            if per_image:  # no block updated the memory, so it is still one copy per image
                mem = mem.index_select(0, high.index)
            token_rc = token_rc.to(grid_hw.device).index_select(0, high.index)
            mask_logits = self._mask_logits(tokens[:, MASK_TOKEN], mem, high.seqs, token_rc, grid_hw)
        return DecoderOutput(boxes=boxes, score_logits=score_logits, mask_logits=mask_logits, mask_hw=mask_hw)

    @staticmethod
    def _run_blocks(
        blocks: nn.ModuleList,
        query: torch.Tensor,
        mem: torch.Tensor,
        per_image: bool,
        level: _Level,
        ctx: _QueryContext,
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Run ``blocks`` over one memory level; returns (query, memory, memory still per image).

        ``mem`` is per image while ``per_image`` holds (``level.index`` copies its projected rows to the objects)
        and becomes per object at the first memory update, which differs by object.
        """
        obj_pe = None if per_image else level.pe.gather(level.index)
        for block in blocks:
            pe, index = (level.pe, level.index) if per_image else (obj_pe, None)
            query, mem = block(query, ctx.pos, ctx.seqs, mem, pe, level.seqs, ctx.backend, memory_index=index)
            if per_image and block.update_memory:
                per_image, obj_pe = False, level.pe.gather(level.index)
        return query, mem, per_image

    def _mask_logits(
        self,
        mask_tokens: torch.Tensor,
        high_mem: torch.Tensor,
        high_seqs: PackedSeqs,
        token_rc: torch.Tensor,
        grid_hw: torch.Tensor,
    ) -> torch.Tensor:
        """[K, C] mask tokens x per-object high-res memory [M, C] -> [K, max H*s, max W*s] logits.

        Each high-res row's s x s sub-mask is written at its ``token_rc`` cell by one scatter, which handles
        any token order and ragged image sizes without a per-token loop.
        """
        s = self.config.mask_subpixels
        num_obj = mask_tokens.shape[0]
        mask_embed = self.mask_token_mlp(mask_tokens)  # [K, E]
        sub = self.mask_upscaler(high_mem)  # [M, s, s, E]
        obj_of_row = torch.repeat_interleave(torch.arange(num_obj, device=sub.device), high_seqs.lengths)
        # Batched mat-vec instead of broadcast-multiply-sum: no extra [M, s, s, E] temporary.
        logits = torch.bmm(sub.flatten(1, 2), mask_embed[obj_of_row].unsqueeze(-1)).view(-1, s, s)
        h_max, w_max = (int(v) for v in grid_hw.max(dim=0).values.tolist())
        flat = (obj_of_row * h_max + token_rc[:, 0]) * w_max + token_rc[:, 1]
        canvas = logits.new_zeros(num_obj * h_max * w_max, s, s).index_copy(0, flat, logits)
        # [K, H, W, s_row, s_col] -> [K, H, s_row, W, s_col] -> [K, H*s, W*s]
        canvas = canvas.view(num_obj, h_max, w_max, s, s).permute(0, 1, 3, 2, 4)
        return canvas.reshape(num_obj, h_max * s, w_max * s)

    def _empty_output(self, grid_hw: torch.Tensor, mask_hw: torch.Tensor) -> DecoderOutput:
        """K = 0: empty outputs of the right shapes, still attached to the graph so ``loss.backward()`` works."""
        s = self.config.mask_subpixels
        tokens = self.task_tokens.weight[:0]  # [0, C], part of the graph
        boxes = self.box_head(tokens).sigmoid()
        score_logits = self.score_head(tokens).squeeze(-1)
        mask_logits = None
        if self.config.mask_head:
            h_max, w_max = (int(v) for v in grid_hw.max(dim=0).values.tolist()) if grid_hw.numel() else (0, 0)
            mask_logits = self.mask_token_mlp(tokens).new_zeros(0, h_max * s, w_max * s)
        return DecoderOutput(boxes=boxes, score_logits=score_logits, mask_logits=mask_logits, mask_hw=mask_hw)

    def _check_inputs(
        self,
        vrt_states: torch.Tensor,
        vrt_counts: torch.Tensor,
        object_image: torch.Tensor,
        memory: DecoderMemory,
        vrt_rows: torch.Tensor | None,
    ) -> None:
        cfg = self.config
        if vrt_states.ndim != 2 or vrt_states.shape[1] != cfg.llm_hidden_size:
            raise ValueError(f"vrt_states must be [sum n, {cfg.llm_hidden_size}], got {tuple(vrt_states.shape)}")
        if vrt_counts.ndim != 1 or object_image.shape != vrt_counts.shape:
            raise ValueError(
                f"vrt_counts and object_image must both be [K]; got {tuple(vrt_counts.shape)} and "
                f"{tuple(object_image.shape)}"
            )
        memory.validate(cfg.spatial_merge_size, cfg.head_dim, cfg.hidden_size, cfg.llm_hidden_size)
        if cfg.vrt_patch_features:
            if vrt_rows is None:
                raise ValueError("this decoder has vrt_patch_features on: pass vrt_rows (the patch row of each VRT)")
            if vrt_rows.shape != (vrt_states.shape[0],):
                raise ValueError(
                    f"vrt_rows must be [{vrt_states.shape[0]}] (one row per VRT state), "
                    f"got {tuple(vrt_rows.shape)}"
                )
            rows = memory.low_res.shape[0]
            if vrt_rows.numel() and not 0 <= int(vrt_rows.min()) <= int(vrt_rows.max()) < rows:
                raise ValueError(f"vrt_rows must index the {rows} rows of memory.low_res")
        if vrt_counts.numel() == 0:
            if vrt_states.shape[0] != 0:
                raise ValueError(f"no objects but {vrt_states.shape[0]} VRT states")
            return
        # One host sync for all checks.
        stats = torch.stack([vrt_counts.min(), vrt_counts.sum(), object_image.min(), object_image.max()])
        min_count, total, min_image, max_image = stats.tolist()
        if min_count < 1:
            raise ValueError("every object needs at least one VRT (vrt_counts >= 1)")
        if total != vrt_states.shape[0]:
            raise ValueError(f"vrt_counts sum to {total} but vrt_states has {vrt_states.shape[0]} rows")
        if min_image < 0 or max_image >= memory.num_images:
            raise ValueError(f"object_image must index the {memory.num_images} images of the memory")
