"""Benchmarks that print numbers (medians): python -m agegender.bench {train,predict}

train: end-to-end training images/s of our pipeline (uint8 cache in RAM, batch tensor
augmentation, channels_last, bf16 autocast) beside (a) the compute step alone on ready-made
tensors and (b) a plain torchvision DataLoader + PIL transforms + fp32 pipeline; peak memory.

predict: latency for a 640x480 photo with one face: detection, alignment + prediction, both heads'
Grad-CAMs, against one plain forward pass of the model.

serve: eight threads predicting and explaining at once through one shared model against the same
requests one after another (equal results?), then resident memory over 200 explanations in a row.

app: seconds from `streamlit run` to the first page rendered in headless Chromium (cold, then warm).

report: the bias report on a checkpoint's ~2,100 test rows (1,000 resamples), a rerun of the bias
page after a filter change, and the bias page on a generated 200,000-row predictions file.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig
from .data import cached_images, scan
from .model import create_model
from .preprocess import Preprocess, preprocess, to_batch
from .runtime import cpu_has_bf16, pick_device, set_threads
from .training import build_optimizer, compute_step

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "UTKFace"


def _median_rate(step, batch_size: int, steps: int, warmup: int) -> tuple[float, float]:
    """Median images/s over ``steps`` timed calls after ``warmup`` untimed ones, and the median step time."""
    med = _median_s(step, steps, warmup)
    return batch_size / med, med


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _synthetic_dataset(folder: Path, n: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"{20 + i % 50}_{i % 2}_{i % 5}_2017010915{i:07d}.jpg.chip.jpg")
    return folder


class _PlainDataset(torch.utils.data.Dataset):
    """The textbook pipeline: open each JPEG with PIL, torchvision transforms, one image at a time."""

    def __init__(self, root: Path, samples, pp: Preprocess):
        from torchvision import transforms as T

        self.root, self.samples = root, samples
        self.tf = T.Compose([
            T.Resize(pp.cache_size), T.RandomCrop(pp.input_size), T.RandomHorizontalFlip(),
            T.RandomRotation(10), T.ColorJitter(0.25, 0.25, 0.25), T.ToTensor(), T.Normalize(pp.mean, pp.std),
        ])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image

        s = self.samples[i]
        with Image.open(self.root / s.member) as im:
            x = self.tf(im.convert("RGB"))
        return x, torch.tensor(float(s.age)), torch.tensor(float(s.gender))


def bench_train(args) -> None:
    set_threads(args.threads)
    device = pick_device("auto")
    cfg = TrainConfig(data="-", out="-", arch=args.arch, batch_size=args.batch_size, cache_size=args.cache_size,
                      input_size=args.input_size)
    pp = Preprocess(cache_size=cfg.cache_size, input_size=cfg.input_size)
    data = Path(args.data) if args.data else DEFAULT_DATA
    tmp = None
    if not data.exists():
        tmp = tempfile.TemporaryDirectory()
        data = _synthetic_dataset(Path(tmp.name) / "UTKFace", 4 * args.batch_size)
        print(f"dataset not found; using {4 * args.batch_size} generated 200 px JPEGs")
    sc = scan(data)
    t = time.perf_counter()
    images = cached_images(sc, cfg.cache_size, args.cache_dir, in_memory=True)
    pixels = torch.from_numpy(images.pixels)
    load_s = time.perf_counter() - t
    ages = torch.as_tensor(images.labels()["age"])
    female = torch.as_tensor(images.labels()["gender"])
    g = torch.Generator().manual_seed(0)
    bs = cfg.batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"bf16 CPU: {cpu_has_bf16()}, {args.arch}, batch {bs}, {cfg.input_size} px input")
    print(f"cache: {len(images.samples)} images at {cfg.cache_size} px = {pixels.numel() / 2**30:.2f} GiB, "
          f"loaded in {load_s:.1f} s")

    def fresh():
        m = create_model(args.arch).to(device).to(memory_format=torch.channels_last).train()
        return m, build_optimizer(m, cfg)

    model, opt = fresh()
    aug = cfg.augment()

    def ours():
        idx = torch.randint(0, len(pixels), (bs,), generator=g)
        x = preprocess(to_batch(pixels[idx]).to(device), pp, aug, g)
        compute_step(model, opt, x, (ages[idx].to(device) - 33) / 20, female[idx].to(device), cfg, device)

    ready_x = preprocess(to_batch(pixels[:bs]).to(device), pp, aug, g)
    ready_age, ready_f = (ages[:bs].to(device) - 33) / 20, female[:bs].to(device)

    def compute_only():
        compute_step(model, opt, ready_x, ready_age, ready_f, cfg, device)

    rate_a, step_a = _median_rate(compute_only, bs, args.steps, args.warmup)
    rate_e2e, step_e2e = _median_rate(ours, bs, args.steps, args.warmup)
    peak_ours = _peak_rss_mb()

    if args.no_plain:
        rate_b = float("nan")
    elif sc.kind != "folder":
        print("(b) needs a dataset folder; skipped")
        rate_b = float("nan")
    else:
        fp32 = TrainConfig(data="-", out="-", arch=args.arch, batch_size=bs, precision="fp32")
        model = create_model(args.arch).to(device).train()
        opt = build_optimizer(model, fp32)
        loader = torch.utils.data.DataLoader(_PlainDataset(sc.path, sc.samples, pp), batch_size=bs, shuffle=True,
                                             num_workers=args.workers, drop_last=True, persistent_workers=True)
        it = iter(loader)

        def plain():
            nonlocal it
            try:
                x, a, f = next(it)
            except StopIteration:
                it = iter(loader)
                x, a, f = next(it)
            compute_step(model, opt, x.to(device), (a.to(device) - 33) / 20, f.to(device), fp32, device)

        rate_b, _ = _median_rate(plain, bs, args.steps, args.warmup)

    print(f"\nmedian over {args.steps} steps after {args.warmup} warm-up steps:")
    print(f"  end-to-end (ours)                    {rate_e2e:7.1f} img/s   ({step_e2e * 1000:.0f} ms/step)")
    print(f"  (a) compute step on ready tensors    {rate_a:7.1f} img/s   ({step_a * 1000:.0f} ms/step)")
    print(f"  (b) DataLoader + PIL + fp32 ({args.workers} wkr)  {rate_b:7.1f} img/s")
    print(f"  end-to-end / (a) = {rate_e2e / rate_a:.0%}   (goal >= 85%)")
    print(f"  end-to-end / (b) = {rate_e2e / rate_b:.2f}x  (goal >= 2.5x)")
    print(f"  peak RSS with our pipeline: {peak_ours / 1024:.2f} GiB (cache {pixels.numel() / 2**30:.2f} GiB)")
    if tmp is not None:
        tmp.cleanup()


def _median_s(fn, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_predict(args) -> None:
    import matplotlib.cbook
    from PIL import Image

    from .catalog import default_root
    from .checkpoint import load_checkpoint
    from .explain import explain
    from .faces import FaceDetector, load_photo
    from .predict import analyse, model_input

    set_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint or default_root() / "resnet18-utkface")
    hopper = load_photo(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    face = hopper.resize((round(hopper.width * 480 / hopper.height), 480), Image.Resampling.BILINEAR)
    photo = Image.new("RGB", (640, 480), (90, 110, 130))
    photo.paste(face, ((640 - face.width) // 2, 0))
    det = FaceDetector()
    faces = det.detect(photo)
    assert len(faces) == 1, f"expected one face, found {len(faces)}"
    result = analyse(photo, "bench", ckpt, faces)
    x = model_input(ckpt, result.faces[0].pixels)
    maps = ("older", "younger", "female" if result.faces[0].p_female >= 0.5 else "male")

    def forward():
        with torch.no_grad():
            ckpt.model(x)

    t_fwd = _median_s(forward, args.runs)
    t_det = _median_s(lambda: det.detect(photo), args.runs)
    t_pred = _median_s(lambda: analyse(photo, "bench", ckpt, faces), args.runs)
    t_cam = _median_s(lambda: explain(ckpt.model, x, maps=maps), args.runs)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {ckpt.name}, 640x480 photo, one face")
    print(f"median over {args.runs} runs:")
    print(f"  detection (MTCNN)                         {t_det * 1000:7.1f} ms")
    print(f"  alignment + prediction (with flip TTA)    {t_pred * 1000:7.1f} ms")
    print(f"  Grad-CAM, both heads ({', '.join(maps)})  {t_cam * 1000:7.1f} ms")
    print(f"  full explanation                          {(t_det + t_pred + t_cam) * 1000:7.1f} ms   (goal <= 600)")
    print(f"  one plain forward pass (batch 1)          {t_fwd * 1000:7.1f} ms")
    print(f"  CAMs / forward pass = {t_cam / t_fwd:.2f}   (goal <= 3)")


def _bias_page(root: Path, runs: int) -> tuple[float, float]:
    """(first render, median rerun after a filter change) of the bias page, in seconds (AppTest)."""
    import os

    from streamlit.testing.v1 import AppTest

    os.environ["AGEGENDER_CHECKPOINTS"] = str(root)
    app = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
    at = AppTest.from_file(app, default_timeout=300)
    at.session_state["picker_names"] = [p.name for p in root.iterdir()][:1]
    at.run()
    t = time.perf_counter()
    at.switch_page("pages/bias.py").run()
    first = time.perf_counter() - t
    if at.exception:
        raise RuntimeError(at.exception[0].value)
    reruns = []
    for i in range(runs):
        t = time.perf_counter()
        at.checkbox(key="bias_hide_small").set_value(i % 2 == 0).run()
        reruns.append(time.perf_counter() - t)
    return first, statistics.median(reruns)


def bench_report(args) -> None:
    import logging
    import shutil

    from .catalog import default_root
    from .fairness import DEFAULT_GROUPINGS
    from .report import build, load_predictions

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    set_threads(args.threads)
    ckpt = Path(args.checkpoint) if args.checkpoint else default_root() / "resnet18-utkface"
    df = load_predictions(ckpt, "test")
    one = _median_s(lambda: build(df, ["age_bucket"], 1000), args.runs, 1)
    full = _median_s(lambda: build(df, list(DEFAULT_GROUPINGS), 1000), args.runs, 1)
    print(f"{ckpt.name} test split, {len(df)} rows, 1,000 bootstrap resamples, median of {args.runs}:")
    print(f"  report, overall + age_bucket                 {one:6.2f} s   (goal <= 2)")
    print(f"  report, overall + {len(DEFAULT_GROUPINGS)} groupings ({', '.join(DEFAULT_GROUPINGS)}) {full:6.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ck"
        shutil.copytree(ckpt, root / ckpt.name, ignore=shutil.ignore_patterns("*.safetensors.tmp*"))
        first, rerun = _bias_page(root, args.runs)
        print(f"  bias page, first render (val split)          {first:6.2f} s")
        print(f"  bias page, rerun after a filter change       {rerun:6.2f} s   (goal <= 1)")
        big = Path(tmp) / "big"
        shutil.copytree(ckpt, big / "big", ignore=shutil.ignore_patterns("*.safetensors.tmp*"))
        rng = np.random.default_rng(0)
        val = load_predictions(ckpt, "val")
        rows = val.sample(200_000, replace=True, random_state=0).reset_index(drop=True)
        rows["file"] = [f"gen{i}.jpg" for i in range(len(rows))]
        rows["pred_age"] = (rows["pred_age"] + rng.normal(0, 1, len(rows))).clip(0).round(2)
        rows.to_csv(big / "big" / "predictions-val.csv", index=False)
        first_big, _ = _bias_page(big, 1)
        print(f"  bias page on 200,000 generated rows, first render {first_big:6.2f} s   (goal <= 10)")


def bench_app(args) -> None:
    import shutil
    import socket
    import subprocess
    import urllib.request

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("bench app needs chromium on PATH (apt-get install chromium)")
    root = Path(__file__).resolve().parents[1]
    times, titles = [], []
    for _ in range(args.runs):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(root / "dashboard" / "app.py"),
                                 "--server.headless", "true", "--server.port", str(port),
                                 "--server.address", "127.0.0.1"], cwd=root,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            with sync_playwright() as p:
                b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                      "--disable-background-networking", "--no-first-run"])
                page = b.new_page()
                page.goto(f"http://127.0.0.1:{port}")
                page.get_by_role("heading", name="Predict & explain").wait_for(timeout=120_000)
                titles.append(time.perf_counter() - t)
                page.get_by_text("evidence for older").first.wait_for(timeout=120_000)
                times.append(time.perf_counter() - t)
                b.close()
        finally:
            proc.terminate()
            proc.wait()
    warm = slice(1, None) if len(times) > 1 else slice(None)
    print(f"streamlit run -> first page in Chromium, {len(times)} starts (the first cold):")
    for label, ts in (("page rendered (title)", titles), ("example photo fully explained", times)):
        print(f"  {label:32s} first {ts[0]:.1f} s, warm median {statistics.median(ts[warm]):.1f} s")


def bench_serve(args) -> None:
    import threading

    import matplotlib.cbook
    from PIL import Image

    from .catalog import default_root
    from .checkpoint import load_checkpoint
    from .faces import FaceDetector, load_photo
    from .predict import analyse, explain_face

    set_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint or default_root() / "resnet18-utkface")
    det = FaceDetector()
    hopper = load_photo(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    photos = []  # eight different requests: the photo scaled, shifted and mirrored
    for i in range(8):
        side = 360 + 30 * i
        im = hopper.resize((side * hopper.width // hopper.height, side), Image.Resampling.BILINEAR)
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else im
        canvas = Image.new("RGB", (640, 640), (40 + 20 * i, 90, 120))
        canvas.paste(im, (10 * i, 640 - side))
        photos.append(canvas)
    methods = ["GradCAM", "GradCAM++", "LayerCAM", "XGradCAM"]

    def request(i: int):
        r = analyse(photos[i], f"p{i}", ckpt, det.detect(photos[i]))
        f = next(f for f in r.faces if f.predicted)
        maps = explain_face(ckpt, f, method=methods[i % len(methods)])
        return f.age, f.p_female, [m.heat for m in maps]

    sequential = [request(i) for i in range(8)]
    concurrent: list = [None] * 8
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        concurrent[i] = request(i)

    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    worst = max(max(abs(a[0] - b[0]), abs(a[1] - b[1]), *(float(np.abs(x - y).max()) for x, y in zip(a[2], b[2],
                strict=True))) for a, b in zip(sequential, concurrent, strict=True))
    print(f"8 concurrent predict+explain requests in {wall:.2f} s; largest difference from the same requests "
          f"run one after another: {worst:.2e} (ages in years, P(female), heat maps in [0, 1])")

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    for i in range(20):  # warm-up: allocator pools, lazy imports
        request(i % 8)
    before = rss_mb()
    marks = []
    for i in range(args.soak):
        request(i % 8)
        if (i + 1) % 50 == 0:
            marks.append(f"{i + 1}: {rss_mb():.0f}")
    after = rss_mb()
    print(f"resident memory over {args.soak} explanations after 20 warm-up ones: {before:.0f} MiB -> "
          f"{after:.0f} MiB ({after - before:+.0f} MiB); at " + ", ".join(marks))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="training throughput")
    t.add_argument("--data", help=f"UTKFace folder (default {DEFAULT_DATA}, else generated images)")
    t.add_argument("--arch", default="resnet18")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--steps", type=int, default=15)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--workers", type=int, default=2, help="DataLoader workers for (b)")
    t.add_argument("--cache-size", type=int, default=TrainConfig.cache_size)
    t.add_argument("--input-size", type=int, default=TrainConfig.input_size)
    t.add_argument("--no-plain", action="store_true", help="skip (b), e.g. to compare architectures")
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--cache-dir", default=None)
    pr = sub.add_parser("predict", help="photo-to-explanation latency")
    pr.add_argument("--checkpoint", help="default: checkpoints/resnet18-utkface")
    pr.add_argument("--runs", type=int, default=15)
    pr.add_argument("--threads", type=int, default=0)
    rp = sub.add_parser("report", help="bias report and bias page timings")
    rp.add_argument("--checkpoint", help="default: checkpoints/resnet18-utkface")
    rp.add_argument("--runs", type=int, default=5)
    rp.add_argument("--threads", type=int, default=0)
    sv = sub.add_parser("serve", help="concurrent requests and memory over a soak")
    sv.add_argument("--checkpoint", help="default: checkpoints/resnet18-utkface")
    sv.add_argument("--soak", type=int, default=200)
    sv.add_argument("--threads", type=int, default=0)
    ap = sub.add_parser("app", help="dashboard start-up time in a real browser")
    ap.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    {"train": bench_train, "predict": bench_predict, "report": bench_report, "app": bench_app,
     "serve": bench_serve}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
