"""Golden numbers: short, seeded runs of every solver whose results must never change by accident.

Each case runs one solver on one small problem (the tiny ADM fixture or the bundled prior at 32 px) with fixed
seeds and records the sum and the maximum of the estimate. ``tests/test_golden.py`` checks them to 1e-5 (``RTOL``
for the few that vary with the CPU); this file rewrites them (only when a change of results is intended and
explained in its commit):

    python tests/golden.py --write
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden.json"
FIXTURES = HERE.parents[1] / "shared" / "fixtures" / "adm"
BUNDLED_PRESETS = HERE.parent / "src" / "reddiff" / "weights" / "bundled.presets.json"

#: (case name, prior, task, sigma_y in [-1, 1] units, noise spec, solver, solver fields, batch)
CASES: list[tuple[str, str, str, float, str, str, dict, int]] = [
    ("tiny/reddiff/sr", "tiny", "sr:4", 0.05, "gaussian", "reddiff", {"steps": 5}, 1),
    ("tiny/reddiff/inpaint-classical", "tiny", "inpaint-random:0.5", 0.0, "gaussian", "reddiff",
     {"steps": 5, "init": "classical", "weighting": "const", "lr_schedule": "cosine", "t_max": 50, "lam": 0.05,
      "lr": 0.05}, 1),
    ("tiny/reddiff/deblur-paper", "tiny", "deblur-gauss", 0.05, "gaussian", "reddiff",
     {"steps": 5, "data_term": "paper", "weighting": "sqrt"}, 1),
    ("tiny/reddiff/poisson", "tiny", "denoise", 0.0, "poisson:30", "reddiff", {"steps": 5, "lr": 0.05}, 1),
    ("tiny/reddiff/composite-random-order", "tiny", "sr:2+inpaint-random:0.3", 0.02, "gaussian", "reddiff",
     {"steps": 5, "sigma_x0": 0.1, "order": "random", "order_seed": 3, "lr_schedule": "linear"}, 1),
    ("tiny/reddiff/hdr", "tiny", "hdr", 0.02, "gaussian", "reddiff", {"steps": 5, "lr": 0.2, "clip_x0": True}, 1),
    ("tiny/reddiff/batch2-sgd", "tiny", "inpaint-box", 0.02, "gaussian", "reddiff",
     {"steps": 4, "optimizer": "sgd", "optimizer_kwargs": {"momentum": 0.9}, "lr": 0.5}, 2),
    ("tiny/dps/sr", "tiny", "sr:4", 0.05, "gaussian", "dps", {"steps": 5, "zeta": 0.1}, 1),
    ("tiny/dps/poisson", "tiny", "sr:2", 0.0, "poisson:50", "dps", {"steps": 5, "zeta": 0.05}, 1),
    ("tiny/pigdm/inpaint", "tiny", "inpaint-random:0.5", 0.02, "gaussian", "pigdm", {"steps": 5}, 1),
    ("tiny/ddrm/sr", "tiny", "sr:4", 0.05, "gaussian", "ddrm", {"steps": 5}, 2),
    ("tiny/ddim/eta0", "tiny", "denoise", 0.0, "gaussian", "ddim", {"steps": 5}, 1),
    ("tiny/ddim/eta1", "tiny", "denoise", 0.0, "gaussian", "ddim", {"steps": 5, "eta": 1.0}, 2),
    ("bundled/reddiff/paper", "bundled", "sr:4", 0.02, "gaussian", "reddiff", {"steps": 10}, 1),
    ("bundled/dps/sr", "bundled", "sr:4", 0.02, "gaussian", "dps", {"steps": 10}, 1),
    ("bundled/pigdm/sr", "bundled", "sr:4", 0.02, "gaussian", "pigdm", {"steps": 10}, 1),
    # motion blur through conjugate gradients at σ_y 0.2 and DDRM deblurring with the bundled prior: at σ_y 0.05 with
    # the tiny network their results moved by up to 24 % with the CPU's vector instructions (ATEN_CPU_CAPABILITY
    # default / avx2 / avx512); these agree across the three to 1e-6
    ("bundled/pigdm/motion-cg", "bundled", "deblur-motion", 0.2, "gaussian", "pigdm", {"steps": 10, "cg_iters": 20}, 1),
    ("bundled/ddrm/deblur", "bundled", "deblur-gauss", 0.05, "gaussian", "ddrm", {"steps": 5, "eta": 0.5}, 1),
    ("bundled/ddrm/inpaint", "bundled", "inpaint-random:0.8", 0.0, "gaussian", "ddrm", {"steps": 10}, 1),
    ("bundled/ddim/sample", "bundled", "denoise", 0.0, "gaussian", "ddim", {"steps": 10}, 1),
] + [
    # RED-diff with the bundled prior's shipped presets (read from the presets file, as the library does)
    (f"bundled/reddiff/preset-{task}", "bundled", task, sigma, "gaussian", "reddiff", {"preset": task}, 1)
    for task, sigma in (("sr:4", 0.02), ("inpaint-random:0.8", 0.0), ("deblur-gauss", 0.02), ("denoise", 0.2))
]


#: relative tolerance of the check where 1e-5 would test the CPU rather than the code: ΠGDM inpainting's sum varies by
#: up to 2e-3 across CPUs (-107.12 / -107.13 / -107.11 with ATEN_CPU_CAPABILITY default / avx2 / avx512; -106.94 on
#: another machine), while a change of the algorithm moves it by far more
RTOL = {"tiny/pigdm/inpaint": 1e-2}
DEFAULT_RTOL = 1e-5


def clean_image(batch: int) -> torch.Tensor:
    """32x32 crops of a scikit-image test picture (coffee), in [-1, 1], ``[batch, 3, 32, 32]``."""
    from skimage import data

    img = data.coffee()
    crops = [img[100:164:2, 200 + 16 * i : 264 + 16 * i : 2] for i in range(batch)]
    arr = np.stack(crops).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2) * 2 - 1


def load(prior_name: str):
    import reddiff

    if prior_name == "tiny":
        config = torch.load(FIXTURES / "tiny_a_io.pt", weights_only=True)["config"]
        return reddiff.load_prior(FIXTURES / "tiny_a.pt", config=config, progress=False).eval()
    return reddiff.load_prior("bundled", progress=False).eval()


def preset_fields(task: str, sigma_y: float) -> dict:
    """The shipped preset of ``task`` at ``sigma_y`` ([-1, 1] units), chosen by the library's own rule."""
    from reddiff.tools.presets import preset_for

    return preset_for(json.loads(BUNDLED_PRESETS.read_text()), task, sigma_y)


def run_case(case, priors: dict) -> dict[str, float]:
    import reddiff
    from reddiff.noise import parse_noise
    from reddiff.solvers import SOLVERS

    name, prior_name, task, sigma_y, noise_spec, solver_name, fields, batch = case
    if prior_name not in priors:
        priors[prior_name] = load(prior_name)
    prior = priors[prior_name]
    x = clean_image(batch)
    ops, ys = [], []
    noise = parse_noise(noise_spec, sigma_y)
    for i in range(batch):
        g = torch.Generator().manual_seed(10 + i)
        op = reddiff.make_operator(task, tuple(x.shape[1:]), generator=g)
        with torch.no_grad():
            ys.append(noise.sample(op.A(x[i : i + 1]), g))
        ops.append(op)
    op = ops[0] if task in ("sr:4", "denoise") else reddiff.operators.stack(ops)  # deterministic: one for the batch
    y = torch.cat(ys)
    if "preset" in fields:
        fields = preset_fields(fields["preset"], sigma_y)
    solver = SOLVERS[solver_name](**fields)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(batch)]
    out = solver(prior, reddiff.Problem(y, op, noise.sigma_y, noise=noise), generator=gens)
    return {"sum": float(out.double().sum()), "max": float(out.double().max())}


def compute(cases=CASES) -> dict[str, dict[str, float]]:
    priors: dict = {}
    return {case[0]: run_case(case, priors) for case in cases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"rewrite {GOLDEN.name}")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    values = compute()
    for k, v in values.items():
        print(f"{k:<44} sum {v['sum']:+.6f}  max {v['max']:+.6f}")
    if args.write:
        GOLDEN.write_text(json.dumps(values, indent=1) + "\n")
        print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
