#!/usr/bin/env python3
"""Prompt-adherence checker for the bundled shapes model: does an image show what its caption says?

Image analysis only (numpy), per image:
  background  median colour of the 1-pixel border, nearest named colour (white or one of the shape colours)
  foreground  pixels farther than 80 (RGB Euclidean) from that border colour
  colour      majority vote of the foreground pixels' nearest shape colour (the background colour excluded)
  count       4-connected foreground components of at least 5 pixels and a quarter of the largest one's area
  shape       area-weighted vote over components: fill ratio of the bounding box >= 0.87 square, >= 0.66 circle,
              else triangle (an up-pointing triangle fills ~0.5); a component whose top third is clearly narrower
              than its bottom third is a triangle whatever its fill ratio
  position    (captions naming one) centroid of the foreground: within 5 px of the image centre on both axes is
              "center", else the quadrant
Accuracy per attribute is reported over all images (position over those whose caption names a position).

Prompts are the captions of tools/shapes_dataset.py for a seed not used in training (default 2026).

    # validate the checker on the dataset's own renders (expect ~100%)
    python tools/check_adherence.py --ground-truth --seed 2026 --count 200
    # generate with diffusers from a model folder (DDIM, CFG) and score
    python tools/check_adherence.py --model models/shapes-32 --seed 2026 --count 200 --steps 20 --guidance 2
    # score existing images: DIR holds 0000.png, 0001.png, ... and captions.txt (one caption per line)
    python tools/check_adherence.py --images DIR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import deque

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes_dataset as ds  # noqa: E402

FG_DISTANCE = 80.0
MIN_AREA = 5
ATTRIBUTES = ("colour", "shape", "count", "position", "background")
_CAPTION = re.compile(
    r"^(a|two|three) (\w+) (circle|square|triangle)s?"
    r"(?: (?:at the (top left|top right|bottom left|bottom right)|in the (center)))?"
    r"(?: on a (\w+) background)?$"
)


def parse_caption(caption: str) -> dict:
    """Attributes a caption of the dataset grammar asks for; raises ValueError for other text."""
    m = _CAPTION.match(caption.strip().lower())
    if not m or m.group(2) not in ds.COLOURS or (m.group(6) and m.group(6) not in ds.COLOURS):
        raise ValueError(f"caption outside the shapes grammar: {caption!r}")
    count = {"a": 1, "two": 2, "three": 3}[m.group(1)]
    return {"colour": m.group(2), "shape": m.group(3), "count": count, "position": m.group(4) or m.group(5),
            "background": m.group(6) or ds.DEFAULT_BACKGROUND}


def _nearest(rgb: np.ndarray, names: list[str]) -> np.ndarray:
    """Index into `names` of the nearest named colour for each row of rgb (N x 3)."""
    pal = np.array([ds.ALL_COLOURS[n] for n in names], np.float64)
    d = ((rgb[:, None, :].astype(np.float64) - pal[None]) ** 2).sum(-1)
    return d.argmin(1)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as arrays of (y, x) coordinates."""
    h, w = mask.shape
    seen = np.zeros_like(mask, bool)
    comps = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pts = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pts.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        comps.append(np.array(pts))
    return comps


def _shape_of(pts: np.ndarray) -> str:
    ys, xs = pts[:, 0], pts[:, 1]
    hgt, wid = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = len(pts) / float(hgt * wid)
    third = max(1, hgt // 3)
    top = np.count_nonzero(ys < ys.min() + third)
    bottom = np.count_nonzero(ys > ys.max() - third)
    if hgt >= 4 and top < 0.6 * bottom and fill < 0.8:
        return "triangle"
    if fill >= 0.87:
        return "square"
    return "circle" if fill >= 0.66 else "triangle"


def analyse(img: np.ndarray) -> dict:
    """Attributes found in one HxWx3 uint8 image (keys as parse_caption; None where nothing was found)."""
    img = img.astype(np.float64)
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    bg_rgb = np.median(border, 0)
    names = list(ds.ALL_COLOURS)
    background = names[_nearest(bg_rgb[None], names)[0]]
    mask = np.sqrt(((img - bg_rgb) ** 2).sum(-1)) > FG_DISTANCE
    found = {"background": background, "colour": None, "shape": None, "count": 0, "position": None}
    comps = [c for c in _components(mask) if len(c) >= MIN_AREA]
    if not comps:
        return found
    largest = max(len(c) for c in comps)
    comps = [c for c in comps if len(c) >= 0.25 * largest]
    fg = np.concatenate(comps)
    shape_names = [n for n in ds.COLOURS if n != background]
    votes = np.bincount(_nearest(img[fg[:, 0], fg[:, 1]], shape_names), minlength=len(shape_names))
    found["colour"] = shape_names[int(votes.argmax())]
    weight: dict[str, int] = {}
    for c in comps:
        k = _shape_of(c)
        weight[k] = weight.get(k, 0) + len(c)
    found["shape"] = max(weight, key=weight.get)
    found["count"] = len(comps)
    cy, cx = fg.mean(0) + 0.5
    mid = ds.SIZE / 2.0
    if abs(cx - mid) <= 5 and abs(cy - mid) <= 5:
        found["position"] = "center"
    else:
        found["position"] = ("top" if cy < mid else "bottom") + " " + ("left" if cx < mid else "right")
    return found


def score(images: np.ndarray, captions: list[str]) -> dict:
    """Per-attribute accuracy (fractions) of images against their captions, plus per-image details."""
    hits = {a: 0 for a in ATTRIBUTES}
    totals = {a: 0 for a in ATTRIBUTES}
    all_ok = 0
    details = []
    for img, cap in zip(images, captions):
        want, got = parse_caption(cap), analyse(img)
        ok = True
        for a in ATTRIBUTES:
            if a == "position" and want[a] is None:
                continue
            totals[a] += 1
            hit = want[a] == got[a]
            hits[a] += hit
            ok &= hit
        all_ok += ok
        details.append({"caption": cap, "found": got, "ok": bool(ok)})
    acc = {a: hits[a] / totals[a] for a in ATTRIBUTES if totals[a]}
    acc["colour_and_shape"] = sum(
        1 for d in details if d["found"]["colour"] == parse_caption(d["caption"])["colour"]
        and d["found"]["shape"] == parse_caption(d["caption"])["shape"]) / len(details)
    acc["all"] = all_ok / len(details)
    return {"accuracy": acc, "n": len(details), "n_position": totals["position"], "details": details}


def load_images(folder: str) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    with open(os.path.join(folder, "captions.txt")) as f:
        captions = [line.strip() for line in f if line.strip()]
    images = np.stack([np.asarray(Image.open(os.path.join(folder, f"{i:04d}.png")).convert("RGB"))
                       for i in range(len(captions))])
    return images, captions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ground-truth", action="store_true", help="score the dataset's own renders")
    src.add_argument("--model", help="diffusers-layout folder to sample from (tools/train_bundled_model.py)")
    src.add_argument("--images", help="folder with NNNN.png and captions.txt")
    ap.add_argument("--seed", type=int, default=2026, help="dataset seed of the prompts (training used 1000)")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--noise-seed", type=int, default=0, help="prompt i uses noise seed noise_seed + i")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-images", help="also write the generated images (NNNN.png + captions.txt) here")
    ap.add_argument("--grid", help="write the first 32 images as a grid PNG here")
    ap.add_argument("--json", help="write scores and per-image findings here")
    args = ap.parse_args()

    extra = {}
    if args.images:
        images, captions = load_images(args.images)
    else:
        samples = ds.make_samples(args.seed, args.count)
        captions = [s.caption for s in samples]
        if args.ground_truth:
            images = np.stack([ds.render(s) for s in samples])
        else:
            import torch

            import train_bundled_model as tbm

            torch.set_num_threads(args.threads)
            parts = tbm.load_folder(args.model)
            t0 = time.time()
            images = tbm.generate(parts, captions, steps=args.steps, guidance=args.guidance, seed=args.noise_seed)
            extra = {"generation_seconds": round(time.time() - t0, 1), "steps": args.steps,
                     "guidance": args.guidance, "noise_seed": args.noise_seed}
            print(f"generated {len(captions)} images in {extra['generation_seconds']}s", flush=True)
    if args.save_images:
        from PIL import Image

        os.makedirs(args.save_images, exist_ok=True)
        for i, im in enumerate(images):
            Image.fromarray(im).save(os.path.join(args.save_images, f"{i:04d}.png"))
        with open(os.path.join(args.save_images, "captions.txt"), "w") as f:
            f.writelines(c + "\n" for c in captions)
    if args.grid:
        import train_bundled_model as tbm

        tbm.save_grid(images[:32], args.grid)
    result = score(images, captions)
    result.update(extra)
    acc = result["accuracy"]
    print(f"n={result['n']} (position: {result['n_position']})  "
          + "  ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
