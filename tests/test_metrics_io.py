from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from reddiff import ReddiffError, psnr, ssim
from reddiff.io import from_unit, list_images, load_image, make_grid, save_image, to_unit, write_json


@pytest.mark.parametrize("name", ["camera", "coffee", "rocket"])
def test_psnr_ssim_match_scikit_image(name):
    img = getattr(data, name)()
    img = img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)
    a = img[:96, :128].astype(np.float64) / 255
    rng = np.random.default_rng(0)
    b = np.clip(a + 0.03 * rng.standard_normal(a.shape) + 0.02, 0, 1)
    ta, tb = (torch.from_numpy(v).permute(2, 0, 1) for v in (a, b))
    assert abs(float(psnr(tb, ta)) - peak_signal_noise_ratio(a, b, data_range=1)) < 1e-9
    ref = structural_similarity(b, a, data_range=1, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert abs(float(ssim(tb, ta)) - ref) < 1e-6
    batch = psnr(torch.stack([tb, ta]), torch.stack([ta, ta]))
    assert batch.shape == (2,) and torch.isinf(batch[1])


def test_metrics_shape_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))
    with pytest.raises(ValueError, match="larger than 11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_unit_conversions_round_trip():
    x = torch.linspace(-1, 1, 11)
    assert torch.allclose(from_unit(to_unit(x)), x, atol=1e-7)
    assert float(to_unit(torch.tensor(3.0))) == 1.0


def test_save_load_round_trip_is_exact_on_8bit_values(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    x = from_unit(torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1))
    p = save_image(x, tmp_path / "a.png")
    back = np.asarray(Image.open(p))
    assert np.array_equal(back, arr)
    assert torch.allclose(load_image(p)[0], x, atol=1e-6)
    assert not list(tmp_path.glob("*.part"))


def test_load_conversions_and_notices(tmp_path):
    Image.fromarray(np.full((5, 6), 128, np.uint8), mode="L").save(tmp_path / "g.png")
    Image.fromarray(np.full((5, 6, 4), 200, np.uint8), mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.full((5, 6, 3), 90, np.uint8)).convert("P").save(tmp_path / "palette.png")
    notes: list[str] = []
    g = load_image(tmp_path / "g.png", notices=notes)
    assert g.shape == (1, 3, 5, 6) and "grayscale" in notes[0]
    rgba = load_image(tmp_path / "rgba.png", notices=notes)
    assert rgba.shape == (1, 3, 5, 6) and any("alpha" in n for n in notes)
    assert load_image(tmp_path / "g.png", channels=None).shape == (1, 1, 5, 6)
    before = len(notes)
    assert load_image(tmp_path / "palette.png", notices=notes).shape == (1, 3, 5, 6)
    assert len(notes) == before  # a palette image without transparency has no alpha to drop


def test_bad_files(tmp_path):
    with pytest.raises(ReddiffError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ReddiffError, match="cannot read .*notes.png as an image"):
        load_image(tmp_path / "notes.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReddiffError, match="no images in folder"):
        list_images(tmp_path / "empty")
    with pytest.raises(ReddiffError, match="no such file or folder"):
        list_images(tmp_path / "nope")


def test_atomic_json_and_failed_write_leaves_nothing(tmp_path):
    write_json({"a": torch.tensor([1.0, 2.0]), "p": tmp_path}, tmp_path / "r.json")
    assert '"a": [' in (tmp_path / "r.json").read_text()
    with pytest.raises(TypeError):
        write_json({"bad": object()}, tmp_path / "s.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_json_is_standard_without_infinity_or_nan(tmp_path):
    """A PSNR of identical images is infinite: the JSON says null, which every JSON reader accepts."""
    obj = {"psnr": float("inf"), "rows": [{"v": float("nan")}, (1.5, float("-inf"))], "ok": 2.0}
    text = write_json(obj, tmp_path / "r.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard {c}")) == {
        "psnr": None, "rows": [{"v": None}, [1.5, None]], "ok": 2.0}


def test_grid_layout():
    small = torch.zeros(1, 3, 4, 4)
    big = torch.ones(3, 16, 16)
    g = make_grid([small, big, torch.zeros(1, 16, 16)], labels=["y", "x", "gray"])
    assert g.shape[0] == 3 and g.shape[2] == 3 * (16 + 4) + 4 and g.shape[1] == 16 + 14 + 8
