"""Shared test fixtures. Tests run on the CPU, offline, on small images."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
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


@pytest.fixture()
def cli_env() -> dict[str, str]:
    """The environment of a ``reddiff`` subprocess: one thread per process, offline, not inside another torchrun."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture()
def run_reddiff(cli_env):
    """Run ``python -m reddiff ARGS`` in a subprocess, or under ``torchrun`` with ``nproc`` processes; returns the
    completed process (text output captured)."""

    def run(*args: object, nproc: int | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
        head = [sys.executable]
        if nproc:
            head += ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc)]
        return subprocess.run([*head, "-m", "reddiff", *map(str, args)], capture_output=True, text=True, env=cli_env,
                              timeout=timeout)

    return run


@pytest.fixture()
def stop_after_first(cli_env):
    """Start ``python -m reddiff ARGS``, send SIGTERM as soon as ``folder.glob(pattern)`` finds a file (a finished
    result), and return ``(exit code, stderr)``."""

    def run(args: list[object], folder: Path, pattern: str) -> tuple[int, str]:
        proc = subprocess.Popen([sys.executable, "-m", "reddiff", *map(str, args)], env=cli_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while time.time() < deadline and not list(folder.glob(pattern)):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err

    return run
