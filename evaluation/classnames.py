"""Class names of the datasets whose list is small and standard, in label order (label i names class i).

Label order is the order of the public releases the CLIP_benchmark / DataComp mirrors are built from (torchvision
for CIFAR/MNIST/STL-10/SVHN/EuroSAT/PCam/Rendered SST2/VOC/DTD/FER2013, VTAB for CLEVR and KITTI). Names are the
CLIP paper's edited names where it edited them (EuroSAT, PCam, KITTI, FER2013, ...). Every other dataset reads its
names from the layout's classnames.txt; a layout's classnames.txt also replaces these (see evaluation.adapters).
"""

from __future__ import annotations

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR100 = (
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain", "mouse", "mushroom", "oak tree", "orange",
    "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow tree", "wolf", "woman", "worm",
)

DIGITS = tuple(str(i) for i in range(10))
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

STL10 = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")

EUROSAT = ("annual crop land", "forest", "brushland or shrubland", "highway or road",
           "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
           "residential buildings or homes or apartments", "river", "lake or sea")

PCAM = ("lymph node", "lymph node containing metastatic tumor tissue")
CAMELYON17 = ("healthy lymph node tissue", "lymph node tissue containing a tumor")

RENDERED_SST2 = ("negative", "positive")

CLEVR_COUNT = ("three", "four", "five", "six", "seven", "eight", "nine", "ten")
"""VTAB's clevr_count_all: label = number of objects - 3."""

CLEVR_DISTANCE = ("very nearby", "nearby", "near", "not far", "distant", "very distant")
"""VTAB's clevr_closest_object_distance: six depth bins of the closest object, nearest first."""

KITTI_DISTANCE = ("a photo i took of a car on my left or right side.", "a photo i took with a car nearby.",
                  "a photo i took with a car in the distance.", "a photo i took with no car.")
"""VTAB's kitti_closest_vehicle_distance, as the CLIP paper phrased its four classes (the template is "{c}")."""

FER2013 = ("angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised")

HATEFUL_MEMES = ("meme", "hatespeech meme")
"""Label 1 (hateful) is the positive class of the ROC AUC."""

VOC2007 = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table",
           "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor")

DTD = ("banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked", "crosshatched",
       "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy", "grid", "grooved", "honeycombed",
       "interlaced", "knitted", "lacelike", "lined", "marbled", "matted", "meshed", "paisley", "perforated", "pitted",
       "pleated", "polka-dotted", "porous", "potholed", "scaly", "smeared", "spiralled", "sprinkled", "stained",
       "stratified", "striped", "studded", "swirly", "veined", "waffled", "woven", "wrinkled", "zigzagged")
