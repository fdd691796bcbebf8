"""Web-like alt texts for synthetic scenes: clean English captions, uninformative ones, and non-English ones.

Clean captions use the scene vocabulary exactly (colour names of `scenes.COLOURS`, shape names and plurals
"stars"/"crosses", counts as words or digits, "small"/"large"/"big", "on the left" ... "in the center",
"on a gray background", "the number 7", "the letter K") so a small CLIP can learn them, wrapped in the noise
real alt texts carry (prefixes, "stock photo", site names, odd capitalisation). Like real alt texts, not every
caption mentions every attribute, but colour and shape (or the glyph) are almost always there.
"""

from __future__ import annotations

import random

from synthweb.scenes import SceneSpec

COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                    "center": "in the center"}
PREFIXES = ("", "", "", "photo of ", "image of ", "picture of ", "illustration of ", "clipart: ", "a drawing of ",
            "icon of ")
SUFFIXES = ("", "", "", "", " - stock photo", " | free download", " vector illustration", " royalty free",
            " hd wallpaper", " clip art", " png", " stock image")


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")  # stars, crosses


def _count_phrase(count: int, rng: random.Random) -> str:
    if count == 1:
        return rng.choice(("a", "a", "one", "1"))
    return rng.choice((COUNT_WORDS[count], COUNT_WORDS[count], str(count)))


def _capitalise(text: str, rng: random.Random) -> str:
    # Never lower-case: glyph letters are upper case and must stay so.
    style = rng.random()
    if style < 0.45:
        return text
    if style < 0.85:
        return text[:1].upper() + text[1:]
    if style < 0.97:
        return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))
    return text.upper()


def _objects_core(spec: SceneSpec, rng: random.Random) -> str:
    words = [_count_phrase(spec.count, rng)]
    if spec.count == 1 and rng.random() < 0.5:
        words.append("big" if spec.size == "large" and rng.random() < 0.3 else spec.size)
    if rng.random() < 0.96:  # colour is nearly always there: it is what the model should learn
        words.append(spec.colour)
    if spec.style == "outline" and rng.random() < 0.7:
        words.append("outlined")
    words.append(spec.shape if spec.count == 1 else plural(spec.shape))
    if words[0] == "a" and words[1][:1] in "aeiou":
        words[0] = "an"
    if spec.count == 1 and rng.random() < 0.5:
        words.append(POSITION_PHRASES[spec.position])
    if rng.random() < 0.4:
        words.append(f"on a {spec.background} background")
    return " ".join(words)


def _glyph_core(spec: SceneSpec, rng: random.Random) -> str:
    noun = "number" if spec.glyph.isdigit() else "letter"
    size = ("big" if spec.size == "large" and rng.random() < 0.4 else spec.size) if rng.random() < 0.4 else ""
    form = rng.random()
    if form < 0.35:
        core = f"the {noun} {spec.glyph}"
        if rng.random() < 0.75:
            core += f" in {spec.colour}"
    elif form < 0.8:
        article = "an" if (size or spec.colour)[:1] in "aeiou" else "a"
        core = " ".join(w for w in (article, size, spec.colour, spec.glyph) if w)
    else:
        core = " ".join(w for w in (size, spec.colour, noun, spec.glyph) if w)
    if rng.random() < 0.35:
        core += f" on a {spec.background} background"
    return core


def clean_caption(spec: SceneSpec, rng: random.Random, site: str = "") -> str:
    """An English alt text describing `spec`, with web-style noise; `site` may appear as a suffix."""
    core = _glyph_core(spec, rng) if spec.kind == "glyph" else _objects_core(spec, rng)
    suffix = rng.choice(SUFFIXES)
    if site and rng.random() < 0.08:
        suffix = f" | {site}"
    return _capitalise(rng.choice(PREFIXES) + core + suffix, rng)


def uninformative_caption(rng: random.Random) -> str:
    """An alt text that says nothing about the image, as file names and UI labels do."""
    n = rng.randint(1, 9999)
    return rng.choice((
        f"IMG_{n:04d}.JPG", f"DSC{rng.randint(0, 99999):05d}.jpg", "click here", "image", "thumbnail", "photo",
        "untitled", "banner", "logo", "spacer", f"picture {rng.randint(1, 30)}", f"image{n:03d}.png",
        f"Screenshot 2021-0{rng.randint(1, 9)}-{rng.randint(10, 28)} at 10.{rng.randint(10, 59)}.31",
        "view larger", "download", "-", "img", "read more",
    ))


# Non-English vocabularies: (word, grammatical gender) for shapes; colours inflect per language below.
_FR_SHAPES = {"circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m"),
              "star": ("étoile", "f"), "cross": ("croix", "f"), "diamond": ("losange", "m")}
_FR_COLOURS = {"red": ("rouge", "rouge"), "green": ("vert", "verte"), "blue": ("bleu", "bleue"),
               "yellow": ("jaune", "jaune"), "purple": ("violet", "violette"), "orange": ("orange", "orange"),
               "white": ("blanc", "blanche"), "black": ("noir", "noire")}
_FR_BG = {"gray": "gris", "beige": "beige", "light blue": "bleu clair", "dark": "sombre"}
_DE_SHAPES = {"circle": ("Kreis", "Kreise", "m"), "square": ("Quadrat", "Quadrate", "n"),
              "triangle": ("Dreieck", "Dreiecke", "n"), "star": ("Stern", "Sterne", "m"),
              "cross": ("Kreuz", "Kreuze", "n"), "diamond": ("Raute", "Rauten", "f")}
_DE_COLOURS = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "purple": "lila",
               "orange": "orange", "white": "weiß", "black": "schwarz"}
_DE_BG = {"gray": "grauem", "beige": "beigem", "light blue": "hellblauem", "dark": "dunklem"}
_ES_SHAPES = {"circle": ("círculo", "círculos", "m"), "square": ("cuadrado", "cuadrados", "m"),
              "triangle": ("triángulo", "triángulos", "m"), "star": ("estrella", "estrellas", "f"),
              "cross": ("cruz", "cruces", "f"), "diamond": ("rombo", "rombos", "m")}
_ES_COLOURS = {"red": "rojo", "green": "verde", "blue": "azul", "yellow": "amarillo", "purple": "morado",
               "orange": "naranja", "white": "blanco", "black": "negro"}
_ES_BG = {"gray": "gris", "beige": "beige", "light blue": "azul claro", "dark": "oscuro"}
_COUNTS = {"fr": {2: "deux", 3: "trois", 4: "quatre"}, "de": {2: "zwei", 3: "drei", 4: "vier"},
           "es": {2: "dos", 3: "tres", 4: "cuatro"}}


def _french(spec: SceneSpec, rng: random.Random) -> str:
    if spec.kind == "glyph":
        core = f"le chiffre {spec.glyph}" if spec.glyph.isdigit() else f"la lettre {spec.glyph}"
        core += f" en {_FR_COLOURS[spec.colour][0]}"
    else:
        noun, gender = _FR_SHAPES[spec.shape]
        colour = _FR_COLOURS[spec.colour][0 if gender == "m" else 1]
        if spec.count == 1:
            core = f"{'un' if gender == 'm' else 'une'} {noun} {colour}"
        else:
            pl = lambda w: w if w.endswith(("s", "x")) or w == "orange" else w + "s"  # noqa: E731
            core = f"{_COUNTS['fr'][spec.count]} {pl(noun)} {pl(colour)}"
    prefix = rng.choice(("photo ", "image ", "illustration : ", ""))
    if prefix in ("photo ", "image "):  # "photo d'un cercle", "image de deux croix", "photo du chiffre 7"
        prefix += "d'" if core.startswith("un") else "de "
        if core.startswith("le "):
            prefix, core = prefix[:-3] + "du ", core[3:]
    return prefix + core + f" sur fond {_FR_BG.get(spec.background, spec.background)}"


def _german(spec: SceneSpec, rng: random.Random) -> str:
    colour = _DE_COLOURS[spec.colour]
    if spec.kind == "glyph":
        core = (f"die Zahl {spec.glyph}" if spec.glyph.isdigit() else f"der Buchstabe {spec.glyph}") + f" in {colour}"
    else:
        sing, plur, gender = _DE_SHAPES[spec.shape]
        invariant = colour in ("lila", "orange")
        if spec.count == 1:
            article = {"m": "ein", "n": "ein", "f": "eine"}[gender]
            ending = "" if invariant else {"m": "er", "n": "es", "f": "e"}[gender]
            core = f"{article} {colour}{ending} {sing}"
        else:
            core = f"{_COUNTS['de'][spec.count]} {colour}{'' if invariant else 'e'} {plur}"
    return rng.choice(("Bild: ", "Foto: ", "Grafik: ", "")) + core + \
        f" auf {_DE_BG.get(spec.background, spec.background)} Hintergrund"


def _spanish(spec: SceneSpec, rng: random.Random) -> str:
    colour = _ES_COLOURS[spec.colour]
    if spec.kind == "glyph":
        core = (f"el número {spec.glyph}" if spec.glyph.isdigit() else f"la letra {spec.glyph}") + f" en {colour}"
    else:
        sing, plur, gender = _ES_SHAPES[spec.shape]
        if gender == "f" and colour.endswith("o"):
            colour = colour[:-1] + "a"
        if spec.count == 1:
            core = f"{'un' if gender == 'm' else 'una'} {sing} {colour}"
        else:
            cpl = colour + ("es" if colour[-1] in "lz" or colour == "gris" else "s")
            core = f"{_COUNTS['es'][spec.count]} {plur} {cpl}"
    prefix = rng.choice(("foto de ", "imagen de ", "ilustración de ", ""))
    if prefix and core.startswith("el "):  # "foto del número 7"
        prefix, core = prefix[:-3] + "del ", core[3:]
    return prefix + core + \
        f" sobre fondo {_ES_BG.get(spec.background, spec.background)}"


def non_english_caption(spec: SceneSpec, rng: random.Random) -> tuple[str, str]:
    """(language code, caption): a French, German or Spanish description of `spec`."""
    lang = rng.choice(("fr", "de", "es"))
    text = {"fr": _french, "de": _german, "es": _spanish}[lang](spec, rng)
    return lang, text[:1].upper() + text[1:]
