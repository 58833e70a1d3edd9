"""``reddiff evaluate`` with the bundled prior on held-out pictures, every solver at the same 100 network
evaluations: the README's evaluation table. Not a timed test.

Two sets, neither ever trained on nor used to choose a setting:

- ``heldout3``: the three held-out pictures (astronaut, chelsea, coffee), centre-cropped and resized to 128 px by
  the protocol's rule;
- ``heldout20``: 20 tiles of 64 px from four held-out photographs (those three and matplotlib's grace_hopper), each
  photograph first resized (bicubic) so that its short side is 128 px, then cut into non-overlapping tiles.

LPIPS, FID and KID are computed where their published weights are found (``reddiff list metrics``); otherwise the
table says n/a. FID and KID on 20 images are dominated by their small-sample bias: read them as a ranking at most.

    python benchmarks/evaluate_heldout.py --work /tmp/heldout --out benchmarks/results/evaluate_heldout.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from common import add_overwrite, refuse_existing
from PIL import Image

from reddiff.cli import main as reddiff
from reddiff.tools.data import held_out_images

#: (set, task, sigma_y in 0..1 units, size): the DPS noise level for SR and blur, RED-diff's noise-free inpainting.
RUNS = (
    ("heldout3", "sr:4", 0.025, 128),
    ("heldout20", "sr:4", 0.025, 64),
    ("heldout20", "inpaint-freeform", 0.0, 64),
    ("heldout20", "deblur-gauss", 0.025, 64),
)
TILE, SHORT_SIDE = 64, 128


def photographs() -> list[tuple[str, np.ndarray]]:
    """The held-out photographs as uint8 RGB arrays."""
    pics = held_out_images()
    try:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            pics.append(("grace_hopper", np.asarray(Image.open(f).convert("RGB"))))
    except (ImportError, OSError):
        print("matplotlib's grace_hopper is not available: the tile set has fewer images", file=sys.stderr)
    return pics


def write_sets(work: Path) -> dict[str, Path]:
    """Write both sets as PNG folders under ``work``."""
    three, tiles = work / "heldout3", work / "heldout20"
    three.mkdir(parents=True, exist_ok=True)
    tiles.mkdir(parents=True, exist_ok=True)
    for name, arr in photographs():
        im = Image.fromarray(arr)
        if name != "grace_hopper":
            im.save(three / f"{name}.png")
        scale = SHORT_SIDE / min(im.size)
        small = np.asarray(im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC))
        for r in range(small.shape[0] // TILE):
            for c in range(small.shape[1] // TILE):
                tile = small[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]
                Image.fromarray(tile).save(tiles / f"{name}_{r}{c}.png")
    return {"heldout3": three, "heldout20": tiles}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/reddiff-heldout", help="folder for the sets and the runs")
    parser.add_argument("--solvers", default="reddiff,dps,pigdm,ddrm")
    parser.add_argument("--steps", default="100", help="steps of every solver (RED-diff's presets use 100)")
    parser.add_argument("--out", default="benchmarks/results/evaluate_heldout.json")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    refuse_existing(args, args.out)
    work = Path(args.work)
    sets = write_sets(work)
    results = []
    for set_name, task, sigma_y, size in RUNS:
        out = work / f"{set_name}_{task.replace(':', '')}"
        t0 = time.perf_counter()
        code = reddiff(["evaluate", "--data", str(sets[set_name]), "--task", task, "--sigma-y", str(sigma_y),
                        "--size", str(size), "--solvers", args.solvers, "--steps", args.steps, "--device", "cpu",
                        "--output", str(out), "--no-progress"])
        if code != 0:
            return code
        report = json.loads((out / "evaluation.json").read_text())
        results.append({"set": set_name, "task": task, "sigma_y": sigma_y, "size": size, "images": report["images"],
                        "metrics": report["metrics"], "solvers": report["solvers"], "table": report["table"],
                        "wall_seconds": round(time.perf_counter() - t0, 1)})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"steps": int(args.steps), "runs": results}, indent=2) + "\n")
    for r in results:
        print(f"\n{r['set']} ({r['images']} images, {r['size']} px), {r['task']}, sigma_y {r['sigma_y']}")
        print(r["table"], end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
