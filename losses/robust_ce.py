"""Robust per-token cross-entropy over text and visual reference tokens (VRTs): PaDT's token (``sft``) loss.

Vocabulary layout (one batch): ids ``0 .. V-1`` are text tokens, scored by the LM-head rows
``text_weight``; ids ``V .. V+P-1`` are *batch-global* VRTs, id ``V + p`` naming global patch ``p``
(the images' merged-patch counts laid end to end in batch order), scored by the prototype rows
``prototypes[p]``.

For a position whose target is a VRT of some object, the logits of that object's *other*
ground-truth patches are set to ``-inf``: the target competes only with text and with the patches of
its image that are not part of the object, so picking any 5 of an object's patches as the answer
never penalises the model for liking the rest. Every position may only name the VRTs of its own
sample's image(s) (``vrt_allowed``); the rest are ``-inf``.

Logits are only ever built for the N supervised positions (``labels != ignore_index``), chunk by
chunk, each chunk under activation checkpointing, so no ``[B, T, V+P]`` tensor exists and the
float32 ``[chunk, V+P]`` logits are not kept alive between forward and backward (they are recomputed
in backward, one chunk at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "AnswerLogits",
    "TokenCEOutput",
    "answer_logits",
    "object_exclusion_pairs",
    "robust_token_cross_entropy",
]


class TokenCEOutput(NamedTuple):
    """Result of :func:`robust_token_cross_entropy`.

    Attributes:
        loss: scalar float32 (float64 for float64 inputs): mean, over the samples that have at least
            one supervised token, of their mean NLL.
        per_sample: ``[B]`` float32, mean NLL of each sample's supervised tokens (0 for a sample
            with none).
        num_tokens: ``[B]`` long, supervised tokens per sample.
        num_correct: ``[B]`` long, supervised tokens whose masked-logit argmax equals the target.
    """

    loss: Tensor
    per_sample: Tensor
    num_tokens: Tensor
    num_correct: Tensor


class AnswerLogits(NamedTuple):
    """Masked logits of the supervised positions, from :func:`answer_logits` (for inspection and metrics).

    Attributes:
        logits: ``[N, V+P]`` float32 (float64 for float64 inputs), ``-inf`` where the row may not
            name a token.
        batch_index: ``[N]`` long, sample of each row.
        position: ``[N]`` long, sequence position of each row.
        target: ``[N]`` long, target id of each row.
    """

    logits: Tensor
    batch_index: Tensor
    position: Tensor
    target: Tensor


def object_exclusion_pairs(
    batch_index: int, positions: Sequence[int] | Tensor, gt_patches: Sequence[int] | Tensor
) -> Tensor:
    """Exclusion triples for one object: every answer position of the object x every GT patch of the object.

    Args:
        batch_index: the sample the object belongs to.
        positions: the positions ``t`` (same axis as ``labels``) whose target is one of this
            object's VRTs.
        gt_patches: *global* patch indices (image offset in the batch + raster index on the merged
            grid) of all the object's ground-truth patches, the picked targets included: the target
            of each row is kept anyway.

    Returns:
        ``[len(positions) * len(gt_patches), 3]`` long rows ``(batch_index, position,
        global_patch)``, the ``vrt_exclude`` format of :func:`robust_token_cross_entropy`.
        Concatenate the results of several objects.
    """
    pos = torch.as_tensor(positions, dtype=torch.long).flatten()
    patches = torch.as_tensor(gt_patches, dtype=torch.long, device=pos.device).flatten()
    grid_pos, grid_patch = torch.meshgrid(pos, patches, indexing="ij")
    return torch.stack(
        (
            torch.full_like(grid_pos, batch_index).flatten(),
            grid_pos.flatten(),
            grid_patch.flatten(),
        ),
        dim=1,
    )


def _supervised(labels: Tensor, ignore_index: int, vocab_total: int) -> tuple[Tensor, Tensor, Tensor]:
    """Rows of the supervised positions in row-major order: ``(batch_index [N], position [N], target [N])``."""
    if labels.dim() != 2:
        raise ValueError(f"labels must be [B, T], got shape {tuple(labels.shape)}")
    b_idx, t_idx = (labels != ignore_index).nonzero(as_tuple=True)
    target = labels[b_idx, t_idx]
    if target.numel() and (target.min() < 0 or target.max() >= vocab_total):
        raise ValueError(f"labels hold ids outside [0, V+P) = [0, {vocab_total}) other than ignore_index")
    return b_idx, t_idx, target


def _exclusion_rows(
    vrt_exclude: Tensor | None,
    labels: Tensor,
    b_idx: Tensor,
    t_idx: Tensor,
    target: Tensor,
    V: int,
    P: int,
) -> tuple[Tensor, Tensor]:
    """Map ``(batch, position, patch)`` triples to ``(row, patch)`` over the supervised rows, minus the targets."""
    empty = torch.empty(0, dtype=torch.long, device=labels.device)
    if vrt_exclude is None or vrt_exclude.numel() == 0:
        return empty, empty
    if vrt_exclude.dim() != 2 or vrt_exclude.shape[1] != 3:
        raise ValueError(f"vrt_exclude must be [E, 3] (batch, position, patch), got {tuple(vrt_exclude.shape)}")
    ex = vrt_exclude.to(device=labels.device, dtype=torch.long)
    B, T = labels.shape
    if (ex < 0).any() or (ex[:, 0] >= B).any() or (ex[:, 1] >= T).any() or (ex[:, 2] >= P).any():
        raise ValueError(f"vrt_exclude holds indices outside batch {B}, positions {T} or patches {P}")
    # A [B, T] lookup from position to supervised row keeps this O(B*T + E) instead of a search per triple.
    row_of = torch.full((B, T), -1, dtype=torch.long, device=labels.device)
    row_of[b_idx, t_idx] = torch.arange(b_idx.numel(), device=labels.device)
    rows = row_of[ex[:, 0], ex[:, 1]]
    if (rows < 0).any():
        raise ValueError("vrt_exclude names a (batch, position) whose label is ignore_index")
    patches = ex[:, 2]
    keep = patches + V != target[rows]  # the row's own target always stays
    return rows[keep], patches[keep]


def _blocked_vrt(
    b_idx: Tensor,
    vrt_allowed: Tensor | None,
    P: int,
    ex_rows: Tensor,
    ex_patches: Tensor,
    start: int,
) -> Tensor:
    """``[n, P]`` bool, True where a VRT logit of supervised rows ``start .. start+n-1`` must be ``-inf``."""
    n = b_idx.numel()
    if vrt_allowed is None:
        blocked = torch.zeros(n, P, dtype=torch.bool, device=b_idx.device)
    else:
        blocked = ~vrt_allowed[b_idx]
    in_chunk = (ex_rows >= start) & (ex_rows < start + n)
    blocked[ex_rows[in_chunk] - start, ex_patches[in_chunk]] = True
    return blocked


def _masked_logits(h: Tensor, text_weight: Tensor, prototypes: Tensor, blocked: Tensor) -> Tensor:
    """``[n, V+P]`` logits: products in the hidden dtype (as the model's head would), then at least float32 so the
    softmax over ~150k entries is not done in bf16."""
    text = F.linear(h, text_weight.to(h.dtype))
    vrt = F.linear(h, prototypes.to(h.dtype)).masked_fill(blocked, float("-inf"))
    return torch.cat((text, vrt), dim=1).to(torch.promote_types(h.dtype, torch.float32))


def _chunk_nll(
    h: Tensor, text_weight: Tensor, prototypes: Tensor, target: Tensor, blocked: Tensor
) -> tuple[Tensor, Tensor]:
    logits = _masked_logits(h, text_weight, prototypes, blocked)
    # Every row keeps all V text logits finite, so logsumexp never sees an all -inf row (no NaN gradients).
    nll = logits.logsumexp(dim=1) - logits.gather(1, target[:, None]).squeeze(1)
    return nll, logits.detach().argmax(dim=1) == target


def _check_inputs(
    hidden: Tensor,
    labels: Tensor,
    text_weight: Tensor,
    prototypes: Tensor,
    vrt_allowed: Tensor | None,
) -> None:
    if hidden.dim() != 3 or hidden.shape[:2] != labels.shape:
        raise ValueError(f"hidden [B, T, D] must match labels [B, T]: {tuple(hidden.shape)} vs {tuple(labels.shape)}")
    D = hidden.shape[-1]
    if text_weight.dim() != 2 or text_weight.shape[1] != D or prototypes.dim() != 2 or prototypes.shape[1] != D:
        raise ValueError(
            f"text_weight [V, {D}] and prototypes [P, {D}] expected, got {tuple(text_weight.shape)} "
            f"and {tuple(prototypes.shape)}"
        )
    if vrt_allowed is not None and (
        vrt_allowed.dtype != torch.bool or tuple(vrt_allowed.shape) != (labels.shape[0], prototypes.shape[0])
    ):
        raise ValueError(f"vrt_allowed must be bool [B, P], got {vrt_allowed.dtype} {tuple(vrt_allowed.shape)}")


def answer_logits(
    hidden: Tensor,
    labels: Tensor,
    text_weight: Tensor,
    prototypes: Tensor,
    vrt_allowed: Tensor | None = None,
    vrt_exclude: Tensor | None = None,
    *,
    ignore_index: int = -100,
) -> AnswerLogits:
    """The masked ``[N, V+P]`` logits the robust CE scores, in one piece (no chunking, no checkpointing).

    Same arguments as :func:`robust_token_cross_entropy`. Meant for tests, debugging and small
    evaluation batches; training should call :func:`robust_token_cross_entropy`, which never holds
    all N rows at once.
    """
    _check_inputs(hidden, labels, text_weight, prototypes, vrt_allowed)
    V, P = text_weight.shape[0], prototypes.shape[0]
    b_idx, t_idx, target = _supervised(labels, ignore_index, V + P)
    ex_rows, ex_patches = _exclusion_rows(vrt_exclude, labels, b_idx, t_idx, target, V, P)
    blocked = _blocked_vrt(b_idx, vrt_allowed, P, ex_rows, ex_patches, 0)
    logits = _masked_logits(hidden[b_idx, t_idx], text_weight, prototypes, blocked)
    return AnswerLogits(logits, b_idx, t_idx, target)


def robust_token_cross_entropy(
    hidden: Tensor,
    labels: Tensor,
    text_weight: Tensor,
    prototypes: Tensor,
    vrt_allowed: Tensor | None = None,
    vrt_exclude: Tensor | None = None,
    *,
    ignore_index: int = -100,
    chunk_size: int = 512,
    use_checkpoint: bool = True,
) -> TokenCEOutput:
    """PaDT's robust per-token cross-entropy, computed only at supervised positions.

    Args:
        hidden: ``[B, T, D]`` last-layer hidden states after the final norm, any float dtype.
        labels: ``[B, T]`` long, already shifted: ``labels[b, t]`` is the id that position ``t``
            predicts (the token at ``t + 1``), ``ignore_index`` where unsupervised (prompt, image,
            padding). Ids ``< V`` are text, ``V + p`` is the batch-global VRT of patch ``p``.
        text_weight: ``[V, D]`` LM-head weight (the embedding matrix when tied).
        prototypes: ``[P, D]`` VRT classifier rows, P = merged patches of all images in the batch,
            in batch order.
        vrt_allowed: ``[B, P]`` bool, the VRTs sample ``b`` may name (its own image(s)); ``None``
            allows all.
        vrt_exclude: ``[E, 3]`` long rows ``(b, t, p)``: at supervised position ``(b, t)`` the logit
            of global patch ``p`` is ``-inf``. Give, for each VRT target position, all GT patches of
            its object (see :func:`object_exclusion_pairs`); a triple naming the position's own
            target is dropped, so the target is always kept. Sparse because E (positions x patches
            per object) is tiny next to ``N x P``.
        ignore_index: label value of unsupervised positions.
        chunk_size: supervised rows per logits chunk. The loss's peak extra memory is about 4-5 float32
            ``[chunk_size, V+P]`` buffers (logits, their gradient and temporaries, during the chunk's
            backward) plus the weight gradients: ~1.7 GB at 512 rows for the 3B model (V+P ~ 168k).
        use_checkpoint: recompute each chunk's logits in backward instead of keeping them (no effect
            without grad).

    Returns:
        :class:`TokenCEOutput`. ``loss`` = mean over samples that have supervised tokens of
        ``sum(-log p) / num_tokens``. A sample with no supervised token contributes nothing and is
        left out of the mean (the reference divides by ``count + 1e-4`` and averages over every
        sample, which only differs for such samples and by the 1e-4). With no supervised token at
        all the loss is an exact 0 still attached to ``hidden``, so ``backward()`` works.

    Raises:
        ValueError: on shape mismatches, ids outside ``[0, V+P)``, a VRT target its sample may not
            name, or an exclusion triple at an unsupervised position. These are data bugs that would
            otherwise show up as ``inf`` losses or silently wrong masks.
    """
    _check_inputs(hidden, labels, text_weight, prototypes, vrt_allowed)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    B = labels.shape[0]
    V, P = text_weight.shape[0], prototypes.shape[0]
    b_idx, t_idx, target = _supervised(labels, ignore_index, V + P)
    if vrt_allowed is not None:
        _check_vrt_targets(vrt_allowed, b_idx, target, V)
    ex_rows, ex_patches = _exclusion_rows(vrt_exclude, labels, b_idx, t_idx, target, V, P)
    if b_idx.numel() == 0:
        return _no_supervised_tokens(hidden, B, labels.device)
    nll, correct = _chunked_nll(
        hidden, b_idx, t_idx, target, text_weight, prototypes, vrt_allowed, ex_rows, ex_patches, chunk_size,
        use_checkpoint,
    )
    return _per_sample_loss(nll, correct, b_idx, B)


def _check_vrt_targets(vrt_allowed: Tensor, b_idx: Tensor, target: Tensor, V: int) -> None:
    """Raise ``ValueError`` when a VRT target names a patch its sample may not name."""
    is_vrt = target >= V
    if not vrt_allowed[b_idx[is_vrt], target[is_vrt] - V].all():
        raise ValueError("a VRT target is not in its sample's vrt_allowed set (wrong image offset?)")


def _no_supervised_tokens(hidden: Tensor, B: int, device: torch.device) -> TokenCEOutput:
    """The result for a batch without supervised tokens: an exact 0 loss that is still part of the graph."""
    zero = hidden.flatten()[:0].sum().float()  # exactly 0, but part of the graph
    counts = torch.zeros(B, dtype=torch.long, device=device)
    return TokenCEOutput(zero, hidden.new_zeros(B, dtype=torch.float32), counts, counts.clone())


def _chunked_nll(
    hidden: Tensor,
    b_idx: Tensor,
    t_idx: Tensor,
    target: Tensor,
    text_weight: Tensor,
    prototypes: Tensor,
    vrt_allowed: Tensor | None,
    ex_rows: Tensor,
    ex_patches: Tensor,
    chunk_size: int,
    use_checkpoint: bool,
) -> tuple[Tensor, Tensor]:
    """``[N]`` NLL and ``[N]`` bool argmax == target of the supervised rows, ``chunk_size`` rows at a time, each
    chunk under activation checkpointing when a gradient is wanted and ``use_checkpoint`` is set."""
    N, P = b_idx.numel(), prototypes.shape[0]
    h_sup = hidden[b_idx, t_idx]  # [N, D]: the only rows that ever meet the vocabulary
    grad = torch.is_grad_enabled() and (hidden.requires_grad or text_weight.requires_grad or prototypes.requires_grad)
    nll_chunks, correct_chunks = [], []
    for start in range(0, N, chunk_size):
        stop = min(start + chunk_size, N)
        blocked = _blocked_vrt(b_idx[start:stop], vrt_allowed, P, ex_rows, ex_patches, start)
        args = (h_sup[start:stop], text_weight, prototypes, target[start:stop], blocked)
        if grad and use_checkpoint:
            nll, correct = checkpoint(_chunk_nll, *args, use_reentrant=False)
        else:
            nll, correct = _chunk_nll(*args)
        nll_chunks.append(nll)
        correct_chunks.append(correct)
    return torch.cat(nll_chunks), torch.cat(correct_chunks)


def _per_sample_loss(nll: Tensor, correct: Tensor, b_idx: Tensor, B: int) -> TokenCEOutput:
    """Per-sample mean NLL and token counts, and the loss: the mean over the samples that have a supervised token."""
    num_tokens = torch.bincount(b_idx, minlength=B)
    num_correct = torch.bincount(b_idx, weights=correct.float(), minlength=B).long()
    per_sample = nll.new_zeros(B).index_add(0, b_idx, nll) / num_tokens.clamp(min=1)
    loss = per_sample.sum() / (num_tokens > 0).sum()
    return TokenCEOutput(loss, per_sample, num_tokens, num_correct)
