"""Is the converted trunk dlib's face-recognition network? Checks models.dlib_convert + agegender.models.dlibnet:

    python -m benchmarks.dlib_check --dat dlib_face_recognition_resnet_model_v1.dat \\
        [--dlib-python /work/dlibenv/bin/python] [--data UTKFACE] [--compare 64] [--chips 200] [--threads 2]

1. Against dlib itself: our module's 128-d embedding and dlib's face_recognition_model_v1
   .compute_face_descriptor(chip) on the same 150 x 150 RGB pixels (--compare chips: UTKFace chips and
   matplotlib's Grace Hopper). Given an aligned 150 x 150 chip and num_jitters=0, dlib runs its network on exactly those
   pixels (tools/python/src/face_recognition.cpp, batch_compute_face_descriptors_from_aligned_images).
   dlib is no project dependency: it is imported here if it can be, else run by the interpreter
   --dlib-python names (a scratch venv with dlib-bin); without either this step says so and is skipped.
2. Without dlib: a chip and its mirror image should be one person (distance < 0.6, dlib's threshold) and
   two different chips mostly not; the rates over --chips UTKFace chips.
3. Conversion time, and the forward time of a batch of 128 images of 128 px with --threads threads.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.cbook
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from agegender.models.catalog import default_data_path
from agegender.models.dlib_convert import DlibFormatError, convert
from agegender.models.dlibnet import DLIB_SIZE, DlibResNet
from agegender.models.preprocess import IMAGENET_MEAN, IMAGENET_STD

from .common import median_s, parser

THRESHOLD = 0.6  # dlib's same-person distance
SHARED_UTKFACE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "UTKFace"
DLIB_SCRIPT = """
import sys, numpy as np, dlib
net = dlib.face_recognition_model_v1(sys.argv[1])
chips = np.load(sys.argv[2])
np.save(sys.argv[3], np.array([np.array(net.compute_face_descriptor(np.ascontiguousarray(c), 0)) for c in chips]))
"""


def chips(paths: list[Path], size: int = DLIB_SIZE) -> np.ndarray:
    """N x size x size x 3 uint8 RGB."""
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
                     for p in paths])


def normalised(pixels: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> the package's model input (ImageNet-normalised, N x 3 x H x W)."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def embeddings(net: DlibResNet, pixels: np.ndarray, batch: int = 50) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net.embedding(normalised(pixels[i:i + batch])) for i in range(0, len(pixels), batch)])


def dlib_descriptors(dat: Path, pixels: np.ndarray, python: str | None) -> np.ndarray | None:
    """dlib's descriptors of these chips, or None (said why) when dlib is not to be had."""
    try:
        import dlib  # noqa: F401 - only to see whether this interpreter has it
        cmd = [sys.executable]
    except ImportError:
        if not python:
            print("dlib: not importable here and no --dlib-python given; the comparison with dlib is skipped")
            return None
        cmd = [python]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "chips.npy", Path(tmp) / "descriptors.npy"
        np.save(src, pixels)
        run = subprocess.run([*cmd, "-c", DLIB_SCRIPT, str(dat), str(src), str(dst)], capture_output=True, text=True)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"dlib: {cmd[0]} could not run dlib ({last}); the comparison with dlib is skipped")
            return None
        return np.load(dst)


def rates(e: torch.Tensor, mirrored: torch.Tensor) -> tuple[float, float]:
    """Share of chips within THRESHOLD of their mirror image; share of different-chip pairs beyond it."""
    same = ((e - mirrored).norm(dim=1) < THRESHOLD).float().mean().item()
    i, j = torch.triu_indices(len(e), len(e), 1)
    different = ((e[i] - e[j]).norm(dim=1) > THRESHOLD).float().mean().item()
    return same, different


def main(argv: list[str] | None = None) -> int:
    p = parser("dlib_check", __doc__, checkpoint=False, threads=False)
    p.add_argument("--dat", required=True, help="dlib_face_recognition_resnet_model_v1.dat")
    p.add_argument("--dlib-python", help="an interpreter with dlib (e.g. a scratch venv with dlib-bin)")
    p.add_argument("--data", help="UTKFace chips folder (default: $AGEGENDER_UTKFACE, then ../shared/datasets)")
    p.add_argument("--compare", type=int, default=64, help="chips compared with dlib (Grace Hopper among them)")
    p.add_argument("--chips", type=int, default=200, help="chips for the mirror / different-chip rates")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data or default_data_path() or SHARED_UTKFACE)
    paths = sorted(data.glob("*.jpg"))
    if not paths:
        print(f"no UTKFace chips in {data}: pass --data", file=sys.stderr)
        return 2
    random.Random(0).shuffle(paths)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trunk.safetensors"
        t = time.perf_counter()
        try:
            meta = convert(args.dat, out)
        except DlibFormatError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        seconds = time.perf_counter() - t
        net = DlibResNet().eval()
        net.load_state_dict(load_file(str(out)))
    print(f"conversion: {seconds:.2f} s ({meta['source']}, sha256 {meta['source_sha256'][:12]}...)")

    hopper = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    probe = chips(paths[:max(args.compare - 1, 0)] + [hopper])
    ours = embeddings(net, probe).numpy()
    theirs = dlib_descriptors(Path(args.dat), probe, args.dlib_python)
    if theirs is not None:
        diff = np.abs(ours - theirs)
        print(f"against dlib on {len(probe)} chips: max |difference| {diff.max():.2e} (embedding norms "
              f"{np.linalg.norm(theirs, axis=1).min():.3f}-{np.linalg.norm(theirs, axis=1).max():.3f})")

    sample = chips(paths[:args.chips])
    e = embeddings(net, sample)
    mirrored = embeddings(net, np.ascontiguousarray(sample[:, :, ::-1]))
    same, different = rates(e, mirrored)
    print(f"{len(sample)} chips: mirror pairs < {THRESHOLD}: {same:.1%}; different-chip pairs > {THRESHOLD}: "
          f"{different:.1%}")

    x = torch.randn(128, 3, 128, 128)
    with torch.no_grad():
        forward = median_s(lambda: net(x), runs=3, warmup=1)
    print(json.dumps({"max_abs_diff_vs_dlib": None if theirs is None else float(np.abs(ours - theirs).max()),
                      "chips_compared": len(probe),
                      "mirror_same_rate": same, "different_rate": different, "conversion_s": round(seconds, 3),
                      f"forward_s_batch128_128px_{args.threads}threads": round(forward, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
