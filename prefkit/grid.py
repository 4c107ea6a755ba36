"""Pictures for people to look at (PIL only).

One renderer, :func:`image_grid`, draws both of prefkit's image grids: generate's ``preview.png`` (a row
per prompt group, the prompt above it) and eval's ``grid.png`` (a row of base | tuned pairs per prompt,
each image captioned with its score). Cells are scaled so that an image's long side lands in
[CELL_MIN, largest] px whatever the model's resolution (largest: CELL_MAX for eval's grid, 128 for the
preview); the callers cap the rows and columns they pass, and a footer says how many rows were left out. :func:`histogram_image` draws ``label stats``' histogram
of score gaps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

TITLE_H = 14  # px of a row title band (the prompt)
CAPTION_H = 13  # px of a caption band above each image
FOOTER_H = 16  # px of the band that says how many rows were left out
PAD = 4  # px between image cells and around the grid
CELL_MIN, CELL_MAX = 128, 256  # px: the long side of a cell (small images enlarged, large ones reduced)
MARK_COLOUR = (255, 0, 0)  # a marked image's border (eval's grid: a sample flagged for reward hacking)
MARK_W = 2  # px of that border, drawn in the padding around the image (PAD = 2 * MARK_W: borders of
# neighbouring cells meet without covering either image)


def cell_scale(width: int, height: int, smallest: int = CELL_MIN, largest: int = CELL_MAX) -> float:
    """Factor that brings an image's long side into [smallest, largest]: small images are enlarged by an
    integer factor (pixels stay sharp), large ones reduced; 1 if already inside."""
    side = max(width, height)
    if side < smallest:
        return float(-(-smallest // side))
    if side > largest:
        return largest / side
    return 1.0


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def grid_size(
    image_size: tuple[int, int],
    rows: int,
    cols: int,
    captions: bool = False,
    left_out: bool = False,
    largest: int = CELL_MAX,
    legend: bool = False,
) -> tuple[int, int]:
    """(width, height) in px of :func:`image_grid`'s picture of ``rows`` x ``cols`` images of
    ``image_size``: what the callers (and tests) can bound without drawing it."""
    scale = cell_scale(*image_size, largest=largest)
    w, h = max(1, round(image_size[0] * scale)), max(1, round(image_size[1] * scale))
    row_h = TITLE_H + (CAPTION_H if captions else 0) + h + PAD
    footers = int(bool(left_out)) + int(bool(legend))
    return PAD + cols * (w + PAD), PAD + rows * row_h + FOOTER_H * footers


def image_grid(
    rows: Sequence[Sequence[Any]],
    titles: Sequence[str],
    captions: Sequence[Sequence[tuple[str, str]]] | None = None,
    left_out: str | None = None,
    largest: int = CELL_MAX,
    marked: Sequence[Sequence[bool]] | None = None,
    legend: str | None = None,
):
    """One row per list of PIL images (all of the first image's size), on white, with a title band above
    each row (cut to the grid's width) and, with ``captions``, a (text, colour) band above each image.
    ``marked[r][c]``: a MARK_COLOUR border MARK_W px wide around that image, in the padding just outside
    it (the image itself is not covered); ``legend``: a footer line in MARK_COLOUR saying what the
    border means.

    Every image is scaled by :func:`cell_scale` (nearest when enlarging, Lanczos when reducing; a long
    side above ``largest`` px is reduced to it) and cells are PAD px apart. ``left_out``: a footer line saying what is not shown (e.g. "12 more prompt groups").
    The size is :func:`grid_size`'s."""
    from PIL import Image, ImageDraw

    w0, h0 = rows[0][0].size
    scale = cell_scale(w0, h0, largest=largest)
    w, h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    caption_h = CAPTION_H if captions is not None else 0
    cols = max(len(r) for r in rows)
    row_h = TITLE_H + caption_h + h + PAD
    size = grid_size((w0, h0), len(rows), cols, captions is not None, bool(left_out), largest, bool(legend))
    grid = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(grid)
    font = _font(11)
    for r, images in enumerate(rows):
        y = PAD + r * row_h
        draw.text((PAD, y + 1), _fit(draw, titles[r], font, grid.width - 2 * PAD), fill="black", font=font)
        for c, im in enumerate(images):
            x = PAD + c * (w + PAD)
            if captions is not None:
                text, colour = captions[r][c]
                draw.text((x + 1, y + TITLE_H), _fit(draw, text, font, w - 2), fill=colour, font=font)
            if (w, h) != im.size:
                method = Image.Resampling.NEAREST if w > im.width else Image.Resampling.LANCZOS
                im = im.resize((w, h), method)
            top = y + TITLE_H + caption_h
            grid.paste(im, (x, top))
            if marked is not None and marked[r][c]:
                box = [x - MARK_W, top - MARK_W, x + w + MARK_W - 1, top + h + MARK_W - 1]
                draw.rectangle(box, outline=MARK_COLOUR, width=MARK_W)
    y = PAD + len(rows) * row_h
    for text, colour in ((left_out, (192, 0, 0)), (legend, MARK_COLOUR)):
        if text:
            draw.text((PAD, y + 2), _fit(draw, text, font, grid.width - 2 * PAD), fill=colour, font=font)
            y += FOOTER_H
    return grid


def _tick(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


def histogram_image(
    values: Sequence[float],
    marks: Sequence[tuple[float, str, Any]] = (),
    title: str = "",
    size: tuple[int, int] = (480, 240),
    bins: int = 40,
):
    """A histogram of non-negative ``values`` on a log10 axis (one bar per bin, decades ticked), with
    exact zeros counted in a bar of their own at the left, labelled "0". ``marks``: (x, label, colour)
    vertical lines (a value of 0 is drawn on the zero bar). Returns a PIL image of ``size``."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = _font(11)
    left, right, top, bottom = 36, width - 8, 18, height - 30  # the plot area
    zero_w = 12  # the bar of exact zeros
    draw.text((4, 2), _fit(draw, title, font, width - 8), fill="black", font=font)
    positive = [v for v in values if v > 0]
    zeros = len(values) - len(positive)
    lo = math.floor(math.log10(min(positive))) if positive else -3
    hi = math.ceil(math.log10(max(positive))) if positive else 0
    hi = max(hi, lo + 1)
    counts = [0] * bins
    for v in positive:
        counts[min(bins - 1, int((math.log10(v) - lo) / (hi - lo) * bins))] += 1
    peak = max([*counts, zeros, 1])
    x0 = left + zero_w + 24  # where the log axis starts (room for the labels "0" and "1e-4" below)

    def xpos(v: float) -> float:
        return x0 + (math.log10(v) - lo) / (hi - lo) * (right - x0) if v > 0 else left + zero_w / 2

    def bar(x_a: float, x_b: float, n: int, colour) -> None:
        if n:
            draw.rectangle([x_a, bottom - (bottom - top) * n / peak, x_b, bottom], fill=colour)

    bar(left, left + zero_w, zeros, (96, 96, 96))
    step = (right - x0) / bins
    for i, n in enumerate(counts):
        bar(x0 + i * step, x0 + (i + 1) * step - 1, n, (70, 110, 180))
    draw.line([left, bottom, right, bottom], fill="black")
    draw.line([left, top, left, bottom], fill="black")
    draw.text((2, top - 6), str(peak), fill="black", font=font)
    draw.text((2, bottom - 12), "0", fill="black", font=font)
    draw.text((left + zero_w / 2 - 3, bottom + 3), "0", fill="black", font=font)
    every = max(1, math.ceil((hi - lo) / 8))  # at most about 8 decade labels
    for d in range(lo, hi + 1):
        x = xpos(10.0**d)
        draw.line([x, bottom, x, bottom + 3], fill="black")
        if (d - lo) % every == 0:
            text = _tick(10.0**d)
            draw.text((x - draw.textlength(text, font=font) / 2, bottom + 3), text, fill="black", font=font)
    for i, (v, label, colour) in enumerate(marks):
        x = min(max(xpos(v), left), right) if v <= 0 or math.log10(v) >= lo else left + zero_w + 3
        draw.line([x, top, x, bottom], fill=colour, width=2)
        tx = min(x + 3, right - draw.textlength(label, font=font))
        draw.text((tx, top + 2 + 12 * i), label, fill=colour, font=font)
    draw.text(
        (left, bottom + 16), "gap (log scale; exact zeros in the bar at the left)", fill="black", font=font
    )
    return image
