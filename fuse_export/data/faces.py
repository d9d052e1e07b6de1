"""Face finding for photos: OpenCV's bundled Haar cascade, and crops with a margin around each face.

The model was trained on face crops, so a photo with a person in it must be cropped first. The Haar
cascade ships inside opencv-python(-headless) 4.x (`cv2.data.haarcascades`), so no weights are fetched.
OpenCV 5 dropped the cascades from the main package, hence the `<5` in the `faces` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fuse_export.errors import BackendUnavailable
from fuse_export.extras import install_hint

CASCADE = "haarcascade_frontalface_default.xml"
DEFAULT_MARGIN = 0.2  # share of the face box added on every side: the training crops include some context


@dataclass(frozen=True)
class Box:
    """A face box in pixels: left, top, width, height."""

    x: int
    y: int
    w: int
    h: int

    def expanded(self, margin: float, width: int, height: int) -> Box:
        """The box grown by `margin` of its size on every side, clipped to the image."""
        dx, dy = int(round(self.w * margin)), int(round(self.h * margin))
        x0, y0 = max(0, self.x - dx), max(0, self.y - dy)
        x1, y1 = min(width, self.x + self.w + dx), min(height, self.y + self.h + dy)
        return Box(x0, y0, x1 - x0, y1 - y0)

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


def _cv2():
    try:
        import cv2
    except ImportError:
        raise BackendUnavailable(f"--detect-faces needs OpenCV: {install_hint('faces')} "
                                 "(opencv-python-headless < 5, which bundles the Haar cascades)") from None
    return cv2


class FaceFinder:
    """Frontal faces in RGB images, largest first. Built once, used for every photo."""

    def __init__(self, min_size: int = 24, scale_factor: float = 1.1, min_neighbors: int = 5) -> None:
        cv2 = _cv2()
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = Path(folder) / CASCADE
        if not hasattr(cv2, "CascadeClassifier") or not path.is_file():
            raise BackendUnavailable(f"OpenCV {cv2.__version__} has no bundled Haar cascade ({path} missing): "
                                     "install opencv-python-headless < 5 (pip install 'fuse-export[faces]')")
        self._cascade = cv2.CascadeClassifier(str(path))
        self._cv2 = cv2
        self.min_size, self.scale_factor, self.min_neighbors = min_size, scale_factor, min_neighbors

    def find(self, image: Image.Image) -> list[Box]:
        """Face boxes (without margin), largest first."""
        # No histogram equalization: on faces against a flat background it erased the faces the plain
        # grayscale image shows (measured on the generated test photos).
        gray = np.asarray(image.convert("L"))
        found = self._cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                               minSize=(self.min_size, self.min_size))
        boxes = [Box(int(x), int(y), int(w), int(h)) for x, y, w, h in (found if len(found) else [])]
        return sorted(boxes, key=lambda b: -b.w * b.h)


def crop(image: Image.Image, box: Box, margin: float = DEFAULT_MARGIN) -> tuple[Image.Image, Box]:
    """The face with its margin, and the box that was cut."""
    cut = box.expanded(margin, image.width, image.height)
    return image.crop((cut.x, cut.y, cut.x + cut.w, cut.y + cut.h)), cut
