"""Diverse estimates: how many posterior modes a group of RED-diff samples covers, with and without repulsion, and
the spread map of a box inpainting.

1. The exact Gaussian-mixture posterior of :func:`reddiff.tools.gmm.ring_problem` (8 equal modes, 8 samples per
   measurement, ``--trials`` measurements): mean number of modes holding a sample and the share of samples inside
   a mode (:func:`reddiff.tools.gmm.modes_covered`), for each repulsion strength.
2. Box inpainting (``inpaint-box``) of 128 px centre crops of the held-out pictures with the bundled prior and its
   preset, 4 samples each, without and with repulsion: PSNR of the samples' mean and of each sample, the mean
   spread, and a picture (``--picture``) of measurement | samples | mean | spread | ground truth per row.

    python benchmarks/diversity.py --out benchmarks/results/diversity.json --picture docs/diversity.png
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
from reddiff.io import heat_map, make_grid, save_image
from reddiff.solvers import RedDiff
from reddiff.tools.data import held_out_images
from reddiff.tools.gmm import modes_covered, ring_problem


def mixture_table(strengths: list[float], trials: int, samples: int) -> list[dict]:
    rows = []
    for gamma in strengths:
        covered, inside = [], []
        for trial in range(trials):
            prior, problem, post = ring_problem(trial, samples)
            gens = [torch.Generator().manual_seed(1000 * trial + i) for i in range(samples)]
            c, f = modes_covered(post, RedDiff(steps=100, lr=0.1, lam=0.25, repulsion=gamma)(prior, problem, gens))
            covered.append(c)
            inside.append(f)
        rows.append({"repulsion": gamma, "modes_covered": float(np.mean(covered)), "inside": float(np.mean(inside)),
                     "trials": trials, "samples": samples, "modes": 8})
        print(f"mixture  repulsion {gamma:<5g} modes covered {np.mean(covered):.2f} of 8  inside {np.mean(inside):.3f}",
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="bundled")
    parser.add_argument("--strengths", default="0,0.3,1,3", help="repulsion strengths on the mixture")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--image-strengths", default="0,0.1", help="repulsion strengths on the pictures")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=4, help="samples per picture")
    parser.add_argument("--out", default="benchmarks/results/diversity.json")
    parser.add_argument("--picture", default="docs/diversity.png")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    refuse_existing(args, args.out, args.picture)

    mixture = mixture_table([float(g) for g in args.strengths.split(",")], args.trials, 8)
    prior = load_prior(args.prior, progress=False).eval()
    images, tiles, labels = [], [], []
    for gamma in (float(g) for g in args.image_strengths.split(",")):
        for i, (name, img) in enumerate(held_out_images()):
            x = to_tensor(center_crop(img, args.size))
            r = restore(prior, x, "inpaint-box", 0.0, seed=200 + i, num_samples=args.samples, repulsion=gamma)
            spread = float(r.spread.mean()) / 2  # 0..1 pixel units
            images.append({"image": name, "repulsion": gamma, "psnr_mean_of_samples": r.psnr,
                           "psnr_samples": r.sample_psnrs, "spread_mean": spread, "settings": r.solver})
            print(f"inpaint-box  {name:<10} repulsion {gamma:<5g} mean-of-samples {r.psnr:6.2f} dB  samples "
                  f"{np.mean(r.sample_psnrs):6.2f} dB  spread {spread:.4f}", flush=True)
            row = [r.measurement_image, *[s[None] for s in r.samples], r.estimate, heat_map(r.spread, 0.5), r.clean]
            tiles += row
            labels += ["measurement", *[f"sample {k + 1}" for k in range(args.samples)], "mean",
                       f"spread (γ {gamma:g})", "ground truth"]
    width = args.samples + 4
    rows = [make_grid(tiles[k : k + width], labels[k : k + width]) for k in range(0, len(tiles), width)]
    picture = Path(args.picture)
    picture.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(rows, dim=1), picture)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"mixture": mixture, "inpaint_box": images,
                               "spread_scale": "heat map from 0 (black) to 0.25 in 0..1 pixel units (yellow)"},
                              indent=2))
    print(f"wrote {out} and {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
