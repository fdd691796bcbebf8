"""The corpus plan: every page and every <img> on it, decided up front from one seeded random stream.

Planning is cheap and sequential (so the result depends on the seed alone); rendering the bytes happens
afterwards from the plan (`synthweb.images`). Each <img> gets at most one image-level fault and at most one
alt-level fault (see `synthweb.config.IMAGE_FAULTS` / `ALT_FAULTS`); duplicates always copy a clean image.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from synthweb import alt_text, probes
from synthweb.config import ALT_FAULTS, IMAGE_FAULTS, WebConfig
from synthweb.scenes import SceneSpec, sample_spec

# A 1x1 transparent GIF: the spacer real pages inline as a data: URI.
SPACER_GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
SITE_THEMES = ("Shapes gallery", "Free clip art", "Learning colours", "Alphabet posters", "Icon pack",
               "Stock images", "Kids worksheets", "Wallpapers", "Geometry for beginners", "Sign shop")


@dataclass
class ImageEntry:
    """One <img> tag and what its URL serves. `truth()` is its row in truth.jsonl."""

    url: str
    """Absolute URL the tag resolves to (or the data: URI itself)."""
    src: str
    """The src attribute as written in the HTML (absolute, relative or data:)."""
    page_url: str
    alt: str | None
    """The alt attribute; None when the tag has none."""
    planted: list[str] = field(default_factory=list)
    dup_of: str | None = None
    spec: SceneSpec | None = None
    """The scene the alt was written for (and the served image shows, if one is served)."""
    width: int | None = None
    height: int | None = None
    alt_lang: str = "en"
    path: str = ""
    """URL path the server answers for (empty for data: URIs)."""
    file: str = ""
    """File under files/ whose bytes are served (shared by exact duplicates; empty when nothing is served)."""
    render_seed: int = 0
    variant: dict = field(default_factory=dict)
    """How to build the bytes: {"kind": "clean"|"near_dup"|..., plus its parameters}."""
    form: str | None = None
    """How an ssrf or robots_disallowed fault is planted (synthweb.probes: "decimal", "redirect_localhost"...)."""
    redirect: dict | None = None
    """{"location": absolute URL, "path": the path that serves the bytes} when `path` answers 302."""
    never_requested: list[str] = field(default_factory=list)
    """Paths of this server a compliant downloader never requests for this image (SSRF, robots.txt)."""
    ssrf_target: str | None = None
    """"loopback" or "link_local" for ssrf faults: link_local URLs must never be fetched unguarded."""

    def truth(self) -> dict:
        return {"url": self.url, "page_url": self.page_url, "src": self.src, "alt": self.alt,
                "alt_lang": self.alt_lang, "planted": self.planted, "dup_of": self.dup_of,
                "spec": asdict(self.spec) if self.spec is not None else None,
                "width": self.width, "height": self.height, "form": self.form,
                "never_requested": self.never_requested, "ssrf_target": self.ssrf_target}


@dataclass
class Page:
    url: str
    path: str
    site: int
    title: str
    images: list[ImageEntry]
    text: list[str]
    next_href: str


_WORDS = ("simple", "bright", "shapes", "colours", "download", "free", "collection", "poster", "printable",
          "design", "classroom", "pattern", "graphic", "bold", "flat", "minimal", "modern", "set", "icons",
          "letters", "numbers", "high", "quality", "images", "for", "your", "project", "and", "with", "the")


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 14))]
    return " ".join(words).capitalize() + "."


def _pick(rng: random.Random, cfg: WebConfig, names: tuple[str, ...]) -> str:
    u, acc = rng.random(), 0.0
    for name in names:
        acc += getattr(cfg, name)
        if u < acc:
            return name
    return ""


def _size(rng: random.Random, cfg: WebConfig) -> tuple[int, int]:
    s = rng.randint(cfg.min_size, cfg.max_size)
    if rng.random() < cfg.landscape_fraction:
        return (s, s * 3 // 4) if rng.random() < 0.7 else (s * 3 // 4, s)
    return s, s


def _alt(entry: ImageEntry, rng: random.Random, cfg: WebConfig, site_name: str) -> None:
    kind = _pick(rng, cfg, ALT_FAULTS)
    spec = entry.spec or sample_spec(rng, glyph_fraction=cfg.glyph_fraction)  # non-images still claim a scene
    if kind == "uninformative_alt":
        entry.alt = alt_text.uninformative_caption(rng)
    elif kind == "non_english_alt":
        entry.alt_lang, entry.alt = alt_text.non_english_caption(spec, rng)
    elif kind == "no_alt":
        entry.alt = None
    else:
        entry.alt = alt_text.clean_caption(spec, rng, site_name)
    if kind:
        entry.planted.append(kind)


def plan_corpus(cfg: WebConfig) -> list[Page]:
    """Every page and <img> of the corpus; a pure function of the config."""
    rng = random.Random(f"synthweb:{cfg.seed}")
    base = cfg.base_url()
    total_slots = cfg.pages * cfg.images_per_page
    bombs = set(rng.sample(range(total_slots), min(cfg.decompression_bomb, total_slots)))
    originals: list[ImageEntry] = []  # clean, served images that duplicates may copy
    pages: list[Page] = []
    slot = counter = 0
    for p in range(cfg.pages):
        site, page_no = p % cfg.sites, p // cfg.sites
        site_dir = f"site-{site:02d}"
        page_path = f"/{site_dir}/page-{page_no:05d}.html"
        page_url = base + page_path
        images: list[ImageEntry] = []
        for _ in range(cfg.images_per_page):
            slot += 1
            if slot - 1 not in bombs and rng.random() < cfg.data_uri:
                alt = rng.choice(("", "spacer", None))
                images.append(ImageEntry(url=SPACER_GIF, src=SPACER_GIF, page_url=page_url, alt=alt,
                                         planted=["data_uri"], width=1, height=1))
                continue
            is_bomb = slot - 1 in bombs
            name = f"img-{counter:05d}.{'png' if is_bomb else 'jpg'}"
            counter += 1
            path = f"/{site_dir}/img/{name}"
            u = rng.random()
            src = (base + path) if u >= cfg.relative_src else (f"img/{name}" if u < cfg.relative_src / 2 else path)
            e = ImageEntry(url=base + path, src=src, page_url=page_url, alt=None, path=path, file=path.lstrip("/"),
                           render_seed=rng.randrange(2**31))
            fault = "decompression_bomb" if is_bomb else _pick(rng, cfg, IMAGE_FAULTS)
            if fault in ("exact_dup", "near_dup") and not originals:
                fault = ""  # nothing to copy yet
            if fault:
                e.planted.append(fault)
            if fault in ("exact_dup", "near_dup"):
                orig = rng.choice(originals)
                e.dup_of, e.spec = orig.url, orig.spec
                if fault == "exact_dup":
                    e.file, e.width, e.height, e.variant = orig.file, orig.width, orig.height, {"kind": "shared"}
                else:
                    e.variant = _near_dup_variant(rng, cfg, orig)
                    e.width, e.height = e.variant["size"]
            elif fault in ("non_image", "decompression_bomb"):
                e.variant = {"kind": fault}
                if fault == "decompression_bomb":
                    e.width = e.height = cfg.bomb_pixels
            else:
                e.spec = sample_spec(rng, glyph_fraction=cfg.glyph_fraction)
                if fault == "tiny":
                    e.width, e.height = 12, 12
                elif fault == "extreme_aspect":
                    e.width, e.height = (600, 40) if rng.random() < 0.7 else (40, 600)
                else:
                    e.width, e.height = _size(rng, cfg)
                if fault in ("dead_link", "server_error"):
                    e.file, e.width, e.height = "", None, None
                    e.variant = {"kind": fault, "status": 404 if fault == "dead_link" else rng.choice((500, 503))}
                else:
                    e.variant = {"kind": "truncated" if fault == "truncated" else "clean",
                                 "quality": cfg.jpeg_quality}
                    if fault == "noai":
                        e.variant["robots"] = rng.choice(("noai", "noimageai", "noai, noimageai"))
                    elif fault == "ssrf":
                        _plant_ssrf(e, rng, cfg)
                    elif fault == "robots_disallowed":
                        _plant_robots(e, rng, cfg, site_dir, name)
                    if not fault:
                        originals.append(e)
            _alt(e, rng, cfg, site_dir)
            images.append(e)
        title = f"{SITE_THEMES[site % len(SITE_THEMES)]} - page {page_no + 1}"
        text = [_sentence(rng) for _ in range(rng.randint(1, 3))]
        next_href = f"page-{page_no + 1:05d}.html"
        pages.append(Page(url=page_url, path=page_path, site=site, title=title, images=images, text=text,
                          next_href=next_href))
    return pages


def _plant_ssrf(e: ImageEntry, rng: random.Random, cfg: WebConfig) -> None:
    """Make `e` an SSRF probe (see synthweb.probes); its path still serves a real image."""
    e.form = rng.choice(probes.SSRF_FORMS)
    e.ssrf_target = "link_local" if e.form in probes.LINK_LOCAL_FORMS else "loopback"
    if e.form in probes.REDIRECT_FORMS:
        moved = e.path.replace(".jpg", "-moved.jpg")
        e.redirect = {"location": probes.redirect_target(e.form, cfg.host, cfg.port, moved), "path": moved}
        e.file, e.never_requested = moved.lstrip("/"), [moved]
        e.src = e.url  # absolute: it is the allowed server's URL
    else:
        e.url = e.src = probes.ssrf_url(e.form, cfg.host, cfg.port, e.path)
        e.never_requested = [e.path] if e.ssrf_target == "loopback" else []


def _plant_robots(e: ImageEntry, rng: random.Random, cfg: WebConfig, site_dir: str, name: str) -> None:
    """Put `e` under a path robots.txt disallows for web.robots_agent: directly, or behind an allowed 302."""
    e.form = rng.choice(probes.ROBOTS_FORMS)
    private = f"/{site_dir}/{probes.PRIVATE_DIR}/{name}"
    if e.form == "redirect":
        moved = private.replace(".jpg", "-moved.jpg")
        e.redirect = {"location": cfg.base_url() + moved, "path": moved}
        e.file, e.never_requested = moved.lstrip("/"), [moved]
    else:
        e.path, e.file, e.never_requested = private, private.lstrip("/"), [private]
        e.url = cfg.base_url() + private
    e.src = e.url


def _near_dup_variant(rng: random.Random, cfg: WebConfig, orig: ImageEntry) -> dict:
    """A re-encoded, resized or slightly cropped copy of `orig`, rebuilt from its spec and render seed."""
    w, h = orig.width or cfg.min_size, orig.height or cfg.min_size
    how = rng.choice(("requality", "resize", "crop"))
    quality = rng.choice([q for q in (40, 55, 65, 75, 92) if q != cfg.jpeg_quality])
    v = {"kind": "near_dup", "how": how, "orig_size": [w, h], "orig_seed": orig.render_seed, "quality": quality}
    if how == "resize":
        scale = rng.choice((0.75, 0.85, 1.15, 1.25))
        v["size"] = [max(16, round(w * scale)), max(16, round(h * scale))]
    elif how == "crop":
        dx, dy = max(1, round(w * rng.uniform(0.02, 0.06))), max(1, round(h * rng.uniform(0.02, 0.06)))
        v["box"] = [dx, dy, w - dx, h - dy]
        v["size"] = [w - 2 * dx, h - 2 * dy]
    else:
        v["size"] = [w, h]
    return v
