#!/usr/bin/env python3
"""Procedural "coloured shapes" text-to-image dataset for carousel's bundled model.

Every sample is a 32x32 RGB image of one to three hard-edged shapes (circle, square, triangle) of one colour on a
plain background, with an English caption from a small grammar:

    <count> <colour> <shape>[s] [<position>] [on a <colour> background]

    count     "a" | "two" | "three"
    colour    red, green, blue, yellow, purple, black
    shape     circle, square, triangle
    position  (single shapes only) "at the top left" | "at the top right" | "at the bottom left" |
              "at the bottom right" | "in the center"
    background  default white (not mentioned), else one of the colours above (never the shape colour)

Examples: "a red circle", "two blue squares on a yellow background", "a green triangle at the top left".
Generation is deterministic from a seed (numpy.random.default_rng(seed)); the sample list of a seed never depends
on how many samples are drawn afterwards.

Run:
    python tools/shapes_dataset.py --seed 1 --count 16 --out /tmp/shapes   # writes PNGs + captions.txt
The training script and tools/check_adherence.py import `Sample`, `sample_spec`, `render` and `make_samples`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np

SIZE = 32

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "black": (20, 20, 20),
}
DEFAULT_BACKGROUND = "white"
WHITE = (245, 245, 245)
ALL_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, DEFAULT_BACKGROUND: WHITE}

SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")


@dataclasses.dataclass(frozen=True)
class Shape:
    """One drawn shape: kind, centre (x, y) in pixels and side/diameter."""

    kind: str
    cx: float
    cy: float
    size: int


@dataclasses.dataclass(frozen=True)
class Sample:
    """Ground truth of one image: attributes named in the caption plus the drawn geometry."""

    caption: str
    colour: str
    shape: str
    count: int
    position: str | None  # None when the caption names no position
    background: str  # "white" when the caption names no background
    shapes: tuple[Shape, ...]


def caption_of(colour: str, shape: str, count: int, position: str | None, background: str) -> str:
    """The caption the grammar produces for these attributes."""
    text = f"{COUNT_WORDS[count]} {colour} {shape}{'s' if count > 1 else ''}"
    if position is not None:
        text += " in the center" if position == "center" else f" at the {position}"
    if background != DEFAULT_BACKGROUND:
        text += f" on a {background} background"
    return text


def _position_range(position: str, size: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Allowed centre ranges (x, y) that keep a shape of `size` inside the named region."""
    half = size / 2.0
    lo_edge, hi_edge = half + 1.0, SIZE - half - 1.0
    if position == "center":
        return (14.0, 18.0), (14.0, 18.0)
    # quadrant: the whole shape lies in that half on both axes
    low = (lo_edge, max(lo_edge, SIZE / 2.0 - half - 1.0))
    high = (min(hi_edge, SIZE / 2.0 + half + 1.0), hi_edge)
    x = low if "left" in position else high
    y = low if "top" in position else high
    return x, y


def sample_spec(rng: np.random.Generator) -> Sample:
    """Draw one sample's attributes and geometry from `rng`."""
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.25, 0.25]))
    position = None
    if count == 1 and rng.random() < 0.5:
        position = str(rng.choice(POSITIONS))
    background = DEFAULT_BACKGROUND
    if rng.random() < 0.4:
        background = str(rng.choice([c for c in COLOURS if c != colour]))

    shapes: list[Shape] = []
    if count == 1:
        if position is None:
            size = int(rng.integers(10, 19))
            half = size / 2.0
            cx, cy = rng.uniform(half + 1, SIZE - half - 1, size=2)
        else:
            size = int(rng.integers(9, 14))
            (x0, x1), (y0, y1) = _position_range(position, size)
            cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        shapes.append(Shape(shape, float(cx), float(cy), size))
    else:
        while len(shapes) < count:
            shapes.clear()
            for _ in range(200):
                size = int(rng.integers(7, 11))
                half = size / 2.0
                cx, cy = rng.uniform(half + 1, SIZE - half - 1, size=2)
                # keep bounding boxes at least 2 px apart so shapes stay separate components
                if all(
                    abs(cx - s.cx) > half + s.size / 2.0 + 2 or abs(cy - s.cy) > half + s.size / 2.0 + 2
                    for s in shapes
                ):
                    shapes.append(Shape(shape, float(cx), float(cy), size))
                    if len(shapes) == count:
                        break
    return Sample(caption_of(colour, shape, count, position, background), colour, shape, count, position, background,
                  tuple(shapes))


def shape_mask(s: Shape) -> np.ndarray:
    """Boolean HxW mask of one hard-edged shape (pixel centres inside the shape)."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    half = s.size / 2.0
    x0, y0 = round(s.cx - half), round(s.cy - half)
    x1, y1 = x0 + s.size, y0 + s.size
    if s.kind == "square":
        return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    if s.kind == "circle":
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= half * half
    # triangle pointing up: apex at top centre, base on the bottom edge
    cx = (x0 + x1) / 2.0
    t = (ys - y0) / s.size  # 0 at apex row, 1 at base
    return (ys >= y0) & (ys < y1) & (np.abs(xs - cx) <= t * half)


def render(sample: Sample) -> np.ndarray:
    """HxWx3 uint8 image of a sample."""
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = ALL_COLOURS[sample.background]
    for s in sample.shapes:
        img[shape_mask(s)] = COLOURS[sample.colour]
    return img


def make_samples(seed: int, count: int) -> list[Sample]:
    """`count` samples, deterministic from `seed`."""
    rng = np.random.default_rng(seed)
    return [sample_spec(rng) for _ in range(count)]


def main() -> None:
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--out", required=True, help="output folder for NNNN.png and captions.txt")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    samples = make_samples(args.seed, args.count)
    with open(os.path.join(args.out, "captions.txt"), "w") as f:
        for i, s in enumerate(samples):
            Image.fromarray(render(s)).save(os.path.join(args.out, f"{i:04d}.png"))
            f.write(s.caption + "\n")


if __name__ == "__main__":
    main()
