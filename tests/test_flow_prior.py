"""The flow-matching prior kept in the repository (training/flow/diffusers, docs/FLOW_PRIOR.md) loads through the
diffusers route as a rectified flow with velocity prediction, carries presets swept with its own weights, and restores
a held-out picture far better than the measurement with them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from reddiff import load_prior  # noqa: E402
from reddiff.experiment import restore  # noqa: E402
from reddiff.noise import GaussianNoise  # noqa: E402
from reddiff.schedule import FlowSchedule  # noqa: E402
from reddiff.tools.data import held_out_images  # noqa: E402
from reddiff.tools.presets import load_presets, preset_for_prior  # noqa: E402

FOLDER = Path(__file__).resolve().parents[1] / "training" / "flow" / "diffusers"


@pytest.fixture(scope="module")
def flow_prior():
    return load_prior(f"diffusers:{FOLDER}", progress=False).eval()


def _crop(size: int) -> torch.Tensor:
    name, img = next((n, i) for n, i in held_out_images() if n == "chelsea")
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    x = torch.from_numpy(np.ascontiguousarray(img[top:top + size, left:left + size])).permute(2, 0, 1)
    return (x.float() / 255 * 2 - 1)[None]


def test_it_is_a_flow_prior_with_its_own_presets(flow_prior):
    assert isinstance(flow_prior.schedule, FlowSchedule)
    assert flow_prior.prediction == "flow"
    weights = FOLDER / "unet" / "diffusion_pytorch_model.safetensors"
    presets = load_presets(FOLDER)
    # swept with these weights (re-sweep after retraining)
    assert presets["provenance"]["prior_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    for task in ("sr:4", "inpaint-random:0.8", "deblur-gauss", "denoise"):
        chosen = preset_for_prior(flow_prior, task, 0.01)
        assert chosen and 0 < chosen["t_max"] < 1  # flow time, not a VP index


@pytest.mark.parametrize("task, sigma01, gain_db", [("denoise", 0.1, 5.0), ("deblur-gauss:3.0", 0.01, 1.0)])
def test_it_restores_a_held_out_crop(flow_prior, task, sigma01, gain_db):
    r = restore(flow_prior, _crop(48), task, GaussianNoise(2 * sigma01), seed=3)
    assert r.preset, "the folder's presets were not applied"
    assert r.psnr > r.psnr_measurement + gain_db, (r.psnr, r.psnr_measurement)
