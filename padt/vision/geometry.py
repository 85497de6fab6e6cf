"""The image geometry: every frame an image passes through on its way to the model, and every conversion between
them. Nothing else in padt computes a grid.

Frames, from the user's image to the vision tower's tokens:

* **original pixels** ``(H, W)``: the image the user gives; every box, mask and patch padt returns is in this frame.
* **resized pixels** ``(H_r, W_r)``: the processor stretches the whole image (no padding, no crop): first, when
  ``longest_side`` is set, so that its longest side is that many pixels (up or down, as the official PaDT demo
  does before its processor); then an image with a side shorter than one cell is upscaled to one cell; then both
  sides become multiples of one *cell* (``patch_size * merge_size`` px) with the pixel count within the budget
  (Qwen's ``smart_resize``). Because every step stretches, a box normalised to the resized image is the same box
  normalised to the original image.
* **patch grid** ``(H_p, W_p) = (H_r, W_r) / patch_size``: one vision-tower token per patch (``grid_thw[1:]``).
* **merged grid** ``(H', W') = (H_p, W_p) / merge_size``: one LLM image token, and so one visual reference token
  (VRT), per cell, numbered in raster order ``k = row * W' + col``.
* **normalised** ``[0, 1]``: relative to the image's height and width, in any of the frames above.

The backbone's numbers live in :class:`GridSpec` (Qwen2.5-VL's by default: 14-px patches merged 2 x 2, so
28-px cells; Qwen3-VL's are 16-px patches merged 2 x 2, so 32-px cells, :mod:`padt.backbones`). A backbone with
other cells changes those numbers, not the code that uses them.

This module imports no torch at load time, so that the command line's parser can read the defaults quickly; the
few functions that return tensors import it when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Qwen2.5-VL's vision tower: ViT patch side in pixels, and the side of the square of patches merged into one cell.
QWEN2_5_VL_PATCH_SIZE = 14
QWEN2_5_VL_MERGE_SIZE = 2
_QWEN2_5_VL_CELL = QWEN2_5_VL_PATCH_SIZE * QWEN2_5_VL_MERGE_SIZE
#: Qwen3-VL's vision tower: 16-px patches merged 2 x 2, so 32-px cells.
QWEN3_VL_PATCH_SIZE = 16
QWEN3_VL_MERGE_SIZE = 2
#: Qwen2.5-VL's own pixel budget (also the official PaDT default): 4 cells at least, 16,384 cells at most.
DEFAULT_MIN_PIXELS = 4 * _QWEN2_5_VL_CELL**2
DEFAULT_MAX_PIXELS = 16384 * _QWEN2_5_VL_CELL**2
#: Qwen's limit on the aspect ratio of an image.
MAX_ASPECT_RATIO = 200


def raster_rc(index: int, grid_hw: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of raster index ``index = row * W + col`` on a grid of ``grid_hw = (H, W)``."""
    height, width = grid_hw
    if not 0 <= index < height * width:
        raise ValueError(f"index {index} is outside the {height}x{width} grid")
    return divmod(index, width)


@dataclass(frozen=True)
class PatchGrid:
    """The vision tower's view of one image: its patch grid and how patches merge into cells.

    Attributes:
        patch_hw: (H_p, W_p), the ViT patch grid; both multiples of ``merge_size``.
        merge_size: m, the side of the square of patches merged into one cell (one VRT).
    """

    patch_hw: tuple[int, int]
    merge_size: int

    @classmethod
    def from_grid_thw(cls, grid_thw: Any, merge_size: int) -> PatchGrid:
        """From one row ``(t, H_p, W_p)`` of the processor's ``image_grid_thw``; videos (t > 1) are refused."""
        t, h, w = (int(v) for v in grid_thw)
        if t != 1:
            raise ValueError("VRTs are defined for still images (grid t = 1); videos are not supported")
        return cls((h, w), merge_size)

    @property
    def merged_hw(self) -> tuple[int, int]:
        """(H', W'), the merged grid: one VRT per cell."""
        return self.patch_hw[0] // self.merge_size, self.patch_hw[1] // self.merge_size

    @property
    def num_patches(self) -> int:
        return self.patch_hw[0] * self.patch_hw[1]

    @property
    def num_cells(self) -> int:
        """Cells of the merged grid, which is the number of VRTs the image contributes."""
        rows, cols = self.merged_hw
        return rows * cols

    def cell_rc(self, cell: int) -> tuple[int, int]:
        """(row, col) on the merged grid of raster cell index ``cell``."""
        return raster_rc(cell, self.merged_hw)

    def merge_block_positions(self) -> torch.Tensor:
        """(row, col) on the patch grid of each patch in the processor's merge-block order: LongTensor [H_p*W_p, 2].

        Merge-block order lists the cells in raster order and, inside each, its ``m x m`` patches in raster order:
        patch ``(i, j)`` of cell ``(r, c)`` sits at row ``r*m + i``, col ``c*m + j``.
        """
        import torch

        m = self.merge_size
        rows, cols = self.merged_hw
        r, c, i, j = torch.meshgrid(
            torch.arange(rows), torch.arange(cols), torch.arange(m), torch.arange(m), indexing="ij"
        )
        return torch.stack(((r * m + i).flatten(), (c * m + j).flatten()), dim=-1)

    def raster_positions(self, merged: bool = False) -> torch.Tensor:
        """(row, col) of token ``p`` placed in raster order, ``(p // W, p % W)``: LongTensor [N, 2].

        On the patch grid by default; with ``merged`` on the merged grid (one row per cell, in VRT order).
        """
        return _raster_positions(*(self.merged_hw if merged else self.patch_hw))


def _raster_positions(height: int, width: int) -> torch.Tensor:
    import torch

    p = torch.arange(height * width)
    return torch.stack((p // width, p % width), dim=-1)


@dataclass(frozen=True)
class ImageGeometry:
    """Where an original image lands on the vision tower's grids, and the conversions between those frames.

    Attributes:
        original_hw: (height, width) of the original image in pixels.
        resized_hw: (height, width) the processor resizes it to; multiples of the cell size.
        patch_size: ViT patch side in pixels.
        merge_size: side of the square of patches merged into one cell.
    """

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    patch_size: int
    merge_size: int

    @property
    def cell_size(self) -> int:
        """Side of one merged cell in resized pixels."""
        return self.patch_size * self.merge_size

    @property
    def grid(self) -> PatchGrid:
        return PatchGrid(self.patch_grid_hw, self.merge_size)

    @property
    def patch_grid_hw(self) -> tuple[int, int]:
        """(H_p, W_p): the ViT patch grid (``grid_thw[1:]`` of the processor)."""
        return self.resized_hw[0] // self.patch_size, self.resized_hw[1] // self.patch_size

    @property
    def merged_grid_hw(self) -> tuple[int, int]:
        """(H', W'): the merged grid; one VRT per cell, indexed in raster order ``k = row * W' + col``."""
        return self.resized_hw[0] // self.cell_size, self.resized_hw[1] // self.cell_size

    @property
    def num_vrts(self) -> int:
        return self.grid.num_cells

    @property
    def resized_scale(self) -> tuple[float, float]:
        """(sy, sx): resized pixels per original pixel along y and x."""
        return self.resized_hw[0] / self.original_hw[0], self.resized_hw[1] / self.original_hw[1]

    def to_resized(self, x: float, y: float) -> tuple[float, float]:
        """An original-pixel point (x, y) in resized pixels."""
        (height, width), (resized_h, resized_w) = self.original_hw, self.resized_hw
        return x * resized_w / width, y * resized_h / height

    def to_original(self, x: float, y: float) -> tuple[float, float]:
        """A resized-pixel point (x, y) in original pixels."""
        (height, width), (resized_h, resized_w) = self.original_hw, self.resized_hw
        return x * (width / resized_w), y * (height / resized_h)

    def cell_edges(self) -> tuple[list[int], list[int]]:
        """Original-pixel columns and rows where each cell starts, each list ending with the image side.

        ``xs[c] = round(c * W / W')``: cell ``(r, c)`` covers columns ``xs[c] .. xs[c + 1] - 1`` and rows
        ``ys[r] .. ys[r + 1] - 1`` of the original image (the stretch maps the merged grid onto the whole image).
        """
        height, width = self.original_hw
        rows, cols = self.merged_grid_hw
        return _edges(width, cols), _edges(height, rows)

    def cell_bounds(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Inclusive original-pixel rectangle ``(x0, y0, x1, y1)`` of merged cell ``(row, col)``.

        Neighbouring cells share no pixel and together cover the image.
        """
        xs, ys = self.cell_edges()
        x0, y0 = xs[col], ys[row]
        return x0, y0, max(x0, xs[col + 1] - 1), max(y0, ys[row + 1] - 1)

    def cell_rc(self, cell: int) -> tuple[int, int]:
        """(row, col) on the merged grid of raster cell index ``cell``."""
        return self.grid.cell_rc(cell)

    def to_dict(self) -> dict[str, Any]:
        return {
            "original_hw": list(self.original_hw),
            "resized_hw": list(self.resized_hw),
            "patch_size": self.patch_size,
            "merge_size": self.merge_size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageGeometry:
        return cls(
            tuple(int(v) for v in data["original_hw"]),
            tuple(int(v) for v in data["resized_hw"]),
            int(data["patch_size"]),
            int(data["merge_size"]),
        )


def _edges(size: int, cells: int) -> list[int]:
    # Rounded once per edge (half to even), so that neighbouring cells never overlap or leave a gap.
    return [round(k * size / cells) for k in range(cells + 1)]


@dataclass(frozen=True)
class GridSpec:
    """The settings that decide every image's grid: the backbone's patch and merge sizes and the pixel budget.

    Records store the GridSpec their patches were computed for; a consumer compares the grid it gets (see
    :func:`padt.datasets.records.check_grid`).
    """

    patch_size: int = QWEN2_5_VL_PATCH_SIZE
    merge_size: int = QWEN2_5_VL_MERGE_SIZE
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    longest_side: int | None = None

    def __post_init__(self) -> None:
        if self.longest_side is not None and self.longest_side < 1:
            raise ValueError(f"longest_side must be a positive number of pixels or None, got {self.longest_side}")

    @property
    def cell_size(self) -> int:
        return self.patch_size * self.merge_size

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the image is resized to (LANCZOS) before the image processor sees it.

        With ``longest_side`` the longest side becomes ``longest_side`` px, up or down, the other side truncated as
        the official PaDT demo does; then a side shorter than one cell is upscaled to one cell (the official
        pipeline does the same). Both keep the aspect ratio; sizes that need no change come back unchanged.
        """
        if self.longest_side is not None and max(height, width) != self.longest_side:
            scale = self.longest_side / max(height, width)
            height, width = max(1, int(height * scale)), max(1, int(width * scale))
        return self.upscaled_size(height, width)

    def upscaled_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an image with a side shorter than one cell is upscaled to (short side = one cell)."""
        cell, short = self.cell_size, min(height, width)
        if short >= cell:
            return height, width
        scale = cell / short
        return max(cell, round(height * scale)), max(cell, round(width * scale))

    def geometry(self, height: int, width: int) -> ImageGeometry:
        """Where an ``height`` x ``width`` image lands under these settings: the processor's own rule.

        Raises ``ValueError`` for non-positive sizes and aspect ratios beyond 200:1 (Qwen's limit).
        """
        # transformers is imported here, not at the top: see the module docstring.
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got height={height}, width={width}")
        up_h, up_w = self.input_size(height, width)
        resized = smart_resize(
            up_h, up_w, factor=self.cell_size, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
        return ImageGeometry((height, width), (int(resized[0]), int(resized[1])), self.patch_size, self.merge_size)

    def to_dict(self) -> dict[str, int]:
        """The settings as a dict; ``longest_side`` only when set (records written before it existed stay valid)."""
        data = {
            "patch_size": self.patch_size,
            "merge_size": self.merge_size,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
        }
        if self.longest_side is not None:
            data["longest_side"] = self.longest_side
        return data


def image_geometry(height: int, width: int, **settings: int) -> ImageGeometry:
    """``GridSpec(**settings).geometry(height, width)``: the grid an image gets from a processor with ``settings``."""
    return GridSpec(**settings).geometry(height, width)


def merge_block_positions(grid_hw: Any, merge_size: int) -> torch.Tensor:
    """:meth:`PatchGrid.merge_block_positions` of several images, one after another: LongTensor [Σ H_p·W_p, 2].

    ``grid_hw`` is [I, 2] (a tensor or nested lists) of patch-grid sizes; the result is on its device.
    """
    import torch

    sizes = grid_hw.tolist() if isinstance(grid_hw, torch.Tensor) else [list(hw) for hw in grid_hw]
    if not sizes:
        return torch.zeros(0, 2, dtype=torch.long)
    positions = torch.cat([PatchGrid((int(h), int(w)), merge_size).merge_block_positions() for h, w in sizes])
    return positions.to(grid_hw.device) if isinstance(grid_hw, torch.Tensor) else positions


def normalised_centres(positions: torch.Tensor, grid_hw: torch.Tensor) -> torch.Tensor:
    """(row, col) positions on a grid -> (y, x) of the cells' centres normalised to [0, 1]: [N, 2] float.

    Args:
        positions: LongTensor [N, 2] of (row, col).
        grid_hw: [N, 2] (or [2]) the (height, width) of the grid each position is on.
    """
    return (positions.float() + 0.5) / grid_hw.to(positions.device).float()


def merged_cell_centres(merged_hw: list[tuple[int, int]], device: Any = None) -> torch.Tensor:
    """(y, x) centre of every cell of merged grids ``merged_hw``, normalised by its image: [Σ H'·W', 2].

    Images one after another, cells in raster order (the order of VRTs and prototypes).
    """
    import torch

    if not merged_hw:
        return torch.zeros(0, 2, device=device)
    positions = torch.cat([_raster_positions(h, w) for h, w in merged_hw])
    sizes = torch.tensor([hw for hw in merged_hw for _ in range(hw[0] * hw[1])])
    return normalised_centres(positions, sizes).to(device)


def window_order(grid_thw: torch.Tensor, merge_size: int, window_size: int, patch_size: int) -> torch.Tensor:
    """Permutation of merged cells into the vision tower's window-attention order, for a batch of images.

    Returns LongTensor [Σ N'] with ``window_cells = merge_block_cells[order]``; apply it to merge-block-ordered
    patches as ``patches.view(-1, merge**2, C)[order].flatten(0, 1)``. It is the tower's own rule
    (``transformers.vision_utils.get_vision_window_index``), so it always matches the loaded vision tower.
    """
    from transformers.vision_utils import get_vision_window_index

    order, _ = get_vision_window_index(
        grid_thw.cpu(), spatial_merge_size=merge_size, window_size=window_size, patch_size=patch_size
    )
    return order.long()


#: The two orders in which the decoder can receive an image's high-resolution (patch) features.
PATCH_ORDERS = ("raster", "official")


def high_res_layout(
    grid_thw: torch.Tensor, merge_size: int, patch_order: str, *, window_size: int | None = None,
    patch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """How the decoder sees a batch's high-resolution patches.

    Returns ``(permutation, token_rc)``:
      * ``permutation`` LongTensor [Σ N]: indices into the merge-block-ordered patches of all images giving the
        order the decoder consumes them in;
      * ``token_rc`` LongTensor [Σ N, 2]: for each consumed token, the (row, col) on its image's patch grid
        where the decoder places that token's sub-mask.

    ``"raster"`` (ours) keeps merge-block order and true positions. ``"official"`` reproduces the released
    implementation, which feeds the window-ordered features to its decoder unchanged but places token ``p`` of
    an image at ``(p // W_p, p % W_p)`` when it assembles masks; checkpoints trained that way need the same. It
    needs the tower's ``window_size`` and ``patch_size`` (Qwen2.5-VL); ``"raster"`` needs neither.
    """
    import torch

    if patch_order not in PATCH_ORDERS:
        raise ValueError(f"patch_order must be one of {PATCH_ORDERS}, got {patch_order!r}")
    grids = [PatchGrid.from_grid_thw(row, merge_size) for row in grid_thw.tolist()]
    if not grids:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long)
    if patch_order == "raster":
        return torch.arange(sum(g.num_patches for g in grids)), merge_block_positions(grid_thw[:, 1:], merge_size)
    if window_size is None or patch_size is None:
        raise ValueError("the 'official' patch order needs the vision tower's window_size and patch_size")
    unit = merge_size * merge_size
    cells = window_order(grid_thw, merge_size, window_size, patch_size)
    permutation = (cells.view(-1, 1) * unit + torch.arange(unit).view(1, -1)).reshape(-1)
    return permutation, torch.cat([g.raster_positions() for g in grids])
