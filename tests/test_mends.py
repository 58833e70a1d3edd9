"""What a new user hit, mended: every bad input is one line with exit 2 and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from reddiff import ReddiffError, load_prior, make_operator
from reddiff.cli import main
from reddiff.errors import OperatorError, UserCodeError
from reddiff.experiment import ImageLocks


def _one_line(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture()
def prior_args(adm_fixtures):
    return ["--prior", str(adm_fixtures / "tiny_a.pt"), "--no-progress"]


def test_a_second_run_into_the_same_images_is_refused_while_the_first_writes(capsys, tmp_path, small_image,
                                                                              prior_args):
    out = tmp_path / "o"
    out.mkdir()
    with ImageLocks(out, ["coffee"]):  # another run holds the image
        code = main(["solve", "--task", "sr:2", "--input", str(small_image), "--output", str(out), "--steps", "2",
                     *prior_args])
        _one_line(code, capsys.readouterr().err, "coffee", "being written by another reddiff run")
    assert not (out / "coffee").exists()
    assert main(["solve", "--task", "sr:2", "--input", str(small_image), "--output", str(out), "--steps", "2",
                 *prior_args]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["coffee"]  # the lock file is gone


def test_an_unwritable_output_folder_fails_before_any_work(capsys, tmp_path, small_image, prior_args, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["solve", "--task", "sr:2", "--input", str(small_image), "--output", str(blocker / "sub"),
                 "--steps", "2", *prior_args])
    _one_line(code, capsys.readouterr().err, "cannot write to output folder", "sub")
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    for cmd in (["solve", "--steps", "2", *prior_args], ["degrade"], ["compare", "--steps", "2", *prior_args]):
        code = main([cmd[0], "--task", "sr:2", "--input", str(small_image), "--output", str(tmp_path / "new" / "o"),
                     *cmd[1:]])
        _one_line(code, capsys.readouterr().err, "cannot write to output folder", "Read-only file system")
        assert not (tmp_path / "new").exists(), cmd[0]  # the folders it made are removed again


def test_bench_output_that_is_a_folder(capsys, tmp_path):
    _one_line(main(["bench", "--output", str(tmp_path)]), capsys.readouterr().err, "is a folder", "bench.json")


def test_a_user_operator_failing_mid_run_names_itself_and_the_step(capsys, tmp_path, small_image, prior_args):
    op_file = tmp_path / "flaky.py"
    op_file.write_text(
        "calls = [0]\n\n"
        "def make(shape):\n"
        "    def forward(x):\n"
        "        calls[0] += 1\n"
        "        if calls[0] == 6:\n"
        "            raise ValueError('the lens fell off')\n"
        "        return x[..., ::2, ::2]\n"
        "    return forward\n")
    argv = ["solve", "--task", f"{op_file}:make", "--input", str(small_image), "--output", str(tmp_path / "o"),
            "--init", "zeros", "--steps", "5", *prior_args]
    code = main(argv)
    err = capsys.readouterr().err
    # two probe calls at load, the measurement, then step 3 of RED-diff's loop
    _one_line(code, err, "flaky.py:make", "ValueError: the lens fell off", "RED-diff step 3 of 5")
    assert not (tmp_path / "o").exists()
    code = main([*argv, "--debug"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "the lens fell off" in err.strip().splitlines()[-1]


def test_a_user_operator_declared_linear_must_be(tmp_path):
    f = tmp_path / "ops.py"
    f.write_text("import torch\n\n"
                 "def bent(shape):\n"
                 "    def forward(x):\n"
                 "        return torch.tanh(x[..., ::2, ::2])\n"
                 "    forward.linear = True\n"
                 "    return forward\n\n"
                 "def straight(shape):\n"
                 "    def forward(x):\n"
                 "        return 0.5 * x[..., ::2, ::2]\n"
                 "    forward.linear = True\n"
                 "    return forward\n\n"
                 "def moody(shape):\n"
                 "    n = [0]\n"
                 "    def forward(x):\n"
                 "        n[0] += 1\n"
                 "        return x[..., ::2, ::2] if n[0] < 4 else x\n"
                 "    return forward\n")
    with pytest.raises(OperatorError, match="declared linear .* but is not") as err:
        make_operator(f"{f}:bent", (3, 8, 8))
    assert "\n" not in str(err.value)
    assert make_operator(f"{f}:straight", (3, 8, 8)).linear
    op = make_operator(f"{f}:moody", (3, 8, 8))
    x = torch.zeros(1, 3, 8, 8)
    op.A(x)
    with pytest.raises(UserCodeError, match=r"returned \[1, 3, 8, 8\] .* \[1, 3, 4, 4\] when it was loaded"):
        op.A(x)


def test_degrade_overwrite_replaces_the_whole_record(capsys, tmp_path, small_image):
    out = tmp_path / "d"
    assert main(["degrade", "--task", "inpaint-random:0.5", "--input", str(small_image), "--output", str(out)]) == 0
    assert (out / "coffee.mask.png").is_file()
    assert main(["degrade", "--task", "sr:2", "--input", str(small_image), "--output", str(out)]) == 2
    assert main(["degrade", "--task", "sr:2", "--input", str(small_image), "--output", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["coffee.json", "coffee.png"]  # no stale mask
    assert json.loads((out / "coffee.json").read_text())["task"]["task"] == "sr:2"


def test_demo_refuses_to_overwrite_an_earlier_demo(capsys, tmp_path, small_image, prior_args):
    argv = ["demo", "--input", str(small_image), "--task", "sr:2", "--steps", "1", "--output", str(tmp_path / "d"),
            *prior_args]
    assert main(argv) == 0
    before = (tmp_path / "d/demo.json").read_text()
    capsys.readouterr()
    _one_line(main(argv), capsys.readouterr().err, "already", "--overwrite")
    assert (tmp_path / "d/demo.json").read_text() == before
    assert main([*argv, "--overwrite"]) == 0


def test_api_misuse_is_one_clear_error():
    from reddiff import RedDiff

    with pytest.raises(ReddiffError, match="prior must be a name .* got None"):
        load_prior(None)
    with pytest.raises(ReddiffError, match="steps must be an integer >= 1, got 2.5"):
        RedDiff(steps=2.5)


def test_a_one_line_error_has_one_prefix(capsys, tmp_path):
    code = main(["solve", "--task", "sr:4", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--lr", "-1"])
    err = capsys.readouterr().err
    _one_line(code, err, "--lr")
    assert err.startswith("reddiff: error: ") and err.count("error:") == 1


def test_torchrun_error_on_one_rank_stops_every_rank_with_one_line(tmp_path, small_image, adm_fixtures):
    """Two processes into a folder where one image was made with other settings: one line, no collective error."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    img = Image.open(small_image)
    img.save(folder / "a.png")
    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "b.png")
    base = ["solve", "--task", "sr:2", "--input", str(folder), "--prior", str(adm_fixtures / "tiny_a.pt"),
            "--steps", "2", "--no-progress", "--output", str(tmp_path / "o")]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    assert main([*base[:-2], "--input", str(folder / "b.png"), "--output", str(tmp_path / "o")]) == 0
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                          "--nproc-per-node", "2", "-m", "reddiff", *base, "--seed", "1"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode != 0
    ours = [ln for ln in run.stderr.splitlines() if ln.startswith("reddiff:")]
    assert len(ours) == 1 and "rank 1: outputs in" in ours[0] and "other settings" in ours[0], run.stderr[-2000:]
    assert "gloo" not in run.stderr.lower() and "Connection" not in run.stderr
    assert not (tmp_path / "o/a").exists()  # rank 0's image was not started either


def test_json_printed_by_the_cli_is_standard(capsys, tmp_path):
    img = tmp_path / "same.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(img)
    assert main(["eval", "--pred", str(tmp_path), "--ref", str(img), "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["psnr"] is None  # identical images: an infinite PSNR is null
