"""Prompt template sets for zero-shot classification; `{c}` marks where the class name goes.

The sets of the datasets the CLIP paper evaluated are the paper's published per-dataset prompts: ImageNet's 80
(shared by every ImageNet variant and ObjectNet), CIFAR's 18, Caltech-101's 34, UCF101's 48, Kinetics-700's 28, ...
Datasets the paper did not evaluate (SVHN, the WILDS and fairness sets, ...) get short sets written here in the
same style. A dataset's own `zeroshot_classification_templates.txt` (CLIP_benchmark's WebDataset mirrors carry
one) replaces these: see evaluation.adapters.
"""

from __future__ import annotations

IMAGENET = (
    "a bad photo of a {c}.", "a photo of many {c}.", "a sculpture of a {c}.", "a photo of the hard to see {c}.",
    "a low resolution photo of the {c}.", "a rendering of a {c}.", "graffiti of a {c}.", "a bad photo of the {c}.",
    "a cropped photo of the {c}.", "a tattoo of a {c}.", "the embroidered {c}.", "a photo of a hard to see {c}.",
    "a bright photo of a {c}.", "a photo of a clean {c}.", "a photo of a dirty {c}.", "a dark photo of the {c}.",
    "a drawing of a {c}.", "a photo of my {c}.", "the plastic {c}.", "a photo of the cool {c}.",
    "a close-up photo of a {c}.", "a black and white photo of the {c}.", "a painting of the {c}.",
    "a painting of a {c}.", "a pixelated photo of the {c}.", "a sculpture of the {c}.", "a bright photo of the {c}.",
    "a cropped photo of a {c}.", "a plastic {c}.", "a photo of the dirty {c}.", "a jpeg corrupted photo of a {c}.",
    "a blurry photo of the {c}.", "a photo of the {c}.", "a good photo of the {c}.", "a rendering of the {c}.",
    "a {c} in a video game.", "a photo of one {c}.", "a doodle of a {c}.", "a close-up photo of the {c}.",
    "a photo of a {c}.", "the origami {c}.", "the {c} in a video game.", "a sketch of a {c}.", "a doodle of the {c}.",
    "a origami {c}.", "a low resolution photo of a {c}.", "the toy {c}.", "a rendition of the {c}.",
    "a photo of the clean {c}.", "a photo of a large {c}.", "a rendition of a {c}.", "a photo of a nice {c}.",
    "a photo of a weird {c}.", "a blurry photo of a {c}.", "a cartoon {c}.", "art of a {c}.", "a sketch of the {c}.",
    "a embroidered {c}.", "a pixelated photo of a {c}.", "itap of the {c}.", "a jpeg corrupted photo of the {c}.",
    "a good photo of a {c}.", "a plushie {c}.", "a photo of the nice {c}.", "a photo of the small {c}.",
    "a photo of the weird {c}.", "the cartoon {c}.", "art of the {c}.", "a drawing of the {c}.",
    "a photo of the large {c}.", "a black and white photo of a {c}.", "the plushie {c}.", "a dark photo of a {c}.",
    "itap of a {c}.", "graffiti of the {c}.", "a toy {c}.", "itap of my {c}.", "a photo of a cool {c}.",
    "a photo of a small {c}.", "a tattoo of the {c}.",
)

CIFAR = (
    "a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.",
    "a low contrast photo of a {c}.", "a high contrast photo of a {c}.", "a bad photo of a {c}.",
    "a good photo of a {c}.", "a photo of a small {c}.", "a photo of a big {c}.",
    "a photo of the {c}.", "a blurry photo of the {c}.", "a black and white photo of the {c}.",
    "a low contrast photo of the {c}.", "a high contrast photo of the {c}.", "a bad photo of the {c}.",
    "a good photo of the {c}.", "a photo of the small {c}.", "a photo of the big {c}.",
)

CALTECH = (
    "a photo of a {c}.", "a painting of a {c}.", "a plastic {c}.", "a sculpture of a {c}.", "a sketch of a {c}.",
    "a tattoo of a {c}.", "a toy {c}.", "a rendition of a {c}.", "a embroidered {c}.", "a cartoon {c}.",
    "a {c} in a video game.", "a plushie {c}.", "a origami {c}.", "art of a {c}.", "graffiti of a {c}.",
    "a drawing of a {c}.", "a doodle of a {c}.", "a photo of the {c}.", "a painting of the {c}.", "the plastic {c}.",
    "a sculpture of the {c}.", "a sketch of the {c}.", "a tattoo of the {c}.", "the toy {c}.",
    "a rendition of the {c}.", "the embroidered {c}.", "the cartoon {c}.", "the {c} in a video game.",
    "the plushie {c}.", "the origami {c}.", "art of the {c}.", "graffiti of the {c}.", "a drawing of the {c}.",
    "a doodle of the {c}.",
)

_ACTION_VERBS = ("", "using ", "doing ", "during ", "performing ", "practicing ")
UCF101 = tuple(f"{kind} {art} person {verb}{{c}}."
               for verb in _ACTION_VERBS for kind in ("a photo of", "a video of", "a example of", "a demonstration of")
               for art in ("a", "the"))
KINETICS = tuple(t for kind in ("a photo of", "a video of", "a example of", "a demonstration of")
                 for t in (f"{kind} {{c}}.", *(f"{kind} a person {verb}{{c}}." for verb in _ACTION_VERBS)))

CARS = ("a photo of a {c}.", "a photo of the {c}.", "a photo of my {c}.", "i love my {c}!", "a photo of my dirty {c}.",
        "a photo of my clean {c}.", "a photo of my new {c}.", "a photo of my old {c}.")
DTD = tuple(f"a photo of {art} {{c}} {thing}." for art in ("a", "the")
            for thing in ("texture", "pattern", "thing", "object"))
FER2013 = ("a photo of a {c} looking face.", "a photo of a face showing the emotion: {c}.",
           "a photo of a face looking {c}.", "a face that looks {c}.", "they look {c}.", "look at how {c} they are.")
COUNTRY211 = ("a photo i took in {c}.", "a photo i took while visiting {c}.", "a photo from my home country of {c}.",
              "a photo from my visit to {c}.", "a photo showing the country of {c}.")
RESISC45 = tuple(f"{src} {kind} of {art}{{c}}." for art in ("", "a ", "the ")
                 for src, kind in (("satellite", "imagery"), ("aerial", "imagery"), ("satellite", "photo"),
                                   ("aerial", "photo"), ("satellite", "view"), ("aerial", "view")))
EUROSAT = ("a centered satellite photo of {c}.", "a centered satellite photo of a {c}.",
           "a centered satellite photo of the {c}.")
GTSRB = ('a zoomed in photo of a "{c}" traffic sign.', 'a centered photo of a "{c}" traffic sign.',
         'a close up photo of a "{c}" traffic sign.')
SUN397 = ("a photo of a {c}.", "a photo of the {c}.")
STL10 = ("a photo of a {c}.", "a photo of the {c}.")
AIRCRAFT = ("a photo of a {c}, a type of aircraft.", "a photo of the {c}, a type of aircraft.")
FOOD = ("a photo of {c}, a type of food.",)
PETS = ("a photo of a {c}, a type of pet.",)
FLOWERS = ("a photo of a {c}, a type of flower.",)
BIRDS = ("a photo of a {c}, a type of bird.",)
MNIST = ('a photo of the number: "{c}".',)
VOC = ("a photo of a {c}.",)
PCAM = ("this is a photo of {c}",)
RENDERED_SST2 = ("a {c} review of a movie.",)
HATEFUL_MEMES = ("a {c}.",)
CLEVR_COUNT = ("a photo of {c} objects.",)
WHOLE_SENTENCE = ("{c}",)
"""For datasets whose class names are whole captions (KITTI distance, CLEVR distance as written in classnames)."""

# Written here (not in the CLIP paper).
SVHN = ('a photo of the number: "{c}".', "a street sign showing the house number {c}.",
        "a photo of the digit {c} on a house.", "the number {c} in the center of a photo.")
CLEVR_DISTANCE = ("a photo of objects where the closest one is {c}.", "{c} shapes.")
CAMELYON = ("a histopathology slide showing {c}.", "a microscope image of {c} tissue.")
IWILDCAM = ("a camera trap photo of a {c}.", "a photo of a {c} in the wild.", "a night photo of a {c} in the wild.")
FMOW = ("satellite imagery of a {c}.", "aerial imagery of a {c}.", "satellite photo of a {c}.",
        "a satellite view of the {c}.")
HOUSEHOLD = ("a photo of a {c}.", "a photo of the {c}.", "a photo of a {c} at home.", "a photo of my {c}.")
"""Dollar Street and GeoDE: everyday objects photographed in homes and places around the world."""
ASSOCIATION = ("{c}",)
"""WinoGAViL: the cue is the whole prompt (evaluation.external adds its article as DataComp does)."""
