"""Write the bundled calibration images (caffecompress/data/calib/*.jpg).

They are the six scikit-image sample images ``verify`` has always used
(public-domain or CC0 photographs bundled in scikit-image's wheel), scaled
so the longer side is 320 px (the largest input of the zoo's nets) and
stored as JPEG quality 92: about 0.2 MB in all. Fidelity is reported on
scikit-image's *other* images, which calibration never sees.

Usage: python tools/build_calib_images.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import skimage.data as skd

NAMES = ("astronaut", "coffee", "chelsea", "camera", "rocket", "coins")
OUT = Path(__file__).resolve().parents[1] / "caffecompress" / "data" / "calib"
LONG_SIDE = 320


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        im = np.asarray(getattr(skd, name)())
        if im.ndim == 3:
            im = im[..., :3][..., ::-1]  # RGB -> BGR, as cv2.imread gives
        h, w = im.shape[:2]
        f = LONG_SIDE / max(h, w)
        im = cv2.resize(np.ascontiguousarray(im), (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        path = OUT / f"{name}.jpg"
        cv2.imwrite(str(path), im, [cv2.IMWRITE_JPEG_QUALITY, 92])
        print(path, im.shape, path.stat().st_size)


if __name__ == "__main__":
    main()
