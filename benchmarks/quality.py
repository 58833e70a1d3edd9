"""Quality benchmark: RED-diff with the bundled prior and its presets against classical restorers.

On 256x256 centre crops of the held-out pictures (astronaut, chelsea, coffee), for each task:

- ``sr:4`` (block averaging) at sigma_y 0.01 (0..1 pixel units) vs bicubic upsampling of the measurement;
- ``inpaint-random:0.8`` noiseless vs ``skimage.restoration.inpaint_biharmonic``;
- ``deblur-gauss`` (61x61, sigma 3) at sigma_y 0.01 vs the better of Wiener (balance swept) and unsupervised Wiener;
- ``denoise`` at sigma_y 0.1 vs ``denoise_tv_chambolle`` at its best weight.

The classical restorers are run at their *best* settings, chosen per image by looking at the ground truth (an
oracle advantage RED-diff does not get: it uses the presets chosen on training images). Prints a table and writes
JSON (``--out``). Not a timed test.

    python benchmarks/quality.py --out benchmarks/results/quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import add_overwrite, refuse_existing

from reddiff import load_prior
from reddiff.experiment import restore
from reddiff.io import from_unit, to_unit
from reddiff.metrics import psnr, ssim
from reddiff.tools.data import held_out_images

TASKS = (("sr:4", 0.01), ("inpaint-random:0.8", 0.0), ("deblur-gauss", 0.01), ("denoise", 0.1))


def center_crop(img: np.ndarray, size: int = 256) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return from_unit(torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None])


def to_numpy01(x: torch.Tensor) -> np.ndarray:
    return to_unit(x[0].double()).permute(1, 2, 0).numpy()


def score(est01: np.ndarray, ref01: np.ndarray) -> tuple[float, float]:
    a = torch.from_numpy(np.clip(est01, 0, 1)).permute(2, 0, 1)
    b = torch.from_numpy(ref01).permute(2, 0, 1)
    return float(psnr(a, b)), float(ssim(a, b))


def baseline(task: str, op, y: torch.Tensor, ref01: np.ndarray) -> tuple[str, float, float]:
    """The classical restorer for a task, at its best setting (chosen on the ground truth)."""
    from skimage import restoration, transform

    name = task.split(":")[0]
    if name == "sr":
        small = to_numpy01(y)
        best = None
        for order in (3,):
            for anti in (False, True):
                up = transform.resize(small, ref01.shape, order=order, mode="edge", anti_aliasing=anti)
                best = max(best or (-1, 0, ""), (*score(up, ref01), f"bicubic (anti_aliasing={anti})"))
        from PIL import Image

        pil = np.asarray(Image.fromarray((np.clip(small, 0, 1) * 255 + 0.5).astype(np.uint8)).resize(
            ref01.shape[1::-1], Image.Resampling.BICUBIC), dtype=np.float64) / 255
        best = max(best, (*score(pil, ref01), "bicubic (PIL)"))
        return best[2], best[0], best[1]
    if name == "inpaint-random":
        img = to_numpy01(op.y_to_image(y))
        missing = op.mask.cpu().numpy() == 0
        out = restoration.inpaint_biharmonic(img, missing, channel_axis=-1)
        p, s = score(out, ref01)
        return "inpaint_biharmonic", p, s
    if name == "deblur-gauss":
        img = to_numpy01(y)
        k = op.kernel.cpu().numpy()
        psf = np.outer(k, k)
        best = (-1.0, 0.0, "")
        for balance in np.logspace(-4, 0, 17):
            out = np.stack([restoration.wiener(img[..., c], psf, balance, clip=False) for c in range(3)], -1)
            best = max(best, (*score(out, ref01), f"wiener (balance={balance:.2g})"))
        rng = np.random.default_rng(0)
        out = np.stack([restoration.unsupervised_wiener(img[..., c], psf, clip=False, rng=rng)[0]
                        for c in range(3)], -1)
        best = max(best, (*score(out, ref01), "unsupervised_wiener"))
        return best[2], best[0], best[1]
    if name == "denoise":
        img = to_numpy01(y)
        best = (-1.0, 0.0, "")
        for weight in np.linspace(0.02, 0.3, 15):
            out = restoration.denoise_tv_chambolle(img, weight=weight, channel_axis=-1)
            best = max(best, (*score(out, ref01), f"tv_chambolle (weight={weight:.2f})"))
        return best[2], best[0], best[1]
    raise ValueError(task)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="bundled")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="override the presets' steps")
    parser.add_argument("--tasks", default=",".join(t for t, _ in TASKS))
    parser.add_argument("--out", default="benchmarks/results/quality.json")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    refuse_existing(args, args.out)

    prior = load_prior(args.prior, progress=False).eval()
    wanted = args.tasks.split(",")
    rows = []
    for task, noise in TASKS:
        if task not in wanted:
            continue
        for i, (name, img) in enumerate(held_out_images()):
            crop = center_crop(img, args.size)
            x = to_tensor(crop)
            ref01 = crop.astype(np.float64) / 255
            seed = 100 + i
            t0 = time.perf_counter()
            r = restore(prior, x, task, 2 * noise, seed=seed, steps=args.steps)
            base_name, base_psnr, base_ssim = baseline(task, r.operator, r.y, ref01)  # the solver's measurement
            rows.append({"task": r.task, "sigma_y": noise, "image": name, "reddiff_psnr": r.psnr,
                         "reddiff_ssim": r.ssim, "baseline": base_name, "baseline_psnr": base_psnr,
                         "baseline_ssim": base_ssim, "seconds": round(r.seconds, 2), "solver": r.solver,
                         "wall": round(time.perf_counter() - t0, 2)})
            print(f"{r.task:<20} {name:<10} RED-diff {r.psnr:6.2f} dB  {base_name:<34} {base_psnr:6.2f} dB",
                  file=sys.stderr)
    summary = []
    print(f"\n{'task':<20} {'noise':>5} {'RED-diff dB':>11} {'SSIM':>6} {'baseline':<24} {'dB':>6} {'SSIM':>6} "
          f"{'gain dB':>7} {'s/image':>7}")
    for task, noise in TASKS:
        sel = [r for r in rows if r["task"].split(":")[0] == task.split(":")[0]]
        if not sel:
            continue
        m = {k: float(np.mean([r[k] for r in sel])) for k in ("reddiff_psnr", "reddiff_ssim", "baseline_psnr",
                                                              "baseline_ssim", "seconds")}
        base_kind = sel[0]["baseline"].split(" ")[0]
        gain = m["reddiff_psnr"] - m["baseline_psnr"]
        summary.append({"task": sel[0]["task"], "sigma_y": noise, **m, "gain_db": gain, "baseline": base_kind})
        print(f"{sel[0]['task']:<20} {noise:>5} {m['reddiff_psnr']:>11.2f} {m['reddiff_ssim']:>6.3f} "
              f"{base_kind:<24} {m['baseline_psnr']:>6.2f} {m['baseline_ssim']:>6.3f} {gain:>+7.2f} "
              f"{m['seconds']:>7.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"prior": prior.info.get("name"), "prior_sha256": prior.info.get("sha256"),
                               "size": args.size, "images": [n for n, _ in held_out_images()],
                               "torch": torch.__version__, "threads": torch.get_num_threads(),
                               "summary": summary, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
