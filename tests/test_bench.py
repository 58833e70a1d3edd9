"""reddiff bench and the network fast paths (precision, channels-last)."""

from __future__ import annotations

import json

import pytest
import torch

from reddiff import Problem, RedDiff, ReddiffError, make_operator, psnr
from reddiff.cli import main
from reddiff.runtime import Runtime, runtime_of, use_runtime
from reddiff.tools.bench import BenchConfig, format_table, run_bench


def test_bench_report(tmp_path, adm_fixtures):
    cfg = BenchConfig(network=str(adm_fixtures / "tiny_a.pt"), size=16, batch_sizes=(1, 2), warmup=1, repeats=2)
    rep = run_bench(cfg)
    methods = {(r["batch"], r["method"]) for r in rep["rows"]}
    assert methods == {(b, m) for b in (1, 2) for m in ("forward", "reddiff", "dps", "pigdm", "ddrm")}
    for r in rep["rows"]:
        assert r["seconds"] > 0 and r["images_per_s"] > 0 and r["peak_mb"] >= 0
    red = [r for r in rep["rows"] if r["method"] == "reddiff"]
    assert all(r["vs_dps"] > 0 for r in red)
    assert "forward" in format_table(rep)


def test_bench_cli(capsys, tmp_path, adm_fixtures):
    out = tmp_path / "b.json"
    code = main(["bench", "--network", str(adm_fixtures / "tiny_a.pt"), "--size", "16", "--batch-sizes", "1",
                 "--repeats", "1", "--warmup", "0", "--solvers", "reddiff", "--output", str(out)])
    assert code == 0 and "reddiff" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"][1]["method"] == "reddiff"
    assert main(["bench", "--batch-sizes", "a,b"]) == 2
    assert main(["bench", "--solvers", "magic", "--network", str(adm_fixtures / "tiny_a.pt")]) == 2


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_stays_close_to_fp32(tiny_prior, small_image, precision):
    from reddiff.io import load_image

    x = load_image(small_image)
    op = make_operator("sr:2", tuple(x.shape[1:]))
    y = op(x)
    solver = RedDiff(steps=10, lr=0.1)
    ref = solver(tiny_prior, Problem(y, op, 0.0), generator=torch.Generator().manual_seed(0))
    original = tiny_prior.network
    try:
        use_runtime(tiny_prior, Runtime(precision=precision, channels_last=True))
        assert runtime_of(tiny_prior).precision == precision
        low = solver(tiny_prior, Problem(y, op, 0.0), generator=torch.Generator().manual_seed(0))
    finally:
        tiny_prior.network = original
    assert low.dtype == torch.float32
    # the same run in reduced precision: within 30 dB of the fp32 result (PSNR between the two estimates)
    assert float(psnr((low.clamp(-1, 1) + 1) / 2, (ref.clamp(-1, 1) + 1) / 2)[0]) > 30


def test_unknown_precision(tiny_prior):
    with pytest.raises(ReddiffError, match="fp32, bf16, fp16"):
        Runtime(precision="int4")


def test_bench_ratio_pairs_each_step_with_a_forward(monkeypatch, adm_fixtures):
    """With a clock that advances one second per network call and stands still otherwise, a step that calls the
    network once is exactly one forward: the paired ratio is 1 for every solver, the step's interval excludes the
    forward timed beside it, and the forward row is one second."""
    import types

    from reddiff.tools import bench

    clock = [0.0]
    prior = bench.build_bench_prior(str(adm_fixtures / "tiny_a.pt"), torch.device("cpu"))
    net = prior.network

    class Ticking(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = net

        def forward(self, *args, **kwargs):
            clock[0] += 1.0
            return self.inner(*args, **kwargs)

    prior.network = Ticking()
    monkeypatch.setattr(bench, "build_bench_prior", lambda *_: prior)
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: clock[0],
                                                            strftime=__import__("time").strftime))
    rep = run_bench(BenchConfig(network="x", size=16, batch_sizes=(1,), warmup=1, repeats=3))
    rows = {r["method"]: r for r in rep["rows"]}
    assert rows["forward"]["seconds"] == 1.0
    for name in ("reddiff", "dps", "pigdm", "ddrm"):
        assert rows[name]["seconds"] == 1.0 and rows[name]["ratio"] == 1.0, rows[name]
        assert rows[name]["forward_seconds_paired"] == 1.0
