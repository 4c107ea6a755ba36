"""Image grids for people to look at (PIL only): generate's preview.png and eval's base | tuned grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TITLE_H = 14  # px of a row title band (the prompt)
CAPTION_H = 13  # px of a caption band above each image
PAD = 4  # px between image cells


def cell_scale(width: int, height: int, smallest: int = 128, largest: int = 256) -> float:
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


def image_grid(
    rows: Sequence[Sequence[Any]],
    titles: Sequence[str] | None = None,
    captions: Sequence[Sequence[tuple[str, str]]] | None = None,
    scale: float = 1.0,
    pad: int = 0,
):
    """One row per list of PIL images (all of the first image's size), on white.

    ``titles``: a text band above each row; ``captions``: (text, colour) above each image; ``scale``
    resizes every image (nearest when enlarging); ``pad`` pixels between cells and around the grid.
    Without titles, captions, scale or pad it is a plain paste of the images edge to edge."""
    from PIL import Image, ImageDraw

    w0, h0 = rows[0][0].size
    w, h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    title_h = TITLE_H if titles is not None else 0
    caption_h = CAPTION_H if captions is not None else 0
    cols = max(len(r) for r in rows)
    row_h = title_h + caption_h + h + pad
    grid = Image.new("RGB", (pad + cols * (w + pad), pad + len(rows) * row_h), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(11) if titles is not None or captions is not None else None
    for r, images in enumerate(rows):
        y = pad + r * row_h
        if titles is not None:
            draw.text(
                (pad, y + 1), _fit(draw, titles[r], font, grid.width - 2 * pad), fill="black", font=font
            )
        for c, im in enumerate(images):
            x = pad + c * (w + pad)
            if captions is not None:
                text, colour = captions[r][c]
                draw.text((x + 1, y + title_h), _fit(draw, text, font, w - 2), fill=colour, font=font)
            if (w, h) != im.size:
                method = Image.Resampling.NEAREST if w > im.width else Image.Resampling.LANCZOS
                im = im.resize((w, h), method)
            grid.paste(im, (x, y + title_h + caption_h))
    return grid
