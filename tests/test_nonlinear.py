"""Nonlinear and harder measurements: phase retrieval, HDR, JPEG, quantisation, compressed sensing, composites,
noise models and user operators (issue 6). Small sizes, CPU, float64 where numbers are checked."""

from __future__ import annotations

import io
import math
import sys
import textwrap

import numpy as np
import pytest
import torch

from reddiff.errors import OperatorError, ReddiffError
from reddiff.noise import GaussianNoise, PoissonNoise, parse_noise
from reddiff.operators import (
    HDR,
    JPEG,
    TASKS,
    CallableOperator,
    Composite,
    CompressedSensing,
    LinearCallableOperator,
    LinearComposite,
    PhaseRetrieval,
    Quantize,
    make_operator,
    parse_task,
    x_shape_from_measurement,
)
from reddiff.operators.jpeg import CHROMINANCE_TABLE, LUMINANCE_TABLE, quality_table


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(shape, seed: int = 0, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    return torch.rand(shape, generator=_gen(seed), dtype=torch.float64) * (hi - lo) + lo


def _adjoint_rel_err(op, seed: int = 0) -> float:
    x = _rand((2, *op.x_shape), seed)
    y = torch.randn((2, *op.y_shape), generator=_gen(seed + 1), dtype=torch.float64)
    lhs = (op.A(x) * y).sum()
    rhs = (x * op.A_adjoint(y)).sum()
    return float((lhs - rhs).abs() / rhs.abs())


# ----------------------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------------------
def test_new_tasks_are_listed_with_canonical_strings():
    for name in ("phase-retrieval", "hdr", "jpeg", "quantize", "cs"):
        assert name in TASKS
    for text, name, param in (("phase-retrieval", "phase-retrieval", 2.0), ("hdr", "hdr", 2.0), ("jpeg:20", "jpeg", 20),
                              ("quantize:3", "quantize", 3), ("cs:0.5", "cs", 0.5)):
        (part,) = parse_task(text).parts
        assert (part.name, part.param) == (name, param) and type(part.param) is type(param)
    assert make_operator("phase-retrieval", (1, 8, 8), _gen()).task == "phase-retrieval:2.0"
    assert make_operator("jpeg:20", (3, 16, 16)).task == "jpeg:20"


@pytest.mark.parametrize(
    "task", ["jpeg:0", "jpeg:101", "jpeg:5.5", "quantize:0", "quantize:17", "cs:0", "cs:1.5", "hdr:-1",
             "phase-retrieval:0.5", "phase-retrieval:nan"],
)
def test_bad_parameters_are_one_clear_error(task):
    with pytest.raises(OperatorError, match="bad parameter"):
        make_operator(task, (3, 16, 16))


def test_unknown_task_message_is_kept():
    with pytest.raises(OperatorError, match="unknown task 'nosuchtask'.*valid tasks"):
        make_operator("nosuchtask:4", (3, 16, 16))
    with pytest.raises(OperatorError, match="unknown task"):
        make_operator("nosuchtask", (3, 16, 16))


@pytest.mark.parametrize("task", ["phase-retrieval", "hdr", "jpeg:50", "quantize:5", "cs:0.5", "sr:2+hdr"])
def test_dtype_follows_input(task):
    op = make_operator(task, (3, 16, 16), _gen())
    for dtype in (torch.float32, torch.float64):
        assert op.A(torch.zeros(1, 3, 16, 16, dtype=dtype)).dtype == dtype


# ----------------------------------------------------------------------------------------------------------------
# phase retrieval
# ----------------------------------------------------------------------------------------------------------------
def test_phase_retrieval_shapes_parseval_and_gradcheck():
    op = make_operator("phase-retrieval", (2, 6, 6), _gen())
    assert isinstance(op, PhaseRetrieval)
    assert op.y_shape == (2, 12, 12) and (op.pad_h, op.pad_w) == (3, 3)
    x = _rand((1, 2, 6, 6), 1)
    y = op.A(x)
    torch.testing.assert_close(y.pow(2).sum(), x.pow(2).sum(), rtol=1e-12, atol=0)  # orthonormal FFT
    # centred: the zero frequency (mean * sqrt(N) / oversampled normalisation) sits in the middle
    torch.testing.assert_close(y[0, :, 6, 6], x[0].sum((-2, -1)).abs() / 12.0, rtol=1e-12, atol=1e-12)
    small = make_operator("phase-retrieval", (1, 3, 3), _gen())
    xs = _rand((1, 1, 3, 3), 2).requires_grad_(True)
    assert torch.autograd.gradcheck(small.A, (xs,), eps=1e-6, atol=1e-7)


def test_phase_retrieval_trivial_ambiguities():
    op = make_operator("phase-retrieval", (3, 12, 12), _gen())
    x = torch.zeros(1, 3, 12, 12, dtype=torch.float64)
    x[..., 2:9, 3:10] = _rand((1, 3, 7, 7), 3)
    y = op.A(x)
    torch.testing.assert_close(op.A(-x), y, rtol=0, atol=1e-12)  # global sign
    torch.testing.assert_close(op.A(x.flip(-2, -1)), y, rtol=0, atol=1e-12)  # conjugate reflection (180° turn)
    for shift in [(1, 2), (-2, -3), (3, 0)]:  # content stays inside the image window
        torch.testing.assert_close(op.A(torch.roll(x, shift, dims=(-2, -1))), y, rtol=0, atol=1e-12)
    # a generic change does alter the magnitude
    assert (op.A(x + 0.1 * _rand(x.shape, 4)) - y).abs().max() > 1e-3


def test_phase_retrieval_measurement_image_and_initial_estimate():
    op = make_operator("phase-retrieval:1.5", (3, 16, 16), _gen(5))
    assert op.y_shape == (3, 24, 24)
    x = _rand((2, 3, 16, 16), 6)
    y = op.A(x)
    img = op.y_to_image(y)
    assert img.min() >= -1 and img.max() <= 1
    torch.testing.assert_close(op.image_to_y(img), y, rtol=1e-10, atol=1e-10)
    assert x_shape_from_measurement("phase-retrieval:1.5", tuple(img.shape[1:])) == (3, 16, 16)
    assert x_shape_from_measurement("phase-retrieval", (3, 64, 64)) == (3, 32, 32)
    init = op.initial_estimate(y)
    assert init.shape == x.shape and init.abs().max() <= 1
    torch.testing.assert_close(op.initial_estimate(y), init, rtol=0, atol=0)  # deterministic
    # HIO/ER fits the magnitudes far better than the zero image does
    assert (op.A(init) - y).norm() < 0.5 * y.norm()
    same = make_operator("phase-retrieval:1.5", (3, 16, 16), _gen(5))
    assert same.init_seed == op.init_seed


# ----------------------------------------------------------------------------------------------------------------
# HDR and quantisation
# ----------------------------------------------------------------------------------------------------------------
def test_hdr_forward_gradient_and_initial_estimate():
    op = make_operator("hdr", (1, 4, 4))
    assert isinstance(op, HDR)
    x = torch.tensor([-0.9, -0.6, -0.3, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.45, 0.7, 0.9, -0.2, 0.35, -0.4, 0.6],
                     dtype=torch.float64).view(1, 1, 4, 4)
    torch.testing.assert_close(op.A(x), (2 * x).clamp(-1, 1))
    assert torch.autograd.gradcheck(op.A, (x.clone().requires_grad_(True),), eps=1e-6, atol=1e-8)
    y = op.A(x)
    inside = x.abs() < 0.5
    torch.testing.assert_close(op.initial_estimate(y)[inside], x[inside])


def test_quantize_levels_and_straight_through_gradient():
    op = make_operator("quantize:3", (1, 1, 101))
    assert isinstance(op, Quantize)
    x = torch.linspace(-1, 1, 101, dtype=torch.float64).view(1, 1, 1, 101)
    y = op.A(x)
    levels = torch.unique(y)
    torch.testing.assert_close(levels, torch.linspace(-1, 1, 8, dtype=torch.float64))
    assert (y - x).abs().max() <= op.step / 2 + 1e-12
    # straight-through: d(sum(v * A(x)))/dx = v inside (-1, 1), 0 outside
    xg = torch.linspace(-1.3, 1.3, 101, dtype=torch.float64).view(1, 1, 1, 101).requires_grad_(True)
    v = torch.randn(1, 1, 1, 101, generator=_gen(1), dtype=torch.float64)
    (g,) = torch.autograd.grad((op.A(xg) * v).sum(), xg)
    torch.testing.assert_close(g, torch.where(xg.detach().abs() < 1, v, torch.zeros_like(v)))
    torch.testing.assert_close(op.initial_estimate(y), y)
    q8 = make_operator("quantize:8", (1, 1, 4))
    u8 = torch.tensor([0, 1, 128, 255], dtype=torch.float64).view(1, 1, 1, 4) / 127.5 - 1
    torch.testing.assert_close(q8.A(u8), u8)  # 8-bit images are fixed points of 8-bit quantisation


# ----------------------------------------------------------------------------------------------------------------
# JPEG
# ----------------------------------------------------------------------------------------------------------------
def test_jpeg_quality_tables():
    assert quality_table(LUMINANCE_TABLE, 50).tolist() == [list(r) for r in LUMINANCE_TABLE]
    assert quality_table(CHROMINANCE_TABLE, 100).eq(1).all()
    q20 = quality_table(LUMINANCE_TABLE, 20)  # scale 250, baseline clamp at 255
    assert q20[0, 0] == 40 and q20[6, 5] == 255
    assert quality_table(LUMINANCE_TABLE, 90)[0, 0] == 3


def test_jpeg_straight_through_gradient_is_the_linear_pipeline():
    shape = (3, 16, 16)
    op = JPEG(shape, 50)
    lin = JPEG(shape, 50, ste=False)
    base = torch.linspace(-0.4, 0.4, 16, dtype=torch.float64)
    x = (base.view(1, 1, 1, 16) * base.view(1, 1, 16, 1).flip(-2) + 0.2 * base.view(1, 1, 16, 1)).repeat(1, 3, 1, 1)
    x = x + 0.05 * _rand(x.shape, 7)
    v = torch.randn(1, *shape, generator=_gen(8), dtype=torch.float64)
    xa = x.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad((op.A(xa) * v).sum(), xa)
    xb = x.clone().requires_grad_(True)
    (gb,) = torch.autograd.grad((lin.A(xb) * v).sum(), xb)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)
    assert ga.abs().sum() > 0
    # the surrogate is affine: its Jacobian is the same at another point
    x2 = x.flip(-1).clone().requires_grad_(True)
    (g2,) = torch.autograd.grad((lin.A(x2) * v).sum(), x2)
    torch.testing.assert_close(g2, gb, rtol=1e-12, atol=1e-12)


def _pillow_jpeg(u8: np.ndarray, quality: int) -> tuple[np.ndarray, dict]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    im = Image.open(buf)
    return np.asarray(im.convert(im.mode)), im.quantization


def _psnr_255(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _crops(size: tuple[int, int]):
    skdata = pytest.importorskip("skimage.data")
    h, w = size
    for name, (top, left) in [("coffee", (100, 100)), ("coffee", (200, 300)), ("astronaut", (30, 150)),
                              ("astronaut", (200, 300))]:
        yield np.ascontiguousarray(getattr(skdata, name)()[top : top + h, left : left + w])


# Measured (this implementation vs Pillow 13 with libjpeg-turbo, 64x64 crops of coffee/astronaut/chelsea): 45-75 dB at
# Q 20, 47-58 dB at Q 50, 48-54 dB at Q 90; 42-69 dB on 50x37 crops. The thresholds leave margin for other
# libjpeg builds.
@pytest.mark.parametrize("quality", [20, 50, 90])
def test_jpeg_matches_pillow(quality):
    for u8 in _crops((64, 64)):
        ref, qtables = _pillow_jpeg(u8, quality)
        x = torch.from_numpy(u8).permute(2, 0, 1)[None].double() / 127.5 - 1
        op = make_operator(f"jpeg:{quality}", tuple(x.shape[1:]))
        ours = ((op.A(x) + 1) * 127.5)[0].permute(1, 2, 0).numpy()
        assert _psnr_255(ours, ref) > 40.0, f"Q{quality}: {_psnr_255(ours, ref):.2f} dB"
        assert list(qtables[0]) == op.q_luma.flatten().int().tolist()
        assert list(qtables[1]) == op.q_chroma.flatten().int().tolist()


def test_jpeg_matches_pillow_odd_sizes_and_grey():
    for u8 in _crops((50, 37)):
        ref, _ = _pillow_jpeg(u8, 75)
        x = torch.from_numpy(u8).permute(2, 0, 1)[None].double() / 127.5 - 1
        ours = ((JPEG(x.shape[1:], 75).A(x) + 1) * 127.5)[0].permute(1, 2, 0).numpy()
        assert _psnr_255(ours, ref) > 38.0
    grey = next(iter(_crops((40, 40)))).mean(axis=2).round().astype(np.uint8)
    ref, _ = _pillow_jpeg(grey, 30)
    x = torch.from_numpy(grey)[None, None].double() / 127.5 - 1
    ours = ((make_operator("jpeg:30", (1, 40, 40)).A(x) + 1) * 127.5)[0, 0].numpy()
    assert _psnr_255(ours, ref) > 40.0


# ----------------------------------------------------------------------------------------------------------------
# compressed sensing
# ----------------------------------------------------------------------------------------------------------------
def test_cs_adjoint_pinv_svd_and_reproducibility():
    op = make_operator("cs:0.3", (3, 10, 12), _gen(3)).to(torch.float64)
    assert isinstance(op, CompressedSensing)
    n = 3 * 10 * 12
    assert op.y_shape == (round(0.3 * n),)
    assert _adjoint_rel_err(op) < 1e-10
    y = torch.randn(2, *op.y_shape, generator=_gen(4), dtype=torch.float64)
    torch.testing.assert_close(op.A(op.A_adjoint(y)), y, rtol=1e-12, atol=1e-12)  # orthonormal rows
    torch.testing.assert_close(op.A_dagger(y), op.A_adjoint(y))
    x = _rand((2, 3, 10, 12), 5)
    p = op.A_dagger(op.A(x))
    torch.testing.assert_close(op.A_dagger(op.A(p)), p, rtol=1e-12, atol=1e-12)  # projection
    torch.testing.assert_close(op.V(op.Vt(x)), x, rtol=1e-12, atol=1e-12)
    s = op.singulars()
    torch.testing.assert_close(op.U(s * op.Vt(x)[:, : s.numel()]), op.A(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.y_to_image(op.A(x)), p)
    torch.testing.assert_close(op.image_to_y(op.y_to_image(y)), y, rtol=1e-12, atol=1e-12)
    same = make_operator("cs:0.3", (3, 10, 12), _gen(3)).to(torch.float64)
    other = make_operator("cs:0.3", (3, 10, 12), _gen(4)).to(torch.float64)
    torch.testing.assert_close(same.A(x), op.A(x), rtol=0, atol=0)
    assert not torch.allclose(other.A(x), op.A(x))
    full = make_operator("cs:1", (1, 4, 4), _gen()).to(torch.float64)
    xf = _rand((1, 1, 4, 4), 6)
    torch.testing.assert_close(full.A_dagger(full.A(xf)), xf, rtol=1e-12, atol=1e-12)  # ratio 1: invertible


# ----------------------------------------------------------------------------------------------------------------
# composites
# ----------------------------------------------------------------------------------------------------------------
def test_linear_composite_chains_adjoint_and_cg_pinv():
    op = make_operator("sr:2+inpaint-random:0.5", (3, 8, 8), _gen(1)).to(torch.float64)
    assert isinstance(op, LinearComposite) and op.linear and op.task == "sr:2+inpaint-random:0.5"
    g = _gen(1)
    sr = make_operator("sr:2", (3, 8, 8), g).to(torch.float64)
    inp = make_operator("inpaint-random:0.5", (3, 4, 4), g).to(torch.float64)
    x = _rand((2, 3, 8, 8), 2)
    torch.testing.assert_close(op.A(x), inp.A(sr.A(x)), rtol=0, atol=0)
    assert _adjoint_rel_err(op) < 1e-10
    y = op.A(x)
    xd = op.A_dagger(y, cg_tol=1e-12, cg_iters=500)
    torch.testing.assert_close(op.A(xd), y, rtol=1e-9, atol=1e-9)
    z = _rand((2, 3, 8, 8), 3)
    null_part = z - op.A_dagger(op.A(z), cg_tol=1e-12, cg_iters=500)
    assert float((xd * null_part).sum().abs()) < 1e-8  # minimum norm: orthogonal to the null space
    assert op.initial_estimate(y) is None  # no part has its own: solvers use A_dagger
    torch.testing.assert_close(op.inverse_estimate(y), op.A_dagger(y))


def test_nonlinear_composites():
    op = make_operator("hdr+jpeg:50", (3, 16, 16), _gen())
    assert isinstance(op, Composite) and not op.linear and not hasattr(op, "A_adjoint")
    x = _rand((1, 3, 16, 16), 1)
    torch.testing.assert_close(op.A(x), op.parts[1].A(op.parts[0].A(x)))
    assert op.initial_estimate(op.A(x)).shape == x.shape
    pr = make_operator("deblur-uniform:3+phase-retrieval", (1, 4, 4), _gen())
    assert pr.y_shape == (1, 8, 8)
    xs = _rand((1, 1, 4, 4), 2).requires_grad_(True)
    assert torch.autograd.gradcheck(pr.A, (xs,), eps=1e-6, atol=1e-7)
    assert x_shape_from_measurement("sr:2+phase-retrieval", (3, 32, 32)) == (3, 32, 32)
    assert x_shape_from_measurement("sr:4+hdr", (3, 8, 8)) == (3, 32, 32)
    with pytest.raises(OperatorError, match="put it last"):
        make_operator("inpaint-random:0.5+sr:2", (3, 8, 8))
    with pytest.raises(OperatorError, match="deblur-gauss:1e\\+3|bad parameter"):
        make_operator("deblur-gauss:1e+3x", (3, 8, 8))
    assert make_operator("deblur-gauss:1e+0", (3, 8, 8)).task == "deblur-gauss:1.0"  # '+' of an exponent


# ----------------------------------------------------------------------------------------------------------------
# noise models
# ----------------------------------------------------------------------------------------------------------------
def test_gaussian_noise_model():
    noise = parse_noise(None, 0.1)
    assert isinstance(noise, GaussianNoise) and noise.sigma_y == 0.1
    y, ax = _rand((2, 3, 4, 4), 1), _rand((2, 3, 4, 4), 2)
    torch.testing.assert_close(noise.nll(y, ax), 0.5 * (y - ax).pow(2).mean((1, 2, 3)))
    torch.testing.assert_close(noise.nll_sum(y, ax), (y - ax).pow(2).sum((1, 2, 3)) / (2 * 0.01))
    torch.testing.assert_close(noise.residual_norm(y, ax), (y - ax).flatten(1).norm(dim=1))
    s1 = noise.sample(ax, _gen(3))
    torch.testing.assert_close(noise.sample(ax, _gen(3)), s1)
    assert parse_noise("gaussian", 0.0).sample(ax, _gen()).equal(ax)


def test_poisson_noise_statistics_and_gradient():
    peak = 20.0
    noise = parse_noise("poisson:20", 0.0)
    assert isinstance(noise, PoissonNoise) and noise.sigma_y == pytest.approx(math.sqrt(2 / peak))
    levels = torch.tensor([-0.5, 0.0, 0.6], dtype=torch.float64).view(1, 3, 1, 1)
    clean = levels.expand(1, 3, 200, 200)
    y = noise.sample(clean, _gen(4))
    assert y.dtype == torch.float64
    counts = peak * (y + 1) / 2
    torch.testing.assert_close(counts, counts.round())  # integer photon counts
    mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3))
    torch.testing.assert_close(mean, levels.flatten(), rtol=0, atol=0.01)
    torch.testing.assert_close(var, 2 * (levels.flatten() + 1) / peak, rtol=0.05, atol=0)
    torch.testing.assert_close(noise.sample(clean, _gen(4)), y)
    # gradient of the data term: sigma^2 / m * (peak / 2) * (1 - k / lam)
    ys = noise.sample(levels.expand(2, 3, 3, 3).clone(), _gen(5))
    ax = _rand((2, 3, 3, 3), 6, -0.8, 0.8).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: noise.nll(ys, a), (ax,), eps=1e-6, atol=1e-8)
    (g,) = torch.autograd.grad(noise.nll(ys, ax).sum(), ax)
    k, lam = peak * (ys + 1) / 2, peak * (ax.detach() + 1) / 2
    torch.testing.assert_close(g, noise.sigma_y**2 / 27 * (peak / 2) * (1 - k / lam))
    assert float(noise.nll(y[:, :, :4, :4], clean[:, :, :4, :4]).min()) >= 0
    # high counts: close to the Gaussian mean term weighted by 1 / (Ax + 1)
    big = PoissonNoise(1e5)
    a0 = _rand((1, 1, 8, 8), 7, -0.3, 0.3)
    y0 = a0 + 1e-3 * _rand((1, 1, 8, 8), 8)
    ref = 0.5 * ((y0 - a0) ** 2 / (a0 + 1)).mean()
    torch.testing.assert_close(big.nll(y0, a0)[0], ref, rtol=1e-2, atol=0)
    # below zero intensity the term stays finite and keeps pushing the rate up
    neg = torch.full((1, 1, 2, 2), -1.5, dtype=torch.float64, requires_grad=True)
    val = noise.nll(torch.zeros(1, 1, 2, 2, dtype=torch.float64), neg)
    (gn,) = torch.autograd.grad(val.sum(), neg)
    assert torch.isfinite(val).all() and (gn < 0).all()
    r = noise.residual_norm(ys, ax.detach())
    torch.testing.assert_close(r, torch.sqrt(2 * 27 * noise.nll(ys, ax.detach())))


@pytest.mark.parametrize("spec", ["poisson", "poisson:0", "poisson:abc", "gamma:3", "gaussian:0.1"])
def test_bad_noise_specs(spec):
    with pytest.raises(ReddiffError):
        parse_noise(spec, 0.0)
    with pytest.raises(ReddiffError, match="sigma_y"):
        parse_noise("poisson:10", 0.1)


# ----------------------------------------------------------------------------------------------------------------
# user operators
# ----------------------------------------------------------------------------------------------------------------
USER_MODULE = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from reddiff.operators import make_operator

    def gamma_pool(shape):
        def forward(x):
            y = F.avg_pool2d(x, 2)
            return torch.sign(y) * (y.abs() + 1e-3) ** 0.8
        return forward

    def subsample(shape):
        def forward(x):
            return x[..., ::2, ::2] * 2.0 + x[..., 1::2, 1::2]
        forward.linear = True
        return forward

    def builtin(shape):
        return make_operator("sr:2", shape)

    def raises(shape):
        raise RuntimeError("boom")

    def not_callable(shape):
        return 3

    def detached(shape):
        return lambda x: x.detach() * 2

    def numpy_out(shape):
        return lambda x: x.detach().numpy()

    def wrong_shape(shape):
        return make_operator("sr:2", (shape[0], shape[1] * 2, shape[2] * 2))

    NOT_A_FUNCTION = 5
    """
)


@pytest.fixture()
def user_file(tmp_path):
    path = tmp_path / "my_ops.py"
    path.write_text(USER_MODULE)
    return path


def test_user_operator_from_file(user_file):
    op = make_operator(f"{user_file}:gamma_pool", (3, 8, 8))
    assert isinstance(op, CallableOperator) and not op.linear and op.y_shape == (3, 4, 4)
    assert op.task == f"{user_file}:gamma_pool"
    x = _rand((2, 3, 8, 8), 1).requires_grad_(True)
    assert torch.autograd.gradcheck(op.A, (x,), eps=1e-6, atol=1e-6)
    assert op.initial_estimate(op.A(x)) is None and op.inverse_estimate(op.A(x)) is None
    builtin = make_operator(f"{user_file}:builtin", (3, 8, 8))
    assert builtin.task == "sr:2"


def test_linear_user_operator_gets_autograd_adjoint_and_cg_pinv(user_file):
    op = make_operator(f"{user_file}:subsample", (2, 6, 6))
    assert isinstance(op, LinearCallableOperator) and op.linear and op.y_shape == (2, 3, 3)
    assert _adjoint_rel_err(op) < 1e-10
    y = torch.randn(2, 2, 3, 3, generator=_gen(2), dtype=torch.float64)
    torch.testing.assert_close(op.A(op.A_dagger(y, cg_tol=1e-12)), y, rtol=1e-9, atol=1e-9)
    # the pinv of x -> 2 x[::2, ::2] + x[1::2, 1::2] in closed form: (2, 1) y / 5 on the two grids
    xd = op.A_dagger(y, cg_tol=1e-12)
    torch.testing.assert_close(xd[..., ::2, ::2], 2 * y / 5, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(xd[..., 1::2, 1::2], y / 5, rtol=1e-9, atol=1e-9)


def test_user_operator_from_module(user_file, monkeypatch):
    modname = "reddiff_test_user_ops_mod"
    (user_file.parent / f"{modname}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(user_file.parent))
    monkeypatch.delitem(sys.modules, modname, raising=False)
    op = make_operator(f"{modname}:gamma_pool", (1, 4, 4))
    assert op.y_shape == (1, 2, 2)
    comp = make_operator(f"sr:2+{modname}:subsample", (1, 8, 8))
    assert isinstance(comp, LinearComposite) and comp.y_shape == (1, 2, 2)
    with pytest.raises(OperatorError, match="cannot infer the image size"):
        x_shape_from_measurement(f"{modname}:gamma_pool", (1, 2, 2))


@pytest.mark.parametrize(
    ("suffix", "pattern"),
    [
        ("raises", "raised RuntimeError: boom"),
        ("not_callable", "must return an Operator or a callable"),
        ("detached", "not differentiable"),
        ("numpy_out", "must return a torch tensor"),
        ("missing", "has no function 'missing'"),
        ("NOT_A_FUNCTION", "not a function"),
        ("wrong_shape", "returned an operator for images"),
    ],
)
def test_bad_user_functions_give_one_clear_error(user_file, suffix, pattern):
    with pytest.raises(OperatorError, match=pattern) as info:
        make_operator(f"{user_file}:{suffix}", (1, 4, 4))
    msg = str(info.value)
    assert "\n" not in msg and "my_ops.py" in msg


def test_bad_user_modules_give_one_clear_error(tmp_path):
    with pytest.raises(OperatorError, match="not found"):
        make_operator(f"{tmp_path / 'absent.py'}:f", (1, 4, 4))
    bad = tmp_path / "broken.py"
    bad.write_text("def f(shape):\n    return (\n")
    with pytest.raises(OperatorError, match="syntax error in .*broken.py line"):
        make_operator(f"{bad}:f", (1, 4, 4))
    failing = tmp_path / "failing.py"
    failing.write_text("raise ImportError('needs a missing package')\n")
    with pytest.raises(OperatorError, match="importing .*failing.py.* raised ImportError"):
        make_operator(f"{failing}:f", (1, 4, 4))
    with pytest.raises(OperatorError, match="module 'no_such_module_xyz' cannot be imported"):
        make_operator("no_such_module_xyz:make", (1, 4, 4))


def test_degrade_cli_with_user_operator(user_file, small_image, tmp_path):
    from reddiff.cli import main

    out = tmp_path / "deg"
    assert main(["degrade", "--input", str(small_image), "--output", str(out), "--task",
                 f"{user_file}:gamma_pool"]) == 0
    assert (out / f"{small_image.stem}.png").is_file()
    assert main(["degrade", "--input", str(small_image), "--output", str(tmp_path / "bad"), "--task",
                 f"{user_file}:raises"]) == 2
