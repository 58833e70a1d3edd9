"""Checkpoint resolution, download, safe loading and saving."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from reddiff.errors import CheckpointError, ReddiffError
from reddiff.networks import NAMED_PRIORS, ADMUNet, create_model, hub, load_network, loading

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "adm"
TINY_A = FIXTURES / "tiny_a.pt"

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixtures not found at {FIXTURES}")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No test may reach the network or the user's cache; the loopback tests lift the guard explicitly.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("REDDIFF_OFFLINE", raising=False)
    monkeypatch.setenv("REDDIFF_CACHE", str(tmp_path / "cache"))


def tiny_io(name: str = "a") -> dict:
    return torch.load(FIXTURES / f"tiny_{name}_io.pt", weights_only=True)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server serving a directory holding tiny_a.pt; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "tiny_a.pt").write_bytes(TINY_A.read_bytes())
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_named_priors() -> None:
    assert set(NAMED_PRIORS) == {"imagenet256-uncond", "ffhq256"}
    imagenet = NAMED_PRIORS["imagenet256-uncond"]
    assert imagenet.filename == "256x256_diffusion_uncond.pt"
    assert imagenet.urls == (
        "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
    )
    assert NAMED_PRIORS["ffhq256"].filename == "ffhq_10m.pt"
    manifest = json.loads((FIXTURES / "adm_state_dict_manifest.json").read_text())
    for name, entry in (("imagenet256-uncond", "imagenet256_uncond"), ("ffhq256", "ffhq256_dps")):
        with torch.device("meta"):
            model = create_model(**NAMED_PRIORS[name].config)
        assert {k: list(v.shape) for k, v in model.state_dict().items()} == manifest[entry]["state_dict"]
    with pytest.raises(AttributeError):
        imagenet.name = "x"  # type: ignore[misc]


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REDDIFF_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("REDDIFF_CACHE")
    assert hub.cache_dir() == tmp_path / "xdg" / "reddiff"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hub.cache_dir() == Path.home() / ".cache" / "reddiff"


def test_download_success(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    data = TINY_A.read_bytes()
    dest = hub.cache_dir() / "tiny.pt"
    got = hub.download(
        f"{server}/tiny_a.pt", dest, size=len(data), sha256=hashlib.sha256(data).hexdigest(), progress=False
    )
    assert got == dest and dest.read_bytes() == data
    assert [p.name for p in dest.parent.iterdir()] == ["tiny.pt"]


def test_download_wrong_sha256_leaves_nothing(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    dest = tmp_path / "dl" / "tiny.pt"
    with pytest.raises(CheckpointError, match="sha256") as info:
        hub.download(f"{server}/tiny_a.pt", dest, sha256="0" * 64, progress=False)
    assert "\n" not in str(info.value) and "tiny_a.pt" in str(info.value)
    assert list(dest.parent.iterdir()) == []


def test_download_wrong_size_and_failed_verify(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    dest = tmp_path / "dl" / "tiny.pt"
    with pytest.raises(CheckpointError, match="bytes"):
        hub.download(f"{server}/tiny_a.pt", dest, size=5, progress=False)

    def reject(path: Path) -> None:
        raise CheckpointError("rejected")

    with pytest.raises(CheckpointError, match="rejected"):
        hub.download(f"{server}/tiny_a.pt", dest, verify=reject, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_download_404(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    dest = tmp_path / "dl" / "missing.pt"
    with pytest.raises(CheckpointError, match="404"):
        hub.download(f"{server}/missing.pt", dest, progress=False)
    assert list(dest.parent.iterdir()) == []


@pytest.mark.parametrize("var", ["REDDIFF_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_forbids_download(var: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv(var, "1")
    with pytest.raises(CheckpointError, match=f"{var}.*local path"):
        hub.download("http://127.0.0.1:9/x.pt", tmp_path / "x.pt", progress=False)
    with pytest.raises(CheckpointError, match="disabled"):
        hub.resolve_checkpoint("imagenet256-uncond", cache_dir=tmp_path / "empty")
    assert not (tmp_path / "x.pt").exists()


def test_named_prior_download_and_cache(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    config = tiny_io()["config"]
    prior = hub.NamedPrior("tiny", "test prior", "tiny.pt", (f"{server}/missing.pt", f"{server}/tiny_a.pt"), config)
    monkeypatch.setitem(hub.NAMED_PRIORS, "tiny", prior)
    path, got = hub.resolve_checkpoint("tiny", cache_dir=tmp_path / "c", progress=False)
    assert got is prior and path == tmp_path / "c" / "tiny.pt" and path.read_bytes() == TINY_A.read_bytes()
    # Second use: from the cache, no download (offline now).
    monkeypatch.setenv("REDDIFF_OFFLINE", "1")
    assert hub.resolve_checkpoint("tiny", cache_dir=tmp_path / "c")[0] == path
    net, info = load_network("tiny", cache_dir=tmp_path / "c")
    assert info["name"] == "tiny" and info["sha256"] == hashlib.sha256(TINY_A.read_bytes()).hexdigest()


def test_named_prior_wrong_architecture_rejected(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    config = tiny_io("b")["config"]  # tiny_a's weights do not fit tiny_b's architecture
    prior = hub.NamedPrior("tiny", "test prior", "tiny.pt", (f"{server}/tiny_a.pt",), config)
    monkeypatch.setitem(hub.NAMED_PRIORS, "tiny", prior)
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        hub.resolve_checkpoint("tiny", cache_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "tiny.pt").exists()


def test_manual_only_prior_says_how(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="manually.*pass its path"):
        hub.resolve_checkpoint("ffhq256", cache_dir=tmp_path)


def test_resolve_path_and_unknown(tmp_path: Path) -> None:
    assert hub.resolve_checkpoint(TINY_A) == (TINY_A, None)
    assert hub.resolve_checkpoint(str(TINY_A)) == (TINY_A, None)
    with pytest.raises(CheckpointError, match="imagenet256-uncond, ffhq256"):
        hub.resolve_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        hub.resolve_checkpoint(tmp_path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    data = TINY_A.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt") as info:
        loading.load_state_dict_file(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError):
        load_network(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        loading.load_state_dict_file(junk)


class _RunsShellOnUnpickle:
    """An object whose unpickling would run a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"echo pwned > {shlex.quote(str(self.marker))}",)


def test_pickled_code_refused_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _RunsShellOnUnpickle(marker)}, evil)
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint") as info:
        loading.load_state_dict_file(evil)
    message = str(info.value)
    assert "\n" not in message and "evil.pt" in message and "weights_only" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # PyTorch's advice is not repeated
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint"):
        load_network(evil)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_unreadable_checkpoint_is_one_line(kind: str, tmp_path: Path) -> None:
    bad = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        bad.write_bytes(TINY_A.read_bytes()[:1000])
    else:
        bad.write_text("these are my notes,\nnot a checkpoint\n")
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint") as info:
        loading.load_state_dict_file(bad)
    assert "\n" not in str(info.value) and f"{kind}.pt" in str(info.value)


def test_wrapped_state_dict(tmp_path: Path) -> None:
    sd = torch.load(TINY_A, weights_only=True)
    torch.save({"ema": {f"module.{k}": v for k, v in sd.items()}, "step": 3}, tmp_path / "wrapped.pt")
    loaded = loading.load_state_dict_file(tmp_path / "wrapped.pt")
    assert loaded.keys() == sd.keys()
    torch.save({"ema": sd, "model": sd}, tmp_path / "ambiguous.pt")
    with pytest.raises(CheckpointError, match="single state dict"):
        loading.load_state_dict_file(tmp_path / "ambiguous.pt")


def test_extra_and_missing_keys_named() -> None:
    io = tiny_io()
    sd = torch.load(TINY_A, weights_only=True)
    extra = {**sd, "input_blocks.99.0.bogus": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"unexpected keys input_blocks\.99\.0\.bogus") as info:
        loading.build_network(extra, io["config"])
    assert "\n" not in str(info.value) and "--prior-config" in str(info.value)
    missing = {k: v for k, v in sd.items() if k != "middle_block.1.qkv.bias"}
    with pytest.raises(CheckpointError, match=r"missing keys middle_block\.1\.qkv\.bias"):
        loading.build_network(missing, io["config"])
    with pytest.raises(CheckpointError, match="shape mismatch"):
        loading.build_network(sd, {**io["config"], "num_channels": 64, "num_head_channels": -1})


def test_build_network_reproduces_and_does_not_share() -> None:
    io = tiny_io()
    sd = torch.load(TINY_A, weights_only=True)
    net = loading.build_network(sd, io["config"]).eval()
    with torch.no_grad():
        assert rel_err(net(io["x"], io["t"]), io["out"]) <= 1e-5
        net.out[2].bias.zero_()
    assert sd["out.2.bias"].abs().sum() > 0


def test_json_config_path(tmp_path: Path) -> None:
    io = tiny_io()
    config_file = tmp_path / "net.json"
    config_file.write_text(json.dumps(io["config"]))
    net, info = load_network(TINY_A, config_file)
    with torch.no_grad():
        assert rel_err(net(io["x"], io["t"]), io["out"]) <= 1e-5
    assert info["path"] == str(TINY_A) and info["learned_sigma"] is True
    assert info["config"]["num_head_channels"] == 16
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="bad.json"):
        load_network(TINY_A, tmp_path / "bad.json")
    with pytest.raises(ReddiffError, match="bogus_key"):
        load_network(TINY_A, {**io["config"], "bogus_key": 1})


def test_load_network_infers_and_freezes() -> None:
    net, info = load_network(TINY_A, progress=False)
    assert isinstance(net, ADMUNet) and not net.training
    assert all(not p.requires_grad for p in net.parameters())
    assert info["sha256"] == hashlib.sha256(TINY_A.read_bytes()).hexdigest()
    assert info["config"]["num_res_blocks"] == 2 and info["config"]["channel_mult"] == "1,2,2"


def test_save_load_roundtrip(tmp_path: Path) -> None:
    io = tiny_io("b")
    net, _ = load_network(FIXTURES / "tiny_b.pt", io["config"])
    saved = loading.save_network(net, tmp_path / "model" / "tiny.safetensors")
    assert saved.is_file() and (tmp_path / "model" / "tiny.json").is_file()
    assert sorted(p.name for p in saved.parent.iterdir()) == ["tiny.json", "tiny.safetensors"]
    again, info = load_network(saved)  # config from the sibling JSON (head split included)
    assert info["config"] == net.config
    with torch.no_grad():
        a, b = net(io["x"], io["t"]), again(io["x"], io["t"])
    assert torch.equal(a, b)
    assert rel_err(b, io["out"]) <= 1e-5
    with pytest.raises(ReddiffError, match="safetensors"):
        loading.save_network(net, tmp_path / "model.pt")


def test_config_json_sibling(tmp_path: Path) -> None:
    io = tiny_io()
    (tmp_path / "weights.pt").write_bytes(TINY_A.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(io["config"]))
    net, info = load_network(tmp_path / "weights.pt")
    assert info["config"]["num_head_channels"] == 16
    with torch.no_grad():
        assert rel_err(net(io["x"], io["t"]), io["out"]) <= 1e-5
