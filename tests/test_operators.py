"""Contract tests for reddiff.operators (CPU, float64 where precision matters)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from reddiff.errors import OperatorError, ReddiffError
from reddiff.operators import (
    TASKS,
    Bicubic,
    BlockAverage,
    Convolution2D,
    LinearOperator,
    Operator,
    SeparableBlur,
    SVDOperator,
    bicubic_matrix,
    box_mask,
    freeform_mask,
    gaussian_kernel_1d,
    load_mask,
    make_operator,
    motion_kernel,
    random_mask,
)

SHAPE = (3, 16, 16)
F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def checker_mask(shape: tuple[int, int, int] = SHAPE) -> torch.Tensor:
    h, w = shape[1:]
    return (torch.arange(h).view(-1, 1) + torch.arange(w).view(1, -1)) % 3 != 0


def build(task: str, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> Operator:
    mask = checker_mask(shape) if task == "inpaint-mask" else None
    return make_operator(task, shape, gen(seed), mask=mask).to(F64)


#: Nonlinear tasks (tested in test_nonlinear.py); every other task is linear with an SVD.
NONLINEAR_TASKS = {"phase-retrieval", "hdr", "jpeg", "quantize"}
ALL_TASKS = sorted(t for t in TASKS if t not in NONLINEAR_TASKS)
EXTRA_TASKS = ["sr:2", "bicubic:2", "inpaint-random:0.3", "deblur-gauss:1.5", "deblur-uniform:3"]
SVD_TASKS = [t for t in ALL_TASKS + EXTRA_TASKS if t != "deblur-motion"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def x_for(op: Operator, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, *op.x_shape, generator=gen(seed), dtype=F64)


def y_for(op: Operator, batch: int = 2, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, *op.y_shape, generator=gen(seed), dtype=F64)


def test_tasks_table() -> None:
    assert set(TASKS) == {
        "denoise", "inpaint-box", "inpaint-center", "inpaint-half", "inpaint-random", "inpaint-freeform",
        "inpaint-mask", "sr", "bicubic", "deblur-gauss", "deblur-uniform", "deblur-motion", "colorize",
        "phase-retrieval", "hdr", "jpeg", "quantize", "cs",
    }  # fmt: skip
    assert all(isinstance(v, str) and "\n" not in v and v for v in TASKS.values())


@pytest.mark.parametrize("task", ALL_TASKS + EXTRA_TASKS)
def test_adjoint_shapes_batch(task: str, device: torch.device) -> None:
    op = build(task).to(device)
    assert isinstance(op, LinearOperator) and op.linear
    assert not list(op.parameters())
    x, y = x_for(op, 3).to(device), y_for(op, 3).to(device)
    ax = op.A(x)
    assert ax.shape == (3, *op.y_shape) and ax.dtype == F64
    aty = op.A_adjoint(y)
    assert aty.shape == (3, *op.x_shape)
    lhs, rhs = float((ax * y).sum()), float((x * aty).sum())
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1e-3)
    # batch consistency: a batch equals its samples applied one by one
    torch.testing.assert_close(ax, torch.cat([op(x[i : i + 1]) for i in range(3)]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(aty, torch.cat([op.A_adjoint(y[i : i + 1]) for i in range(3)]), rtol=1e-12, atol=1e-12)
    json.dumps(op.params())
    assert "\n" not in op.describe() and op.task in op.describe()


@pytest.mark.parametrize("task", SVD_TASKS)
def test_svd_structure(task: str, device: torch.device) -> None:
    op = build(task).to(device)
    assert isinstance(op, SVDOperator)
    x = x_for(op).to(device)
    s = op.singulars()
    n, m, r = math.prod(op.x_shape), math.prod(op.y_shape), s.numel()
    assert s.dim() == 1 and r == op.r <= min(n, m) and bool((s >= 0).all())
    vx = op.Vt(x)
    assert vx.shape == (2, n)
    torch.testing.assert_close(op.V(vx), x, rtol=0, atol=1e-12)
    z = torch.randn(2, n, generator=gen(3), dtype=F64).to(device)
    torch.testing.assert_close(op.Vt(op.V(z)), z, rtol=0, atol=1e-12)
    torch.testing.assert_close(vx.norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
    zr = torch.randn(2, r, generator=gen(4), dtype=F64).to(device)
    u = op.U(zr)
    assert u.shape == (2, *op.y_shape)
    torch.testing.assert_close(op.Ut(u), zr, rtol=0, atol=1e-12)
    if r == m:
        y = y_for(op).to(device)
        torch.testing.assert_close(op.U(op.Ut(y)), y, rtol=0, atol=1e-12)
    # A = U S V^T, and the first r entries of Vt(x) are the ones s multiplies
    ax = op.A(x)
    assert rel(op.U(s * vx[:, :r]), ax) < 1e-12
    assert rel(SVDOperator.A(op, x), ax) < 1e-12
    assert rel(op.Ut(ax), s * vx[:, :r]) < 1e-12
    y = y_for(op).to(device)
    assert rel(SVDOperator.A_adjoint(op, y), op.A_adjoint(y)) < 1e-12
    assert rel(SVDOperator.A_dagger(op, y), op.A_dagger(y)) < 1e-10
    # pseudo-inverse
    assert rel(op.A(op.A_dagger(ax)), ax) < 1e-8


def test_pinv_rtol_cuts_small_singulars() -> None:
    op = build("deblur-gauss")
    y = op.A(x_for(op))
    default = op.A_dagger(y)
    regularised = op.A_dagger(y, rtol=1e-2)
    assert regularised.norm() < default.norm()
    assert rel(op.A(regularised), y) < 0.2


def test_conv2d_cg_pinv() -> None:
    op = Convolution2D(motion_kernel(7, 0.5, gen(0)), (3, 8, 8)).to(F64)
    x = x_for(op)
    ax = op.A(x)
    xd = op.A_dagger(ax, cg_iters=600, cg_tol=1e-13)
    assert rel(op.A(xd), ax) < 1e-6
    # minimum norm: the pseudo-inverse solution is no longer than x itself
    assert float(xd.norm()) <= float(x.norm()) * (1 + 1e-6)
    # matches the dense pseudo-inverse
    eye = torch.eye(8 * 8 * 3, dtype=F64).view(-1, 3, 8, 8)
    dense = op.A(eye).flatten(1).T
    expect = (torch.linalg.pinv(dense) @ ax.flatten(1).T).T.reshape(x.shape)
    assert rel(xd, expect) < 1e-5


def test_conv2d_start_is_the_tikhonov_solution() -> None:
    """The motion blur's start: (A^T A + d^2 I)^{-1} A^T y with d = INIT_RTOL * max |K(w)|, against the dense
    solve in float64."""
    from reddiff.operators.blur import INIT_RTOL

    op = Convolution2D(motion_kernel(7, 0.5, gen(0)), (2, 8, 9), cg_iters=500, cg_tol=1e-13).to(F64)
    y = op.A(x_for(op, 1)) + 0.01 * torch.randn(1, 2, 8, 9, generator=gen(2), dtype=F64)
    eye = torch.eye(2 * 8 * 9, dtype=F64).reshape(-1, 2, 8, 9)
    dense = op.A(eye).flatten(1).T
    d2 = (INIT_RTOL * float(torch.fft.rfft2(op.kernel, s=(8 + 7 - 1, 9 + 7 - 1)).abs().max())) ** 2
    expect = torch.linalg.solve(dense.T @ dense + d2 * torch.eye(dense.shape[1], dtype=F64), dense.T @ y.flatten())
    assert rel(op.initial_estimate(y), expect.reshape(y.shape)) < 1e-9
    assert rel(op.inverse_estimate(y), expect.reshape(y.shape)) < 1e-9  # what RED-diff's pinv start uses


def test_conv2d_matches_dense_convolution() -> None:
    k = torch.rand(5, 3, generator=gen(5), dtype=F64)
    op = Convolution2D(k, (1, 6, 7)).to(F64)
    x = x_for(op, 1)
    out = torch.zeros(6, 7, dtype=F64)
    for i in range(6):
        for j in range(7):
            for a in range(5):
                for b in range(3):
                    si, sj = i - (a - 2), j - (b - 1)
                    if 0 <= si < 6 and 0 <= sj < 7:
                        out[i, j] += k[a, b] * x[0, 0, si, sj]
    torch.testing.assert_close(op.A(x)[0, 0], out)


def test_separable_blur_equals_conv2d() -> None:
    k = gaussian_kernel_1d(9, 1.3)
    sep = SeparableBlur(k, (2, 10, 12)).to(F64)
    conv = Convolution2D(torch.outer(k, k), (2, 10, 12)).to(F64)
    x = x_for(sep)
    assert rel(sep.A(x), conv.A(x)) < 1e-12


def test_default_gaussian_on_32() -> None:
    op = make_operator("deblur-gauss", (3, 32, 32), gen()).to(F64)
    assert op.task == "deblur-gauss:3.0" and op.params()["kernel_size"] == 61
    x, y = x_for(op), y_for(op)
    lhs, rhs = float((op.A(x) * y).sum()), float((x * op.A_adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    conv = Convolution2D(torch.outer(op.kernel, op.kernel), op.x_shape).to(F64)
    assert rel(op.A(x), conv.A(x)) < 1e-12
    ax = op.A(x)
    assert rel(op.A(op.A_dagger(ax)), ax) < 1e-8
    assert rel(op.V(op.Vt(x)), x) < 1e-12


def test_default_motion_on_32() -> None:
    op = make_operator("deblur-motion", (3, 32, 32), gen()).to(F64)
    assert op.task == "deblur-motion:0.5" and op.params()["kernel_size"] == [61, 61]
    x, y = x_for(op), y_for(op)
    lhs, rhs = float((op.A(x) * y).sum()), float((x * op.A_adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    # cropping the 61x61 kernel to 63x63-reachable taps changes nothing: compare with an explicit big-padding conv
    full = motion_kernel(61, 0.5, gen())
    ref = torch.nn.functional.conv2d(x, full.flip(0, 1).expand(3, 1, 61, 61), padding=30, groups=3)
    assert rel(op.A(x), ref) < 1e-12


def test_gaussian_kernel_closed_form() -> None:
    k = gaussian_kernel_1d(61, 3.0)
    t = torch.arange(61, dtype=F64) - 30
    expect = torch.exp(-(t**2) / 18.0)
    torch.testing.assert_close(k, expect / expect.sum(), rtol=1e-14, atol=0)
    assert abs(float(k.sum()) - 1) < 1e-14 and int(k.argmax()) == 30


def test_uniform_kernel() -> None:
    op = build("deblur-uniform")
    assert op.task == "deblur-uniform:9"
    torch.testing.assert_close(op.kernel, torch.full((9,), 1 / 9, dtype=F64))
    x = torch.ones(1, *SHAPE, dtype=F64)
    assert abs(float(op.A(x)[0, 0, 8, 8]) - 1.0) < 1e-14  # interior of a constant image is unchanged


@pytest.mark.parametrize("intensity", [0.0, 0.5, 1.0])
def test_motion_kernel_properties(intensity: float) -> None:
    k = motion_kernel(61, intensity, gen(7))
    assert k.shape == (61, 61) and k.dtype == F64
    assert bool((k >= 0).all()) and abs(float(k.sum()) - 1.0) < 1e-12
    assert int((k > 0).sum()) > 5  # a trajectory, not a point
    torch.testing.assert_close(k, motion_kernel(61, intensity, gen(7)), rtol=0, atol=0)
    assert not torch.equal(k, motion_kernel(61, intensity, gen(8)))


def test_bicubic_constant_and_matrix() -> None:
    op = build("bicubic:4", (3, 24, 24))
    c = torch.full((1, 3, 24, 24), 0.3, dtype=F64)
    torch.testing.assert_close(op.A(c), torch.full((1, 3, 6, 6), 0.3, dtype=F64), rtol=0, atol=1e-14)
    m = bicubic_matrix(24, 4)
    assert m.shape == (6, 24)
    torch.testing.assert_close(m.sum(1), torch.ones(6, dtype=F64), rtol=0, atol=1e-14)
    # interior rows: the Keys a=-0.5 kernel stretched by 4 around centre 4i + 1.5
    row = m[2]
    taps = torch.arange(24, dtype=F64)
    t = (taps - 9.5).abs() / 4
    keys = torch.where(
        t <= 1, 1.5 * t**3 - 2.5 * t**2 + 1, torch.where(t < 2, -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2, 0 * t)
    )
    torch.testing.assert_close(row, keys / keys.sum(), rtol=0, atol=1e-14)


def test_bicubic_matches_pil_in_the_interior() -> None:
    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    small = np.asarray(Image.fromarray(img, mode="F").resize((8, 8), Image.BICUBIC, reducing_gap=None))
    op = Bicubic(4, (1, 32, 32)).to(F64)
    ours = op.A(torch.from_numpy(img).to(F64).view(1, 1, 32, 32))[0, 0].numpy()
    np.testing.assert_allclose(ours[2:-2, 2:-2], small[2:-2, 2:-2], atol=1e-5)


def test_block_average_matches_reshape_mean() -> None:
    op = build("sr:4")
    x = x_for(op)
    expect = torch.zeros(2, 3, 4, 4, dtype=F64)
    for i in range(4):
        for j in range(4):
            expect[:, :, i, j] = x[:, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].mean(dim=(2, 3))
    torch.testing.assert_close(op.A(x), expect, rtol=0, atol=1e-14)
    torch.testing.assert_close(op.singulars(), torch.full((48,), 0.25, dtype=F64))
    # the first r spectral coefficients are F * y
    torch.testing.assert_close(op.Vt(x)[:, :48], 4 * expect.flatten(1), rtol=0, atol=1e-13)
    assert isinstance(op, BlockAverage)


def test_colorize() -> None:
    op = build("colorize")
    x = x_for(op)
    torch.testing.assert_close(op.A(x), x.mean(1, keepdim=True))
    torch.testing.assert_close(op.singulars(), torch.full((256,), 1 / math.sqrt(3), dtype=F64))
    grey = op.A(x)
    assert op.y_to_image(grey).shape == (2, 1, 16, 16)
    torch.testing.assert_close(op.image_to_y(grey.expand(-1, 3, -1, -1)), grey)


def test_random_mask_count_and_seeds() -> None:
    for p, (h, w) in [(0.8, (16, 16)), (0.7, (24, 20)), (0.333, (7, 9))]:
        m = random_mask((3, h, w), p, gen(1))
        assert m.shape == (h, w) and m.dtype == torch.bool
        assert int((~m).sum()) == round(p * h * w)
    torch.testing.assert_close(random_mask(SHAPE, 0.5, gen(1)), random_mask(SHAPE, 0.5, gen(1)))
    assert not torch.equal(random_mask(SHAPE, 0.5, gen(1)), random_mask(SHAPE, 0.5, gen(2)))
    op = build("inpaint-random:0.7")
    assert op.task == "inpaint-random:0.7" and op.params()["n_missing"] == round(0.7 * 256)
    assert build("inpaint-random").task == "inpaint-random:0.8"


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 64, 48), (3, 16, 16)])
def test_freeform_fraction_and_seeds(shape: tuple[int, int, int]) -> None:
    masks = [freeform_mask(shape, gen(s)) for s in range(6)]
    for m in masks:
        frac = 1.0 - float(m.float().mean())
        assert 0.2 <= frac <= 0.3, frac
    torch.testing.assert_close(masks[0], freeform_mask(shape, gen(0)))
    assert len({m.numpy().tobytes() for m in masks}) == len(masks)


def test_box_center_half_masks() -> None:
    for seed in range(5):
        m, box = box_mask((1, 256, 256), gen(seed))
        assert box["height"] == 128 and box["width"] == 128
        assert 16 <= box["top"] <= 112 and 16 <= box["left"] <= 112
        assert int((~m).sum()) == 128 * 128 and not bool(m[box["top"] : box["top"] + 128, box["left"]].any())
    torch.testing.assert_close(box_mask(SHAPE, gen(3))[0], box_mask(SHAPE, gen(3))[0])
    assert len({tuple(box_mask((1, 64, 64), gen(s))[1].values()) for s in range(8)}) > 1
    center = build("inpaint-center").mask
    assert not bool(center[4:12, 4:12].any()) and int((~center).sum()) == 64
    half = build("inpaint-half").mask
    assert bool(half[:, :8].all()) and not bool(half[:, 8:].any())


def test_mask_from_file(tmp_path) -> None:
    img = np.zeros((16, 16), dtype=np.uint8)
    img[:, :10] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(img).save(path)
    m = load_mask(path, SHAPE)
    assert bool(m[:, :10].all()) and not bool(m[:, 10:].any())
    op = make_operator(f"inpaint-mask:{path}", SHAPE)
    assert op.task == f"inpaint-mask:{path}" and op.y_shape == (3 * 16 * 10,)
    assert make_operator("inpaint-mask", SHAPE, mask=path).task == f"inpaint-mask:{path}"
    small = tmp_path / "small.png"
    Image.fromarray(np.full((8, 8), 255, dtype=np.uint8)).save(small)
    with pytest.raises(OperatorError, match="mask is 8x8 but the image is 16x16"):
        load_mask(small, SHAPE)
    with pytest.raises(OperatorError, match="mask is 8x8 but the image is 16x16"):
        make_operator(f"inpaint-mask:{small}", SHAPE)
    with pytest.raises(OperatorError, match="not found"):
        load_mask(tmp_path / "nope.png", SHAPE)
    with pytest.raises(OperatorError, match="mask is 8x8 but the image is 16x16"):
        make_operator("inpaint-mask", SHAPE, mask=torch.ones(8, 8))


@pytest.mark.parametrize("task", ALL_TASKS)
def test_measurement_image_round_trip(task: str) -> None:
    op = build(task)
    y = op.A(x_for(op).clamp(-1, 1))
    img = op.y_to_image(y)
    assert img.dim() == 4 and img.shape[0] == 2
    torch.testing.assert_close(op.image_to_y(img), y)
    with pytest.raises(OperatorError, match=r"got \[2, 3, 5, 5\]"):
        op.image_to_y(torch.zeros(2, 3, 5, 5, dtype=F64))


def test_inpainting_image_has_grey_holes() -> None:
    op = build("inpaint-center")
    img = op.y_to_image(op.A(torch.ones(1, *SHAPE, dtype=F64)))
    assert float(img[0, :, 4:12, 4:12].abs().max()) == 0.0 and float(img[0, :, :4].min()) == 1.0
    assert torch.equal(op.A_dagger(op.A(torch.ones(1, *SHAPE, dtype=F64))), img)


def test_seeds_give_reproducible_operators() -> None:
    for task in ["inpaint-box", "inpaint-random", "inpaint-freeform"]:
        assert torch.equal(build(task, seed=4).mask, build(task, seed=4).mask)
        assert not torch.equal(build(task, (3, 32, 32), seed=4).mask, build(task, (3, 32, 32), seed=5).mask)
    assert torch.equal(build("deblur-motion", seed=4).kernel, build("deblur-motion", seed=4).kernel)
    assert not torch.equal(build("deblur-motion", seed=4).kernel, build("deblur-motion", seed=5).kernel)


def test_canonical_task_strings() -> None:
    expect = {
        "sr": "sr:4", "bicubic": "bicubic:4", "deblur-gauss": "deblur-gauss:3.0", "deblur-uniform": "deblur-uniform:9",
        "deblur-motion": "deblur-motion:0.5", "denoise": "denoise", "colorize": "colorize", "sr:2": "sr:2",
        "deblur-gauss:2": "deblur-gauss:2.0", "inpaint-random:0.50": "inpaint-random:0.5", "SR:4": "sr:4",
    }  # fmt: skip
    for task, canon in expect.items():
        assert make_operator(task, SHAPE, gen()).task == canon


def test_dtype_follows_input() -> None:
    for task in ["sr", "bicubic", "deblur-gauss", "deblur-motion", "colorize", "inpaint-box"]:
        op = make_operator(task, SHAPE, gen())
        x = torch.randn(1, *SHAPE)
        assert op.A(x).dtype == torch.float32
        assert op.A_adjoint(op.A(x)).dtype == torch.float32
        op64 = make_operator(task, SHAPE, gen()).to(F64)
        assert rel(op.A(x).to(F64), op64.A(x.to(F64))) < 1e-5


@pytest.mark.parametrize(
    ("task", "shape", "match"),
    [
        ("superres", SHAPE, r"unknown task 'superres'; valid tasks: bicubic, colorize, .*denoise"),
        ("sr:x", SHAPE, r"bad parameter 'x' in task 'sr:x': sr takes an integer F >= 2"),
        ("sr:1", SHAPE, r"bad parameter '1'.*>= 2"),
        ("sr:2.5", SHAPE, r"bad parameter '2.5'"),
        ("inpaint-random:1.5", SHAPE, r"bad parameter '1.5' in task 'inpaint-random:1.5'.*0 < P < 1"),
        ("inpaint-random:nan", SHAPE, r"bad parameter 'nan'"),
        ("deblur-gauss:-1", SHAPE, r"SIGMA > 0"),
        ("deblur-uniform:8", SHAPE, r"odd integer"),
        ("deblur-motion:2", SHAPE, r"0 <= INTENSITY <= 1"),
        ("denoise:3", SHAPE, r"task 'denoise' takes no parameter"),
        ("colorize", (1, 16, 16), r"colorize needs 3-channel images, got 1"),
        ("sr:3", SHAPE, r"sr:3 needs the image size to be divisible by 3, got 16x16"),
        ("bicubic:5", SHAPE, r"divisible by 5"),
        ("inpaint-mask", SHAPE, r"inpaint-mask needs a mask"),
        ("sr", (3, 16), r"image shape must be \(C, H, W\)"),
        ("", SHAPE, r"non-empty"),
    ],
)
def test_bad_input_errors(task: str, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(OperatorError, match=match) as info:
        make_operator(task, shape, gen())  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ReddiffError) and isinstance(info.value, ValueError)


def test_bad_call_shapes_and_mask_arguments() -> None:
    op = build("sr")
    with pytest.raises(OperatorError, match=r"must have shape \[B, 3, 16, 16\], got \[2, 3, 8, 8\]"):
        op.A(torch.zeros(2, 3, 8, 8, dtype=F64))
    with pytest.raises(OperatorError, match=r"measurement for sr:4 must have shape \[B, 3, 4, 4\]"):
        op.A_adjoint(torch.zeros(2, 3, 8, 8, dtype=F64))
    with pytest.raises(OperatorError, match="only used by task inpaint-mask"):
        make_operator("sr", SHAPE, mask=torch.ones(16, 16))
    with pytest.raises(OperatorError, match="not both"):
        make_operator("inpaint-mask:foo.png", SHAPE, mask=torch.ones(16, 16))
    with pytest.raises(OperatorError, match="observes no pixel"):
        make_operator("inpaint-mask", SHAPE, mask=torch.zeros(16, 16))


def test_conv2d_kernel_errors_and_float32_pinv() -> None:
    with pytest.raises(OperatorError, match=r"odd sides, got \[4, 5\]"):
        Convolution2D(torch.ones(4, 5), SHAPE)
    with pytest.raises(OperatorError, match="odd and >= 3"):
        motion_kernel(60, 0.5, gen())
    op = make_operator("deblur-gauss", (3, 32, 32), gen())  # float32 use, default cutoff
    x = torch.rand(1, 3, 32, 32, generator=gen(1)) * 2 - 1
    y = op.A(x)
    assert op.A_dagger(y).dtype == torch.float32
    assert rel(op.A(op.A_dagger(y)).double(), y.double()) < 1e-3


@pytest.mark.parametrize("task", ["inpaint-random:0.5", "cs:0.5", "deblur-motion", "hdr", "sr:2+inpaint-random:0.5"])
def test_stacked_operators_are_the_parts_applied_per_sample(task: str, device: torch.device) -> None:
    """A batch of per-image operators is one operator of the most capable kind the parts share, and every
    capability (estimates included) is each part's on its own sample."""
    from reddiff.operators import StackedOperator, stack

    parts = [build(task, seed=s).to(device) for s in range(3)]
    op = stack(parts)
    assert isinstance(op, StackedOperator) and isinstance(op, Operator)
    assert isinstance(op, LinearOperator) == all(isinstance(p, LinearOperator) for p in parts)
    assert isinstance(op, SVDOperator) == all(isinstance(p, SVDOperator) for p in parts)
    x = torch.rand(3, *op.x_shape, generator=gen(5), dtype=F64).to(device) * 2 - 1
    y = op.A(x)
    torch.testing.assert_close(y, torch.cat([p.A(x[i : i + 1]) for i, p in enumerate(parts)]))
    for name in ("initial_estimate", "classical_estimate", "inverse_estimate"):
        got, want = getattr(op, name)(y), [getattr(p, name)(y[i : i + 1]) for i, p in enumerate(parts)]
        if want[0] is None:
            assert got is None, name
        else:
            torch.testing.assert_close(got, torch.cat(want))
    if isinstance(op, SVDOperator):
        torch.testing.assert_close(op.V(op.Vt(x)), x)
        torch.testing.assert_close(op.Ut(y), torch.cat([p.Ut(y[i : i + 1]) for i, p in enumerate(parts)]))
    assert stack(parts[:1]) is parts[0]
