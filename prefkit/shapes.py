"""The coloured-shapes world of the built-in model: the captions, the pictures, and reading them back.

One picture = one shape (circle, square, triangle, diamond) of one colour on a plain background of
another colour, with a size and a position. Its caption always names the colour, the shape and the
background, and sometimes the size and the position::

    a red circle on a blue background
    a small purple diamond on a white background
    a large green triangle on the left on a black background

Three users share this module, so they agree by construction:

* ``prefkit.models.shapes_model`` draws its training set with :func:`draw` and the captions with
  :func:`caption` (the ``tiny-shapes`` model learns this world);
* ``prefkit label --source shapes`` (:mod:`prefkit.judges.shapes`) reads an image back with
  :func:`analyse` and checks it against :func:`parse_caption`: a ground-truth preference signal from
  the pixels, on a CPU;
* the held-out prompt list (``data/prompts/shapes-heldout.txt``) uses only :data:`HELD_OUT` colour-shape
  combinations, which the model never saw in training.

Geometry (image of side S pixels): a shape of size s fits in an s x s box centred at (cx, cy). Circle:
radius s/2. Square: side s. Diamond: the square turned 45 degrees, corners s/2 from the centre.
Triangle: apex up, base s wide at the bottom of the box. Pictures are drawn 4x larger and averaged down
(anti-aliased edges). Sizes (what the judge accepts): small = 0.25-0.34 S, medium = 0.40-0.53 S,
large = 0.59-0.72 S; the training pictures use 0.3125, 0.5 and 0.6875 S on a 2 px grid of centres. A
caption without a size word allows any size. Positions: "on the left" puts the centre in the left 40 % of the
picture (likewise right, top, bottom); without a position word the centre is anywhere the shape fits.
Drawing can be narrower than what the judge accepts: ``random_scene(..., jitter=k)`` puts the centre
within k grid steps of :func:`canonical_centre` (the middle, or 1/5 of the side from the named edge), which
is how the built-in model's training pictures are drawn (k = 0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

#: name -> RGB. Chosen to be far apart in RGB (the closest pair is about 120 apart).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "orange": (245, 140, 20),
    "purple": (140, 50, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.25, 0.34),
    "medium": (0.40, 0.53),
    "large": (0.59, 0.72),
}
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
#: The centre of a shape "on the left" lies in the left POSITION_BAND of the picture (etc.).
POSITION_BAND = 0.4

#: (colour, shape) combinations never drawn in the model's training set: the held-out prompts use them.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("orange", "triangle"),
        ("purple", "circle"),
        ("yellow", "square"),
        ("black", "circle"),
        ("white", "diamond"),
        ("blue", "diamond"),
    }
)

#: Every word a caption can use (the tiny model's tokenizers know each as one token).
WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(["a", "on", "the", "background", *COLOURS, *SHAPES, "small", "large", *POSITIONS])
)

_CAPTION = re.compile(
    r"^\s*an?\s+(?:(?P<size>small|large)\s+)?(?P<colour>[a-z]+)\s+(?P<shape>[a-z]+)"
    r"(?:\s+on\s+the\s+(?P<position>left|right|top|bottom))?"
    r"\s+on\s+an?\s+(?P<background>[a-z]+)\s+background\s*\.?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Scene:
    """What one picture shows. ``size`` is the box side as a fraction of the picture's side."""

    colour: str
    shape: str
    background: str
    size: float
    cx: float  # centre, as fractions of the width / height
    cy: float


@dataclass(frozen=True)
class Caption:
    """What a caption asks for; ``size`` and ``position`` are None when it does not say."""

    colour: str
    shape: str
    background: str
    size: str | None = None
    position: str | None = None

    def text(self) -> str:
        words = ["a"] + ([self.size] if self.size else []) + [self.colour, self.shape]
        if self.position:
            words += ["on", "the", self.position]
        return " ".join(words + ["on", "a", self.background, "background"])


def parse_caption(text: str) -> Caption | None:
    """The request of a caption of the shapes grammar, or None if ``text`` is not one."""
    m = _CAPTION.match(text)
    if not m:
        return None
    colour, shape, background = (m.group(k).lower() for k in ("colour", "shape", "background"))
    if colour not in COLOURS or background not in COLOURS or shape not in SHAPES:
        return None
    size = m.group("size").lower() if m.group("size") else None
    position = m.group("position").lower() if m.group("position") else None
    return Caption(colour, shape, background, size, position)


# -- drawing --------------------------------------------------------------------------------------------


def shape_alpha(shape: str, size: float, cx: float, cy: float, side: int, supersample: int = 4) -> np.ndarray:
    """Coverage in [0, 1] of each pixel of a ``side`` x ``side`` picture by the shape (float32 [side, side]).
    ``size``, ``cx``, ``cy`` are fractions of the side; pixels are sampled ``supersample``^2 times."""
    n = side * supersample
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    x, y = coords[None, :] - cx, coords[:, None] - cy
    r = size / 2
    if shape == "circle":
        inside = x * x + y * y <= r * r
    elif shape == "square":
        inside = (np.abs(x) <= r) & (np.abs(y) <= r)
    elif shape == "diamond":
        inside = np.abs(x) + np.abs(y) <= r
    elif shape == "triangle":
        # apex (0, -r), base from (-r, r) to (r, r): half-width grows from 0 to r
        inside = (y <= r) & (np.abs(x) <= (y + r) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")
    return inside.reshape(side, supersample, side, supersample).mean(axis=(1, 3)).astype(np.float32)


def draw(scene: Scene, side: int = 32) -> np.ndarray:
    """The picture of ``scene``: uint8 [side, side, 3]."""
    alpha = shape_alpha(scene.shape, scene.size, scene.cx, scene.cy, side)[..., None]
    fg = np.asarray(COLOURS[scene.colour], np.float32)
    bg = np.asarray(COLOURS[scene.background], np.float32)
    return np.round(bg * (1 - alpha) + fg * alpha).astype(np.uint8)


#: The box side drawn for each size word, as a fraction of the picture (10, 16 and 22 px at 32 px).
DRAWN_SIZE: dict[str, float] = {"small": 0.3125, "medium": 0.5, "large": 0.6875}
#: Centres are drawn on a grid of this step (2 px at 32 px): with the sizes above, edges fall on pixel
#: boundaries, and a picture is one of a finite set of crisp layouts a tiny model can learn on a CPU.
CENTRE_STEP = 1 / 16


def canonical_centre(size: float, position: str | None) -> tuple[float, float]:
    """Where a shape of ``size`` is put by default (the centre, as fractions of the side): the middle of the picture, or for a position word the
    grid point of that side's band closest to the band's middle (1/5 of the side) that keeps the whole
    shape one pixel inside the picture; the other axis stays in the middle."""
    if position is None:
        return 0.5, 0.5
    margin = size / 2 + 1 / 32
    near = float(np.ceil(max(POSITION_BAND / 2, margin) / CENTRE_STEP - 1e-9) * CENTRE_STEP)
    far = 1.0 - near
    return {"left": (near, 0.5), "right": (far, 0.5), "top": (0.5, near), "bottom": (0.5, far)}[position]


def random_scene(
    rng: np.random.Generator,
    *,
    held_out: bool = False,
    size: str | None = None,
    position: str | None = None,
    jitter: int | None = None,
) -> Scene:
    """A random scene whose colour-shape combination is held out (``held_out``) or a training one.

    The size is one of DRAWN_SIZE (within the bands of SIZES), the centre lies on the CENTRE_STEP grid
    with the whole shape at least one pixel inside the picture, and inside the position band when
    ``position`` is given."""
    combos = (
        sorted(HELD_OUT) if held_out else [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT]
    )
    colour, shape = combos[rng.integers(len(combos))]
    background = rng.choice([c for c in COLOURS if c != colour])
    s = DRAWN_SIZE[size or str(rng.choice(list(SIZES)))]
    margin = s / 2 + 1 / 32
    grid = np.arange(0.0, 1.0 + 1e-9, CENTRE_STEP)
    inside = grid[(grid >= margin - 1e-9) & (grid <= 1 - margin + 1e-9)]
    if jitter is not None:  # near the canonical place: at most ``jitter`` grid steps from it on each axis
        home, centre = canonical_centre(s, position), []
        for axis, h in enumerate(home):
            near = inside[np.abs(inside - h) <= jitter * CENTRE_STEP + 1e-9]
            if position is not None and axis == (0 if position in ("left", "right") else 1):
                near = near[
                    (near < POSITION_BAND) if position in ("left", "top") else (near > 1 - POSITION_BAND)
                ]
            centre.append(float(rng.choice(near)))
        return Scene(colour, shape, str(background), s, *centre)
    cx, cy = (float(rng.choice(inside)) for _ in range(2))
    if position is not None:
        near = (
            inside[inside < POSITION_BAND]
            if position in ("left", "top")
            else inside[inside > 1 - POSITION_BAND]
        )
        if len(near) == 0:  # the largest shapes barely fit a band: take the closest centre
            near = inside[:1] if position in ("left", "top") else inside[-1:]
        if position in ("left", "right"):
            cx = float(rng.choice(near))
        else:
            cy = float(rng.choice(near))
    return Scene(colour, shape, str(background), s, cx, cy)


def size_word(size: float) -> str:
    """small, medium or large: the nearest band (between bands, the split is at the gap's middle)."""
    if size < (SIZES["small"][1] + SIZES["medium"][0]) / 2:
        return "small"
    if size < (SIZES["medium"][1] + SIZES["large"][0]) / 2:
        return "medium"
    return "large"


def caption(scene: Scene, *, say_size: bool, position: str | None = None) -> Caption:
    """A caption true of ``scene``: the size word only if asked for and not medium; ``position`` if given
    (it must be true of the scene)."""
    word = size_word(scene.size)
    return Caption(
        scene.colour, scene.shape, scene.background, word if say_size and word != "medium" else None, position
    )


# -- reading a picture back -----------------------------------------------------------------------------

#: A pixel belongs to the foreground when its RGB distance to the background colour exceeds this.
FOREGROUND_DISTANCE = 60.0


@dataclass
class Analysis:
    """What :func:`analyse` reads from a picture. Colours are the nearest palette names."""

    background: str
    background_rgb: tuple[float, float, float]
    colour: str | None  # None: no foreground found
    colour_rgb: tuple[float, float, float] | None
    shape: str | None
    shape_iou: dict[str, float]  # IoU of the foreground with each shape drawn in its box
    size: float | None  # box side / picture side
    cx: float | None
    cy: float | None
    area: float  # foreground coverage / picture area


def nearest_colour(rgb) -> str:
    rgb = np.asarray(rgb, np.float32)
    return min(COLOURS, key=lambda c: float(np.sum((np.asarray(COLOURS[c], np.float32) - rgb) ** 2)))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (iterative flood fill; pictures are small)."""
    h, w = mask.shape
    label = np.zeros((h, w), np.int32)
    best, best_size, current = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if label[y0, x0]:
            continue
        current += 1
        stack, size = [(y0, x0)], 0
        label[y0, x0] = current
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not label[ny, nx]:
                    label[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return label == best if best else np.zeros_like(mask)


#: Area of each shape as a fraction of its s x s box.
_AREA = {"circle": np.pi / 4, "square": 1.0, "diamond": 0.5, "triangle": 0.5}
#: How far below the box centre each shape's centroid lies, as a fraction of s (the triangle's is r / 3).
_CENTROID_DROP = {"circle": 0.0, "square": 0.0, "diamond": 0.0, "triangle": 1 / 6}


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def analyse(image: Any) -> Analysis:
    """Read background, shape colour, shape, size and position from a picture (PIL image or HxWx3 array).

    Background: the median colour of the picture's border. Foreground: the largest connected region of
    pixels farther than FOREGROUND_DISTANCE from it (grown by one pixel for the anti-aliased edge); its
    colour is the median of its core pixels. Each pixel's coverage alpha is its colour's position between
    background and foreground. Shape: for each shape, the box size and centre that give the measured
    area and centroid are computed, the shape is drawn there (anti-aliased, as :func:`draw` does), and
    compared with the coverage by soft IoU (sum of minima / sum of maxima); the best match wins, and its
    box gives the size and position. Sub-pixel fitting keeps small shapes (8 px) readable."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    side_h, side_w = arr.shape[:2]
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg_rgb = np.median(border, axis=0)
    distance = np.sqrt(((arr - bg_rgb) ** 2).sum(-1))
    core = _largest_component(distance > FOREGROUND_DISTANCE)
    bg = nearest_colour(bg_rgb)
    if core.sum() < 3:
        return Analysis(bg, tuple(map(float, bg_rgb)), None, None, None, {}, None, None, None, 0.0)
    fg_rgb = np.median(arr[core], axis=0)
    direction = fg_rgb - bg_rgb
    alpha = ((arr - bg_rgb) @ direction) / max(float(direction @ direction), 1e-6)
    alpha = np.clip(alpha, 0.0, 1.0) * _dilate(core)
    area = float(alpha.sum()) / (side_w * side_h)
    ys, xs = np.mgrid[0:side_h, 0:side_w].astype(np.float32)
    mx = float((alpha * (xs + 0.5)).sum() / alpha.sum()) / side_w
    my = float((alpha * (ys + 0.5)).sum() / alpha.sum()) / side_h
    ious, fits = {}, {}
    for shape in SHAPES:
        size = float(np.sqrt(area / _AREA[shape]))
        cx, cy = mx, my - _CENTROID_DROP[shape] * size
        template = shape_alpha(shape, size, cx, cy, side_w)
        ious[shape] = float(np.minimum(template, alpha).sum() / np.maximum(template, alpha).sum())
        fits[shape] = (size, cx, cy)
    shape = max(ious, key=ious.get)
    size, cx, cy = fits[shape]
    return Analysis(
        bg,
        tuple(map(float, bg_rgb)),
        nearest_colour(fg_rgb),
        tuple(map(float, fg_rgb)),
        shape,
        ious,
        size,
        cx,
        cy,
        area,
    )


def position_holds(position: str, cx: float, cy: float) -> bool:
    return {
        "left": cx < POSITION_BAND,
        "right": cx > 1 - POSITION_BAND,
        "top": cy < POSITION_BAND,
        "bottom": cy > 1 - POSITION_BAND,
    }[position]


def check(analysis: Analysis, request: Caption) -> dict[str, bool]:
    """Which requested attributes the picture shows: colour, shape, background, and size / position
    when the caption names them."""
    found = analysis.colour is not None
    verdict = {
        "colour": found and analysis.colour == request.colour,
        "shape": found and analysis.shape == request.shape,
        "background": analysis.background == request.background,
    }
    if request.size is not None:
        verdict["size"] = found and size_word(analysis.size) == request.size
    if request.position is not None:
        verdict["position"] = found and position_holds(request.position, analysis.cx, analysis.cy)
    return verdict


def score(analysis: Analysis, request: Caption) -> float:
    """How well a picture matches a caption, in [0, 1] (1: everything asked for is right, crisply).

    The mean over the checked attributes of 0.5 x (the attribute is right) + 0.5 x a graded closeness:
    colours 1 - RGB distance / 255 (floored at 0), shape the IoU with the requested shape drawn in the
    foreground's box, size 1 - distance to the requested band / 0.3, position 1 - distance into the
    requested band / 0.5. A picture without foreground scores its background term only."""
    verdict = check(analysis, request)
    terms = []

    def closeness(rgb, name) -> float:
        d = float(np.linalg.norm(np.asarray(rgb) - np.asarray(COLOURS[name], np.float32)))
        return max(0.0, 1.0 - d / 255.0)

    terms.append(0.5 * verdict["background"] + 0.5 * closeness(analysis.background_rgb, request.background))
    if analysis.colour is None:
        terms += [0.0, 0.0] + [0.0] * (len(verdict) - 3)
        return float(np.mean(terms))
    terms.append(0.5 * verdict["colour"] + 0.5 * closeness(analysis.colour_rgb, request.colour))
    terms.append(0.5 * verdict["shape"] + 0.5 * analysis.shape_iou[request.shape])
    if request.size is not None:
        lo, hi = SIZES[request.size]
        miss = max(lo - analysis.size, 0.0, analysis.size - hi)
        terms.append(0.5 * verdict["size"] + 0.5 * max(0.0, 1 - miss / 0.3))
    if request.position is not None:
        coord = analysis.cx if request.position in ("left", "right") else analysis.cy
        into = coord if request.position in ("left", "top") else 1 - coord
        miss = max(0.0, into - POSITION_BAND)
        terms.append(0.5 * verdict["position"] + 0.5 * max(0.0, 1 - miss / 0.5))
    return float(np.mean(terms))
