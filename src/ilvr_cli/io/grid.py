"""Contact sheets: rows of equally sized images side by side, on a white background."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ilvr_cli.io.write import to_uint8


def _tile(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 3) uint8, nearest-neighbour scaled by an integer factor when smaller than the cell."""
    tile = image if image.dtype == np.uint8 else to_uint8(image)
    if tile.ndim == 2:
        tile = np.repeat(tile[..., None], 3, axis=2)
    h, w = tile.shape[:2]
    if (h, w) != (height, width) and height % h == 0 and width % w == 0:
        tile = np.repeat(np.repeat(tile, height // h, axis=0), width // w, axis=1)
    if tile.shape[:2] != (height, width):
        raise ValueError(f"grid cell of {h}x{w} does not fit a {height}x{width} cell")
    return tile


def make_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2) -> np.ndarray:
    """A (H, W, 3) uint8 sheet with one row per entry of ``rows`` (shorter rows are left white).

    Cells are the size of the largest image; smaller images whose size divides it (a 16x16 thumbnail in a
    256x256 cell) are enlarged by pixel repetition, so their pixels stay visible.
    """
    cells = [cell for row in rows for cell in row]
    if not cells:
        raise ValueError("a grid needs at least one image")
    height = max(int(c.shape[0]) for c in cells)
    width = max(int(c.shape[1]) for c in cells)
    columns = max(len(row) for row in rows)
    sheet = np.full((len(rows) * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            sheet[top : top + height, left : left + width] = _tile(cell, height, width)
    return sheet
