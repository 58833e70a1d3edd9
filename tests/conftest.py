"""Shared test fixtures. Tests run on the CPU, offline, on small images."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Metric weights are looked for only where a test puts them, never in the developer's caches.
_METRIC_HOME = tempfile.mkdtemp(prefix="reddiff-test-metrics-")
os.environ["REDDIFF_METRICS_DIR"] = os.path.join(_METRIC_HOME, "metrics")
os.environ["TORCH_HOME"] = os.path.join(_METRIC_HOME, "torch")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ADM_FIXTURES = SHARED / "fixtures" / "adm"


#: Every device the fast device-generic tests run on: the CPU, and CUDA where a GPU is present.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """A torch device: tests taking it run once per entry of :data:`DEVICES`."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def adm_fixtures() -> Path:
    if not ADM_FIXTURES.is_dir():
        pytest.fail(f"the shared fixtures are missing: {ADM_FIXTURES} (clone with ../shared beside the repo)")
    return ADM_FIXTURES


@pytest.fixture(scope="session")
def tiny_prior(adm_fixtures):
    """The tiny guided-diffusion-architecture fixture model (random weights) as a prior."""
    from reddiff import load_prior

    config = torch.load(adm_fixtures / "tiny_a_io.pt", weights_only=True)["config"]
    return load_prior(adm_fixtures / "tiny_a.pt", config=config, progress=False)


@pytest.fixture()
def small_image(tmp_path) -> Path:
    """A 32x32 RGB crop of a scikit-image test picture, saved as PNG."""
    import numpy as np
    from PIL import Image
    from skimage import data

    arr = data.coffee()[100:164:2, 200:264:2]
    p = tmp_path / "coffee.png"
    Image.fromarray(np.ascontiguousarray(arr)).save(p)
    return p


@pytest.fixture(autouse=True)
def _no_global_seed_leak():
    """Solvers must not touch the global RNG: its state is the same before and after every test body."""
    state = torch.random.get_rng_state()
    yield
    torch.random.set_rng_state(state)
