"""``reddiff eval``: PSNR/SSIM of predicted images against references, by the same rule as ``solve``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ReddiffError

NAME = "eval"
RANK = 5
HELP = "PSNR/SSIM of predicted images against references"
DESCRIPTION = ("Match images by file name (DIR/<name>.png or a solve output DIR/<name>/estimate.png) and report PSNR "
               "(dB) and SSIM per image and their means, by the rule `solve` reports with (so eval on solve's files "
               "gives the numbers solve printed). For the papers' protocol with every solver and LPIPS, FID and KID, "
               "see `reddiff evaluate`.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", metavar="DIR", required=True, help="predictions: a folder of images or solve output")
    p.add_argument("--ref", metavar="DIR", required=True, help="reference images: a file or folder")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from ..experiment import ESTIMATE, score
    from ..io import IMAGE_SUFFIXES, dumps, list_images, load_image

    refs = list_images(args.ref)
    pred_dir = Path(args.pred)
    if not pred_dir.is_dir():
        raise ReddiffError(f"--pred must be a folder, got {pred_dir}")
    rows, missing = [], []
    for r in refs:
        cands = [pred_dir / r.stem / ESTIMATE] + [pred_dir / f"{r.stem}{s}" for s in IMAGE_SUFFIXES]
        p = next((c for c in cands if c.is_file()), None)
        if p is None:
            missing.append(r.stem)
            continue
        a, b = load_image(p), load_image(r)
        if a.shape != b.shape:
            raise ReddiffError(f"{p} is {tuple(a.shape[-2:])} but {r} is {tuple(b.shape[-2:])}; sizes must match")
        rows.append({"name": r.stem, "pred": str(p), "ref": str(r), **score(a, b).to_dict()})
    if missing:
        raise ReddiffError(f"no prediction in {pred_dir} for {', '.join(missing[:3])}"
                           f"{' and more' if len(missing) > 3 else ''} (looked for NAME.png and NAME/{ESTIMATE})")
    mean_psnr = sum(r["psnr"] for r in rows) / len(rows)
    ssims = [r["ssim"] for r in rows if r["ssim"] is not None]
    out = {"images": rows, "psnr": mean_psnr, "ssim": sum(ssims) / len(ssims) if ssims else None}
    if args.json:
        print(dumps(out))
        return 0

    def fmt(v: float | None, spec: str) -> str:
        return format(v, spec) if v is not None else "-"

    print(f"{'image':<24} {'PSNR dB':>8} {'SSIM':>7}")
    for r in rows:
        print(f"{r['name'][:24]:<24} {fmt(r['psnr'], '.2f'):>8} {fmt(r['ssim'], '.4f'):>7}")
    print(f"{'mean':<24} {mean_psnr:>8.2f} {fmt(out['ssim'], '.4f'):>7}")
    return 0
