"""Procedural scenes: shapes, colours, counts, sizes, positions, textures and rendered glyphs.

The vocabulary here is the world the synthetic web describes in alt text and the procedural evaluation suite
asks about. Scenes are deterministic given (spec, seed). Some colour/shape combinations are held out of the
web corpus (`HELD_OUT_COMBOS`) and some backgrounds are used only by evaluation (`EVAL_BACKGROUNDS`), so the
evaluation can test generalisation rather than memorisation.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (240, 215, 30),
    "purple": (148, 60, 189),
    "orange": (255, 127, 14),
    "white": (248, 248, 248),
    "black": (15, 15, 15),
}
# Plain backgrounds of the web corpus.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "beige": (225, 210, 180),
    "light blue": (170, 205, 235),
    "dark": (50, 50, 60),
}
# Backgrounds never seen in the corpus: a distribution shift for evaluation.
EVAL_BACKGROUNDS = ("noise", "stripes", "gradient")
POSITIONS = ("left", "right", "top", "bottom", "center")
SIZES = ("small", "large")
COUNTS = (1, 2, 3, 4)
DIGITS = tuple("0123456789")
LETTERS = tuple("ABCDEFGHJKLMNPRSTUVWXYZ")
STYLES = ("solid", "outline")
# (colour, shape) pairs that never appear in the web corpus; one per shape and one per colour in 6 of them.
HELD_OUT_COMBOS = frozenset(
    {("red", "triangle"), ("blue", "star"), ("green", "square"), ("yellow", "circle"), ("purple", "cross"),
     ("orange", "diamond")}
)


@dataclass(frozen=True)
class SceneSpec:
    kind: str = "objects"  # "objects" or "glyph"
    shape: str = "circle"
    colour: str = "red"
    count: int = 1
    size: str = "large"
    position: str = "center"  # meaningful when count == 1
    background: str = "gray"  # a BACKGROUNDS name or an EVAL_BACKGROUNDS name
    style: str = "solid"  # solid or outline (outline ~ a sketch-style shift)
    glyph: str = ""  # for kind == "glyph": one digit or letter

    def is_held_out(self) -> bool:
        return self.kind == "objects" and (self.colour, self.shape) in HELD_OUT_COMBOS


def sample_spec(rng: random.Random, allow_held_out: bool = False, glyph_fraction: float = 0.25) -> SceneSpec:
    """Draw a corpus scene. Held-out combinations and evaluation backgrounds are never drawn unless asked."""
    background = rng.choice(list(BACKGROUNDS))
    if rng.random() < glyph_fraction:
        glyph = rng.choice(DIGITS + LETTERS)
        colour = _contrasting_colour(rng, background)
        return SceneSpec(kind="glyph", glyph=glyph, colour=colour, background=background,
                         size=rng.choice(SIZES), position="center")
    while True:
        shape, colour = rng.choice(SHAPES), _contrasting_colour(rng, background)
        if allow_held_out or (colour, shape) not in HELD_OUT_COMBOS:
            break
    count = rng.choices(COUNTS, weights=(6, 2, 1, 1))[0]
    return SceneSpec(
        kind="objects", shape=shape, colour=colour, count=count,
        size=rng.choice(SIZES) if count == 1 else "small",
        position=rng.choice(POSITIONS) if count == 1 else "center",
        background=background, style="solid",
    )


# Colours too close to a background to be seen on it; never drawn there.
INVISIBLE: dict[str, frozenset[str]] = {
    "beige": frozenset({"white", "yellow"}), "light blue": frozenset({"white"}), "dark": frozenset({"black"}),
    "gray": frozenset(),
}


def visible_colours(background: str) -> list[str]:
    return [c for c in COLOURS if c not in INVISIBLE.get(background, frozenset())]


def _contrasting_colour(rng: random.Random, background: str) -> str:
    return rng.choice(visible_colours(background))


def _noise(size: tuple[int, int], sigma: float, rng: random.Random) -> Image.Image:
    # Seeded from the scene's rng: Pillow's effect_noise uses an unseeded C generator, which would break
    # "same spec and seed, same pixels".
    gen = np.random.default_rng(rng.getrandbits(64))
    arr = np.clip(gen.normal(128.0, sigma, size=(size[1], size[0], 1)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(arr, 3, axis=2), "RGB")


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 18) -> tuple[int, int, int]:
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in rgb)  # type: ignore[return-value]


def _background(spec: SceneSpec, w: int, h: int, rng: random.Random) -> Image.Image:
    if spec.background in BACKGROUNDS:
        return Image.new("RGB", (w, h), _jitter(BACKGROUNDS[spec.background], rng, 10))
    if spec.background == "noise":
        img = _noise((w, h), 60, rng)
        return Image.blend(img, Image.new("RGB", (w, h), (120, 120, 120)), 0.3)
    if spec.background == "stripes":
        img = Image.new("RGB", (w, h), (200, 200, 200))
        d = ImageDraw.Draw(img)
        step = max(4, w // 12)
        for x in range(-h, w, step * 2):
            d.polygon([(x, 0), (x + step, 0), (x + step + h, h), (x + h, h)], fill=(90, 90, 90))
        return img
    if spec.background == "gradient":
        img = Image.linear_gradient("L").resize((w, h)).convert("RGB")
        return img
    raise ValueError(f"unknown background {spec.background!r}")


def _shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":  # corners at 45 degrees from the rotation angle
        return [(cx + r * 1.13 * math.cos(angle + math.pi / 4 + k * math.pi / 2),
                 cy + r * 1.13 * math.sin(angle + math.pi / 4 + k * math.pi / 2)) for k in range(4)]
    if shape == "triangle":  # apex up, then rotated
        return [(cx + r * 1.1 * math.cos(angle - math.pi / 2 + k * 2 * math.pi / 3),
                 cy + r * 1.1 * math.sin(angle - math.pi / 2 + k * 2 * math.pi / 3)) for k in range(3)]
    if shape == "diamond":
        return [(cx, cy - r * 1.15), (cx + r * 0.75, cy), (cx, cy + r * 1.15), (cx - r * 0.75, cy)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.cos(angle - math.pi / 2 + k * math.pi / 5),
                 cy + (r if k % 2 == 0 else r * 0.45) * math.sin(angle - math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    if shape == "cross":
        t = r * 0.35
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)]
        ca, sa = math.cos(angle), math.sin(angle)
        return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}")


def _draw_shape(d: ImageDraw.ImageDraw, spec: SceneSpec, cx: float, cy: float, r: float, rgb, rng: random.Random,
                outline_width: int) -> None:
    if spec.shape == "circle":
        box = [cx - r, cy - r, cx + r, cy + r]
        if spec.style == "outline":
            d.ellipse(box, outline=rgb, width=outline_width)
        else:
            d.ellipse(box, fill=rgb)
        return
    pts = _shape_points(spec.shape, cx, cy, r, rng.uniform(-0.25, 0.25))
    if spec.style == "outline":
        d.line(pts + [pts[0]], fill=rgb, width=outline_width, joint="curve")
    else:
        d.polygon(pts, fill=rgb)


_FONT_CACHE: dict[int, ImageFont.FreeTypeFont] = {}


def _font(px: int) -> ImageFont.FreeTypeFont:
    if px not in _FONT_CACHE:
        _FONT_CACHE[px] = ImageFont.load_default(size=px)  # Pillow's bundled font: nothing downloaded
    return _FONT_CACHE[px]


def _centre_for(position: str, w: int, h: int, r: float, rng: random.Random) -> tuple[float, float]:
    m = r + 2
    third_w, third_h = w / 3.0, h / 3.0
    regions = {
        "left": (m, third_w, third_h, 2 * third_h),
        "right": (w - third_w, w - m, third_h, 2 * third_h),
        "top": (third_w, 2 * third_w, m, third_h),
        "bottom": (third_w, 2 * third_w, h - third_h, h - m),
        "center": (w * 0.42, w * 0.58, h * 0.42, h * 0.58),
    }
    x0, x1, y0, y1 = regions[position]
    return rng.uniform(min(x0, x1), max(x0, x1)), rng.uniform(min(y0, y1), max(y0, y1))


def render(spec: SceneSpec, size: tuple[int, int] = (96, 96), seed: int = 0) -> Image.Image:
    """Render `spec` at `size` (w, h). Same spec and seed, same pixels."""
    rng = random.Random(seed)
    w, h = size
    img = _background(spec, w, h, rng)
    d = ImageDraw.Draw(img)
    rgb = _jitter(COLOURS[spec.colour], rng)
    short = min(w, h)
    outline_width = max(2, short // 24)
    if spec.kind == "glyph":
        px = int(short * (0.75 if spec.size == "large" else 0.45))
        font = _font(px)
        left, top, right, bottom = d.textbbox((0, 0), spec.glyph, font=font)
        gw, gh = right - left, bottom - top
        x = (w - gw) / 2 - left + rng.uniform(-w * 0.08, w * 0.08)
        y = (h - gh) / 2 - top + rng.uniform(-h * 0.08, h * 0.08)
        d.text((x, y), spec.glyph, fill=rgb, font=font)
        return img
    if spec.kind != "objects":
        raise ValueError(f"unknown scene kind {spec.kind!r}")
    r = short * (0.30 if spec.size == "large" else 0.13) * rng.uniform(0.9, 1.1)
    if spec.count == 1:
        cx, cy = _centre_for(spec.position, w, h, r, rng)
        _draw_shape(d, spec, cx, cy, r, rgb, rng, outline_width)
        return img
    # Several copies: place them on a jittered grid so they never overlap (counts stay countable).
    cells = [(i, j) for i in range(3) for j in range(3)]
    rng.shuffle(cells)
    r = min(r, short / 7.5)
    for i, j in cells[: spec.count]:
        cx = (i + 0.5) * w / 3 + rng.uniform(-w / 12, w / 12)
        cy = (j + 0.5) * h / 3 + rng.uniform(-h / 12, h / 12)
        _draw_shape(d, spec, cx, cy, r, rgb, rng, outline_width)
    return img


def degrade(img: Image.Image, kind: str, seed: int = 0) -> Image.Image:
    """Distribution-shift transforms for robustness variants: blur, noise, rotate."""
    rng = random.Random(seed)
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=max(1.0, img.width / 64)))
    if kind == "noise":
        noise = _noise(img.size, 80, rng)
        return Image.blend(img, noise, 0.35)
    if kind == "rotate":
        return img.rotate(rng.choice((90, 180, 270)))
    raise ValueError(f"unknown degradation {kind!r}")


def with_background(spec: SceneSpec, background: str) -> SceneSpec:
    return replace(spec, background=background)
