"""The external evaluation datasets: the DataComp 38-task suite and the CLIP paper's zero-shot datasets.

One `DatasetSpec` per dataset, keyed by its CLIP_benchmark name where CLIP_benchmark has one (`cifar10`,
`imagenet1k`, `mscoco_captions`, `flickr30k`, `fgvc_aircraft`, ...; `datacomp` gives DataComp's task key, e.g.
`vtab/caltech101`). Nothing here downloads: each dataset is read from a layout a user has in storage
(evaluation.adapters) and scored by evaluation.external.

Main metrics follow DataComp's tasklist: top-1 accuracy by default; mean per-class recall for Caltech-101, FGVC
Aircraft, Flowers-102 and Oxford-IIIT Pet; mean R@1 (of image->text and text->image) for retrieval; worst-region
top-1 for FMoW and GeoDE, worst-income-group top-5 for Dollar Street; macro F1 for iWildCam; Jaccard index on
the 10-12 candidate instances for WinoGAViL. The CLIP-paper-only datasets use the paper's metrics: mean of top-1
and top-5 for Kinetics-700, ROC AUC for Hateful Memes.

Class names: `classnames` inline (evaluation.classnames) where the list is small and standard; otherwise
(`classnames is None`) the layout must carry `classnames.txt`, one name per line in label order; `classnames_doc`
says what that file holds. A layout's classnames.txt and zeroshot_classification_templates.txt replace the inline
names and the templates here (as CLIP_benchmark does for its WebDataset mirrors).

Worst-group metrics need a group per sample (`group_by` says which: region, income group): see the layouts in
evaluation.adapters (`<key>.json` {"group": ...} in WebDataset shards, groups.csv in the folder layout).
"""

from __future__ import annotations

from dataclasses import dataclass

from evaluation import classnames as cn
from evaluation import templates as tp

CLASSIFICATION, RETRIEVAL, ASSOCIATION = "zeroshot_classification", "retrieval", "association"
TASKS = (CLASSIFICATION, RETRIEVAL, ASSOCIATION)

# Metric name -> task it belongs to. evaluation.external computes each; the row names are these.
CLASSIFICATION_METRICS = ("top1", "top5", "mean_per_class_recall", "worst_group_top1", "worst_group_top5",
                          "macro_f1", "roc_auc", "mean_top1_top5")
RETRIEVAL_METRICS = ("mean_R@1", "image_to_text_R@1", "text_to_image_R@1")
ASSOCIATION_METRICS = ("jaccard", "jaccard_5-6", "jaccard_10-12")
METRICS = {CLASSIFICATION: CLASSIFICATION_METRICS, RETRIEVAL: RETRIEVAL_METRICS, ASSOCIATION: ASSOCIATION_METRICS}

SUITE_DATACOMP, SUITE_CLIP = "datacomp", "clip"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    """CLIP_benchmark-compatible name (the key of REGISTRY)."""
    title: str
    group: str
    """Family for reporting: imagenet-robustness, fine-grained, natural, structured, digits-ocr, remote-sensing,
    medical, geographic, video-action, faces, wildlife, retrieval, association."""
    task: str
    main_metric: str
    suites: tuple[str, ...]
    templates: tuple[str, ...] = ()
    """Prompt templates with {c}; empty for retrieval (captions are the texts)."""
    classnames: tuple[str, ...] | None = None
    """Inline class names in label order; None: the layout's classnames.txt (see classnames_doc)."""
    classnames_doc: str = ""
    num_classes: int | None = None
    """The public release's class count (checked against the names in use)."""
    group_by: str = ""
    """What a sample's `group` field holds for the worst-group metric ("" = not a worst-group dataset)."""
    datacomp: str = ""
    """DataComp's tasklist key (e.g. vtab/caltech101), "" outside the DataComp suite."""


def _c(name: str, title: str, group: str, templates: tuple[str, ...], suites: tuple[str, ...], *,
       classnames: tuple[str, ...] | None = None, doc: str = "", num_classes: int | None = None,
       main: str = "top1", group_by: str = "", datacomp: str = "") -> DatasetSpec:
    return DatasetSpec(name, title, group, CLASSIFICATION, main, suites, templates, classnames, doc,
                       num_classes if num_classes is not None else (len(classnames) if classnames else None),
                       group_by, datacomp)


DC, CLIP, BOTH = (SUITE_DATACOMP,), (SUITE_CLIP,), (SUITE_DATACOMP, SUITE_CLIP)
_IMAGENET_NAMES = "classnames.txt: the 1000 ImageNet class names (the CLIP paper's edited names), label order"
_SUBSET_200 = "classnames.txt: the 200 class names of this ImageNet subset, in the dataset's label order"

_ALL = [
    # ImageNet and its distribution shifts: all share ImageNet's 80 templates.
    _c("imagenet1k", "ImageNet 1k", "imagenet-robustness", tp.IMAGENET, BOTH, doc=_IMAGENET_NAMES,
       num_classes=1000, datacomp="imagenet1k"),
    _c("imagenetv2", "ImageNet v2", "imagenet-robustness", tp.IMAGENET, BOTH, doc=_IMAGENET_NAMES,
       num_classes=1000, datacomp="imagenetv2"),
    _c("imagenet_sketch", "ImageNet Sketch", "imagenet-robustness", tp.IMAGENET, BOTH, doc=_IMAGENET_NAMES,
       num_classes=1000, datacomp="imagenet_sketch"),
    _c("imagenet-a", "ImageNet-A", "imagenet-robustness", tp.IMAGENET, BOTH, doc=_SUBSET_200, num_classes=200,
       datacomp="imagenet-a"),
    _c("imagenet-r", "ImageNet-R", "imagenet-robustness", tp.IMAGENET, BOTH, doc=_SUBSET_200, num_classes=200,
       datacomp="imagenet-r"),
    _c("imagenet-o", "ImageNet-O", "imagenet-robustness", tp.IMAGENET, DC, doc=_SUBSET_200, num_classes=200,
       datacomp="imagenet-o"),
    _c("objectnet", "ObjectNet", "imagenet-robustness", tp.IMAGENET, BOTH,
       doc="classnames.txt: the 113 ObjectNet classes that map to ImageNet, label order", num_classes=113,
       datacomp="objectnet"),
    # Natural images, general categories.
    _c("cifar10", "CIFAR-10", "natural", tp.CIFAR, BOTH, classnames=cn.CIFAR10, datacomp="cifar10"),
    _c("cifar100", "CIFAR-100", "natural", tp.CIFAR, BOTH, classnames=cn.CIFAR100, datacomp="vtab/cifar100"),
    _c("stl10", "STL-10", "natural", tp.STL10, BOTH, classnames=cn.STL10, datacomp="stl10"),
    _c("caltech101", "Caltech-101", "natural", tp.CALTECH, BOTH, main="mean_per_class_recall", num_classes=102,
       doc="classnames.txt: the 102 Caltech-101 classes incl. background (VTAB's order, the CLIP paper's names)",
       datacomp="vtab/caltech101"),
    _c("sun397", "SUN397", "natural", tp.SUN397, BOTH, num_classes=397,
       doc="classnames.txt: the 397 scene names (underscores and slashes as spaces), label order",
       datacomp="sun397"),
    _c("voc2007", "Pascal VOC 2007", "natural", tp.VOC, BOTH, classnames=cn.VOC2007, datacomp="voc2007"),
    _c("dtd", "Describable Textures", "natural", tp.DTD, BOTH, classnames=cn.DTD, datacomp="vtab/dtd"),
    # Fine-grained.
    _c("cars", "Stanford Cars", "fine-grained", tp.CARS, BOTH, num_classes=196,
       doc="classnames.txt: the 196 make/model/year names, label order", datacomp="cars"),
    _c("fgvc_aircraft", "FGVC Aircraft", "fine-grained", tp.AIRCRAFT, BOTH, main="mean_per_class_recall",
       num_classes=100, doc="classnames.txt: the 100 aircraft variants, label order", datacomp="fgvc_aircraft"),
    _c("flowers", "Oxford Flowers-102", "fine-grained", tp.FLOWERS, BOTH, main="mean_per_class_recall",
       num_classes=102, doc="classnames.txt: the 102 flower names, label order", datacomp="vtab/flowers"),
    _c("pets", "Oxford-IIIT Pet", "fine-grained", tp.PETS, BOTH, main="mean_per_class_recall", num_classes=37,
       doc="classnames.txt: the 37 breed names, label order", datacomp="vtab/pets"),
    _c("food101", "Food-101", "fine-grained", tp.FOOD, BOTH, num_classes=101,
       doc="classnames.txt: the 101 dish names, label order", datacomp="food101"),
    _c("birdsnap", "Birdsnap", "fine-grained", tp.BIRDS, CLIP, num_classes=500,
       doc="classnames.txt: the 500 species names, label order"),
    # Digits, text in images.
    _c("mnist", "MNIST", "digits-ocr", tp.MNIST, BOTH, classnames=cn.DIGITS, datacomp="mnist"),
    _c("svhn", "SVHN", "digits-ocr", tp.SVHN, DC, classnames=cn.DIGIT_WORDS, datacomp="vtab/svhn"),
    _c("gtsrb", "GTSRB", "digits-ocr", tp.GTSRB, BOTH, num_classes=43,
       doc="classnames.txt: the 43 traffic sign names (the CLIP paper's names), label order", datacomp="gtsrb"),
    _c("renderedsst2", "Rendered SST2", "digits-ocr", tp.RENDERED_SST2, BOTH, classnames=cn.RENDERED_SST2,
       datacomp="renderedsst2"),
    _c("hateful_memes", "Hateful Memes", "digits-ocr", tp.HATEFUL_MEMES, CLIP, classnames=cn.HATEFUL_MEMES,
       main="roc_auc"),
    # Structured (VTAB).
    _c("clevr_count_all", "CLEVR Counts", "structured", tp.CLEVR_COUNT, BOTH, classnames=cn.CLEVR_COUNT,
       datacomp="vtab/clevr_count_all"),
    _c("clevr_closest_object_distance", "CLEVR Distance", "structured", tp.CLEVR_DISTANCE, DC,
       classnames=cn.CLEVR_DISTANCE, datacomp="vtab/clevr_closest_object_distance"),
    _c("kitti_closest_vehicle_distance", "KITTI Vehicle Distance", "structured", tp.WHOLE_SENTENCE, BOTH,
       classnames=cn.KITTI_DISTANCE, datacomp="vtab/kitti_closest_vehicle_distance"),
    # Remote sensing.
    _c("eurosat", "EuroSAT", "remote-sensing", tp.EUROSAT, BOTH, classnames=cn.EUROSAT, datacomp="vtab/eurosat"),
    _c("resisc45", "RESISC45", "remote-sensing", tp.RESISC45, BOTH, num_classes=45,
       doc="classnames.txt: the 45 scene names (underscores as spaces), label order", datacomp="vtab/resisc45"),
    _c("fmow", "FMoW (WILDS)", "remote-sensing", tp.FMOW, DC, main="worst_group_top1", num_classes=62,
       group_by="region (Asia, Europe, Africa, Americas, Oceania; WILDS' 'Other' region: no group)",
       doc="classnames.txt: the 62 land-use categories (underscores as spaces), label order", datacomp="wilds/fmow"),
    # Medical.
    _c("pcam", "PatchCamelyon", "medical", tp.PCAM, BOTH, classnames=cn.PCAM, datacomp="vtab/pcam"),
    _c("camelyon17", "Camelyon17 (WILDS)", "medical", tp.CAMELYON, DC, classnames=cn.CAMELYON17,
       datacomp="wilds/camelyon17"),
    # Geographic diversity.
    _c("country211", "Country211", "geographic", tp.COUNTRY211, BOTH, num_classes=211,
       doc="classnames.txt: the 211 country names, label order (ISO code order)", datacomp="country211"),
    _c("dollar_street", "Dollar Street", "geographic", tp.HOUSEHOLD, DC, main="worst_group_top5", num_classes=58,
       group_by="income group (DataComp's income quartile of the household)",
       doc="classnames.txt: the 58 object/topic names mapped to ImageNet-style names, label order",
       datacomp="fairness/dollar_street"),
    _c("geode", "GeoDE", "geographic", tp.HOUSEHOLD, DC, main="worst_group_top1", num_classes=40,
       group_by="region (Africa, Americas, East Asia, Europe, Southeast Asia, West Asia)",
       doc="classnames.txt: the 40 object names, label order", datacomp="fairness/geode"),
    # Wildlife.
    _c("iwildcam", "iWildCam (WILDS)", "wildlife", tp.IWILDCAM, DC, main="macro_f1", num_classes=182,
       doc="classnames.txt: the 182 species names (common names), label order", datacomp="wilds/iwildcam"),
    # Faces.
    _c("fer2013", "FER2013", "faces", tp.FER2013, CLIP, classnames=cn.FER2013),
    # Video actions: one frame per clip (the middle frame, as the CLIP paper did for UCF101).
    _c("ucf101", "UCF101", "video-action", tp.UCF101, CLIP, num_classes=101,
       doc="classnames.txt: the 101 action names split into words ('Apply Eye Makeup'), label order"),
    _c("kinetics700", "Kinetics-700", "video-action", tp.KINETICS, CLIP, main="mean_top1_top5", num_classes=700,
       doc="classnames.txt: the 700 action names, label order"),
    # Retrieval: captions are the texts; several captions per image.
    DatasetSpec("flickr30k", "Flickr30k", "retrieval", RETRIEVAL, "mean_R@1", DC, datacomp="retrieval/flickr30k"),
    DatasetSpec("mscoco_captions", "MSCOCO (5k test)", "retrieval", RETRIEVAL, "mean_R@1", DC,
                datacomp="retrieval/mscoco_2014_5k_test_image_text_retrieval"),
    # Association: pick the candidate images that go with a cue word.
    DatasetSpec("winogavil", "WinoGAViL", "association", ASSOCIATION, "jaccard_10-12", DC, tp.ASSOCIATION,
                datacomp="misc/winogavil"),
]
REGISTRY: dict[str, DatasetSpec] = {d.name: d for d in _ALL}


def get(name: str) -> DatasetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown external dataset {name!r} (known: {', '.join(sorted(REGISTRY))})") from None


def suite(name: str) -> list[DatasetSpec]:
    """Every dataset of a suite: "datacomp" (the 38 tasks), "clip" (the paper's zero-shot datasets), or "all"."""
    if name == "all":
        return list(_ALL)
    if name not in (SUITE_DATACOMP, SUITE_CLIP):
        raise KeyError(f"unknown suite {name!r} (known: datacomp, clip, all)")
    return [d for d in _ALL if name in d.suites]
