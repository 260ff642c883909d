"""A dataset's images as one small zip of resized WebP chips, same member names, for a machine with little room.

    python -m agegender.pack --data ../shared/datasets/UTKFace --out utk144.zip

A lent GPU machine takes at most 64 MiB with the code; UTKFace's 20,983 chips at 144 px and WebP quality 80
fit in about 42 MiB. The names, hence the labels and the hash split, are unchanged, so ``train.py --data``
and ``agegender.evaluation.evaluate --data`` read the zip as they read the folder. The pixels are not the same: WebP
changes each by about 2 of 255 on average, and a checkpoint trained on the zip records the zip's
fingerprint, not the folder's. Score it on the original images (``agegender.evaluation.evaluate``) before quoting it.

The output is a pure function of the input: members sorted, fixed timestamps, stored (WebP is already
compressed). An image that cannot be read or written as WebP goes in unchanged, so the reader reports it
as it would have. The zip is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import zipfile
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ..faces.detect import DECODE_ERRORS, resize_image
from ..meta import atomic_write
from .utkface import DatasetError, list_images, member_bytes

SIZE = 144  # the cache size of the shipped recipe: packing at it loses nothing training would keep
QUALITY = 80
STAMP = (2017, 1, 1, 0, 0, 0)  # zip timestamps are part of the bytes; a fixed one keeps packs identical


def webp_chip(raw: bytes | None, size: int, quality: int) -> bytes | None:
    """One image as a size x size WebP, or None when it cannot be read."""
    if not raw:
        return None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            pixels = resize_image(im, size)
    except DECODE_ERRORS:
        return None
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "WEBP", quality=quality)
    return out.getvalue()


def pack(data: str | Path, out: str | Path, size: int = SIZE, quality: int = QUALITY, progress=None) -> dict:
    """Write every image member of ``data`` (folder, zip or tar) to the zip ``out``; returns the counts."""
    data = Path(data).expanduser()
    if not data.exists():
        raise DatasetError(f"{data} does not exist: give the dataset's folder, .zip or .tar.gz")
    kind, members = list_images(data)
    names = sorted(m for m, _ in members)
    if not names:
        raise DatasetError(f"{data} holds no images (.jpg, .jpeg, .png, .webp, .bmp)")
    kept_raw = []
    with atomic_write(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for name, raw in member_bytes(data, kind, names):
            chip = webp_chip(raw, size, quality)
            if chip is None:
                kept_raw.append(name)
            z.writestr(zipfile.ZipInfo(name, STAMP), chip if chip is not None else (raw or b""))
            if progress is not None:
                progress.update(1)
    return {"members": len(names), "kept_raw": kept_raw, "bytes": Path(out).stat().st_size}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.pack", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the dataset: folder, .zip or .tar.gz")
    p.add_argument("--out", required=True, help="the zip to write")
    p.add_argument("--size", type=int, default=SIZE, help=f"side of the square chips in px (default {SIZE})")
    p.add_argument("--quality", type=int, default=QUALITY, help=f"WebP quality, 1-100 (default {QUALITY})")
    args = p.parse_args(argv)
    if not 16 <= args.size <= 1024 or not 1 <= args.quality <= 100:
        p.error("--size is 16-1024 px and --quality 1-100")
    t = time.perf_counter()
    try:
        with tqdm(desc="pack", unit="img", leave=False) as bar:
            r = pack(args.data, args.out, args.size, args.quality, bar)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    raw = f"; {len(r['kept_raw'])} unreadable, kept as they were (e.g. {r['kept_raw'][0]})" if r["kept_raw"] else ""
    print(f"wrote {args.out}: {r['members']} images at {args.size} px, WebP quality {args.quality}, "
          f"{r['bytes'] / 2**20:.1f} MiB in {time.perf_counter() - t:.0f} s{raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
