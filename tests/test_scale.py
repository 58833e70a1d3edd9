"""Running over folders: multi-process sharding, interruption and resume, running out of memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from reddiff.cli import main


@pytest.fixture()
def folder(tmp_path, small_image):
    d = tmp_path / "imgs"
    d.mkdir()
    img = Image.open(small_image)
    for i, t in enumerate([None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM,
                           Image.Transpose.ROTATE_90]):
        (img if t is None else img.transpose(t)).save(d / f"img{i}.png")
    return d


def _estimates(d, names):
    return {n: np.asarray(Image.open(d / n / "estimate.png")) for n in names}


def test_two_processes_match_one(tmp_path, folder, adm_fixtures, run_reddiff):
    args = ["solve", "--task", "inpaint-random:0.5", "--input", str(folder), "--prior",
            str(adm_fixtures / "tiny_a.pt"), "--steps", "3", "--no-progress", "--json", "--sigma-y", "0.02"]
    one = run_reddiff(*args, "--output", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = run_reddiff(*args, "--output", tmp_path / "two", nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads([line for line in two.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["processes"] == 2 and len(summary["images"]) == 4
    names = [f"img{i}" for i in range(4)]
    a, b = _estimates(tmp_path / "one", names), _estimates(tmp_path / "two", names)
    for n in names:
        assert np.array_equal(a[n], b[n]), n
    metrics = json.loads((tmp_path / "two/metrics.json").read_text())
    assert metrics["psnr"] == pytest.approx(json.loads(one.stdout)["psnr"])


def test_killed_run_leaves_complete_files_and_resumes(tmp_path, folder, adm_fixtures, run_reddiff,
                                                      stop_after_first):
    out = tmp_path / "out"
    args = ["solve", "--task", "sr:2", "--input", str(folder), "--prior", str(adm_fixtures / "tiny_a.pt"), "--steps",
            "50", "--no-progress", "--output", str(out)]
    code, err = stop_after_first(args, out, "*/run.json")
    assert code == 143, err  # 128 + SIGTERM
    assert "resume" in err and len(err.strip().splitlines()) == 1
    finished = sorted(p.parent.name for p in out.glob("*/run.json"))
    assert 1 <= len(finished) < 4
    assert not list(out.rglob("*.part")), "no temporary files may be left behind"
    assert not list(out.glob(".*.lock")), "the image locks are released"
    for name in finished:
        assert {p.name for p in (out / name).iterdir()} == {"estimate.png", "measurement.png", "grid.png", "run.json"}
    # the same command again: finished images are skipped, the rest are done
    again = run_reddiff(*args, "--json", timeout=600)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["skipped"] == len(finished) and len(summary["images"]) == 4
    # identical to an uninterrupted run of the same command
    ref = run_reddiff(*args[:-1], tmp_path / "ref", timeout=600)
    assert ref.returncode == 0, ref.stderr
    names = [f"img{i}" for i in range(4)]
    a, b = _estimates(out, names), _estimates(tmp_path / "ref", names)
    for n in names:
        assert np.array_equal(a[n], b[n]), n


def test_out_of_memory_splits_the_batch(capsys, tmp_path, folder, adm_fixtures, monkeypatch):
    from reddiff.networks.adm import ADMUNet

    real_forward = ADMUNet.forward

    def forward(self, x, timesteps, y=None):
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_forward(self, x, timesteps, y)

    base = ["solve", "--task", "sr:2", "--input", str(folder), "--prior", str(adm_fixtures / "tiny_a.pt"),
            "--steps", "2", "--no-progress", "--json"]
    assert main([*base, "--output", str(tmp_path / "ref")]) == 0
    capsys.readouterr()
    monkeypatch.setattr(ADMUNet, "forward", forward)
    assert main([*base, "--output", str(tmp_path / "oom"), "--batch-size", "4"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert any("did not fit in memory" in n for n in summary["notes"]) and "--batch-size 2" in err
    names = [f"img{i}" for i in range(4)]
    a, b = _estimates(tmp_path / "ref", names), _estimates(tmp_path / "oom", names)
    for n in names:
        assert np.abs(a[n].astype(int) - b[n].astype(int)).max() <= 1
    # one image that does not fit: one clear line
    monkeypatch.setattr(ADMUNet, "forward", lambda self, x, t, y=None: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory")))
    code = main([*base, "--output", str(tmp_path / "oom1")])
    err = capsys.readouterr().err
    assert code == 2 and "out of memory" in err and len(err.strip().splitlines()) == 1
