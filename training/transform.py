"""The one image preprocessing used by training AND evaluation: RGB -> resize to image_size -> normalise.

The whole image is resized (no crop) because captions talk about positions ("on the left"): a crop could
remove the object a caption describes. Mean/std are CLIP's.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def preprocess(image: Image.Image, image_size: int) -> torch.Tensor:
    """A PIL image (any mode, any size) -> float32 tensor (3, image_size, image_size)."""
    img = image.convert("RGB")
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BICUBIC)
    arr = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())
