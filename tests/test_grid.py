"""prefkit.grid, drawn with synthetic PIL images: the one renderer of preview.png and eval's grid.png
(sizes bounded whatever the model's resolution, every row shown up to the cap, a footer for the rest)
and label stats' histogram of score gaps."""

from __future__ import annotations

import pytest
from PIL import Image

from prefkit.generate import PREVIEW_CELL, PREVIEW_GROUPS, PREVIEW_SAMPLES
from prefkit.grid import grid_size, histogram_image, image_grid


def _colour(g: int) -> tuple[int, int, int]:
    return (40 + 5 * g, 255 - 5 * g, (37 * g) % 256)


def _rows(groups: int, samples: int, side: int) -> list[list[Image.Image]]:
    """One solid colour per group, so a cell shows which group it holds."""
    return [[Image.new("RGB", (side, side), _colour(g)) for _ in range(samples)] for g in range(groups)]


@pytest.mark.parametrize("groups", [1, 5, 16, PREVIEW_GROUPS])
def test_a_1024_px_preview_is_small_and_shows_every_group(groups):
    rows = _rows(groups, PREVIEW_SAMPLES, 1024)
    titles = [f"{g}: a prompt that is much too long to fit above the row " * 3 for g in range(groups)]
    grid = image_grid(rows, titles, largest=PREVIEW_CELL)
    # 128 px cells, 4 px apart, a 14 px title band above each row: linear in the number of groups
    assert grid.size == (4 + 8 * (128 + 4), 4 + groups * (14 + 128 + 4))
    assert grid.size == grid_size((1024, 1024), groups, 8, largest=PREVIEW_CELL)
    assert grid.width <= 1060 and grid.height <= 4676  # at the cap: 1060 x 4676 (not 8192 x 32768)
    for g in range(groups):
        top = 4 + g * (14 + 128 + 4)
        title = grid.crop((4, top, grid.width - 4, top + 14))
        assert title.getextrema() != ((255, 255), (255, 255), (255, 255)), f"group {g}: no caption"
        for i in range(8):
            x = 4 + i * (128 + 4)
            assert grid.getpixel((x + 64, top + 14 + 64)) == _colour(g), f"group {g}, sample {i}"


def test_rows_left_out_are_announced_in_a_footer():
    grid = image_grid(_rows(2, 3, 16), ["a", "b"], left_out="5 more prompt group(s) not shown")
    # 16 px images are enlarged 8x to 128 px; the footer adds 16 px
    assert grid.size == (4 + 3 * (128 + 4), 4 + 2 * (14 + 128 + 4) + 16)
    footer = grid.crop((0, 4 + 2 * (14 + 128 + 4), grid.width, grid.height))
    assert (192, 0, 0) in {c for _, c in footer.getcolors(1 << 16)}


def test_eval_grid_cells_keep_up_to_256_px():
    rows = _rows(2, 2, 1024)
    captions = [[("base 1", "black"), ("tuned 2", (0, 128, 0))]] * 2
    grid = image_grid(rows, ["p0", "p1"], captions)
    assert grid.size == (4 + 2 * (256 + 4), 4 + 2 * (14 + 13 + 256 + 4))
    assert grid.getpixel((4 + 128, 4 + 14 + 13 + 128)) == _colour(0)


def test_histogram_has_its_size_and_marks():
    gaps = [0.0, 0.0, 1e-4, 4e-4, 0.002, 0.01, 0.05, 0.3]
    image = histogram_image(gaps, [(0.002, "suggested 0.002", (192, 0, 0))], "t", size=(480, 240))
    assert image.size == (480, 240) and image.mode == "RGB"
    assert (192, 0, 0) in {c for _, c in image.getcolors(1 << 16)}
    assert histogram_image([], title="nothing").size == (480, 240)  # no gaps: axes only
    assert histogram_image([0.0, 0.0]).size == (480, 240)  # only exact ties
