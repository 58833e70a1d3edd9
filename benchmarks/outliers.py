"""Outlier benchmark: Gaussian deblurring whose measurement has a share of salt-and-pepper outliers, restored by
RED-diff with the squared data term and with the robust ones (``--robust huber``, ``--robust cauchy``).

On centre crops of the held-out pictures (astronaut, chelsea, coffee): ``deblur-gauss`` at sigma_y 0.01 (0..1 pixel
units) with 0 %, 2 % and 10 % of the measured pixels replaced by -1 or +1 (``--outliers``), the bundled prior and its
preset (nothing tuned here). Prints a table of mean PSNR/SSIM and writes JSON. Not a timed test.

    python benchmarks/outliers.py --out benchmarks/results/outliers.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from common import add_overwrite, refuse_existing
from quality import center_crop, to_tensor

from reddiff import load_prior
from reddiff.experiment import restore
from reddiff.noise import GaussianNoise, Outliers
from reddiff.tools.data import held_out_images

FRACTIONS = (0.0, 0.02, 0.1)
TERMS = ("none", "huber", "cauchy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="bundled")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--task", default="deblur-gauss")
    parser.add_argument("--sigma-y", type=float, default=0.01, help="0..1 pixel units")
    parser.add_argument("--out", default="benchmarks/results/outliers.json")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    refuse_existing(args, args.out)

    prior = load_prior(args.prior, progress=False).eval()
    rows = []
    for fraction in FRACTIONS:
        noise = Outliers(GaussianNoise(2 * args.sigma_y), fraction)
        for term in TERMS:
            for i, (name, img) in enumerate(held_out_images()):
                x = to_tensor(center_crop(img, args.size))
                r = restore(prior, x, args.task, noise, seed=100 + i, robust=term)
                rows.append({"outliers": fraction, "robust": term, "image": name, "psnr": r.psnr, "ssim": r.ssim,
                             "seconds": round(r.seconds, 2)})
                print(f"{fraction:>5} {term:<7} {name:<10} {r.psnr:6.2f} dB", file=sys.stderr)
    summary = []
    print(f"\n{'outliers':>8} " + " ".join(f"{t + ' dB':>12} {'SSIM':>6}" for t in TERMS))
    for fraction in FRACTIONS:
        line = f"{fraction:>8.0%} "
        for term in TERMS:
            sel = [r for r in rows if r["outliers"] == fraction and r["robust"] == term]
            p, s = float(np.mean([r["psnr"] for r in sel])), float(np.mean([r["ssim"] for r in sel]))
            summary.append({"outliers": fraction, "robust": term, "psnr": p, "ssim": s})
            line += f"{p:>12.2f} {s:>6.3f} "
        print(line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"prior": prior.info.get("name"), "task": args.task, "sigma_y": args.sigma_y,
                               "size": args.size, "images": [n for n, _ in held_out_images()],
                               "torch": torch.__version__, "summary": summary, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
