"""Do the bundled prior's presets, swept on training crops, carry over to pictures they never saw? RED-diff with
each task's preset against RED-diff with the paper's settings at the same 100 steps, on the 20 held-out tiles of
``evaluate_heldout.py`` (64 px), through ``reddiff evaluate``. Not a timed test.

    python benchmarks/presets_heldout.py --work /tmp/presets-heldout --out benchmarks/results/presets_heldout.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import add_overwrite, refuse_existing
from evaluate_heldout import write_sets

from reddiff.cli import main as reddiff

#: (task, sigma_y in 0..1 units): tasks whose presets were swept last, without a held-out check until now.
TASKS = (("deblur-motion", 0.0), ("inpaint-box", 0.0), ("colorize", 0.0), ("hdr", 0.0), ("jpeg:75", 0.0))
#: (label, extra flags): the preset, and the paper's settings cut to the preset's 100 steps.
SETTINGS = (("preset", []), ("paper, 100 steps", ["--profile", "paper", "--steps", "100"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/reddiff-presets-heldout")
    parser.add_argument("--out", default="benchmarks/results/presets_heldout.json")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    refuse_existing(args, args.out)
    tiles = write_sets(Path(args.work))["heldout20"]
    rows = []
    for task, sigma_y in TASKS:
        row = {"task": task, "sigma_y": sigma_y}
        for label, flags in SETTINGS:
            out = Path(args.work) / f"{task.replace(':', '')}_{label.split(',')[0]}"
            code = reddiff(["evaluate", "--data", str(tiles), "--task", task, "--sigma-y", str(sigma_y), "--size",
                            "64", "--solvers", "reddiff", "--metrics", "psnr,ssim", "--device", "cpu", "--output",
                            str(out), "--no-progress", *flags])
            if code != 0:
                return code
            s = json.loads((out / "evaluation.json").read_text())["solvers"]["reddiff"]
            row[label] = {"psnr": s["psnr"], "ssim": s["ssim"], "seconds": s["seconds"]}
        rows.append(row)
        p, q = row["preset"]["psnr"], row["paper, 100 steps"]["psnr"]
        print(f"{task:<14} preset {p['mean']:.2f} ± {p['se']:.2f}   paper@100 {q['mean']:.2f} ± {q['se']:.2f}   "
              f"gain {p['mean'] - q['mean']:+.2f} dB", flush=True)
    Path(args.out).write_text(json.dumps({"images": 20, "size": 64, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
