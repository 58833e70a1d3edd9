"""LPIPS, FID and KID in pure PyTorch: the networks against the published architectures (parameter counts from the
torchvision documentation, key/shape tables written from the public definitions), the metrics against the reference
packages that define them (lpips, pytorch-fid; imported over a small stand-in for torchvision that hands them our
backbones), closed forms and direct float64 computations, and the weight files' finding, loading and download."""

from __future__ import annotations

import hashlib
import http.server
import importlib
import importlib.util
import os
import sys
import threading
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from reddiff.errors import CheckpointError
from reddiff.metrics import LPIPS, InceptionFeatures, fid_from_features, frechet_distance, kid_from_features
from reddiff.metrics.backbones import VGG16, AlexNet, FIDInception
from reddiff.metrics.registry import METRICS, available_metrics, metric_status, unavailable_reason
from reddiff.metrics.weights import METRIC_WEIGHTS, fetch_weights, find_weights, load_into

#: The reference packages, installed without their torchvision dependency by the README's test command.
REFERENCES = "lpips==0.1.4 pytorch-fid==0.3.0"


def _reference(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.fail(f"the reference package {package} is missing: pip install --no-deps {REFERENCES}")


def _count(cls: type) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in cls().parameters())


# -- architectures --------------------------------------------------------------------------------------------------
def test_parameter_counts_equal_the_published_ones():
    """torchvision documents AlexNet at 61,100,840 and VGG-16 at 138,357,544 parameters, Inception-v3 (1000 classes,
    auxiliary head) at 27,161,264. The FID network drops the auxiliary head (conv 768->128 1x1 with BN: 98,560;
    conv 128->768 5x5 with BN: 2,459,136; linear 768->1000: 769,000) and has 1008 classes (+8 x 2049):
    27,161,264 - 3,326,696 + 16,392 = 23,850,960."""
    assert _count(AlexNet) == 61_100_840
    assert _count(VGG16) == 138_357_544
    assert _count(FIDInception) == 23_850_960


def _alexnet_table() -> dict[str, tuple[int, ...]]:
    """torchvision's AlexNet checkpoint: conv layers at features 0, 3, 6, 8, 10, linear layers at classifier 1, 4, 6."""
    convs = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    lins = {1: (4096, 9216), 4: (4096, 4096), 6: (1000, 4096)}
    table = {}
    for i, shape in convs.items():
        table[f"features.{i}.weight"], table[f"features.{i}.bias"] = shape, shape[:1]
    for i, shape in lins.items():
        table[f"classifier.{i}.weight"], table[f"classifier.{i}.bias"] = shape, shape[:1]
    return table


def _vgg16_table() -> dict[str, tuple[int, ...]]:
    """torchvision's VGG-16 checkpoint: 13 3x3 convolutions (features 0 2 5 7 10 12 14 17 19 21 24 26 28), linear
    layers at classifier 0, 3, 6."""
    convs = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
             (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
    table: dict[str, tuple[int, ...]] = {}
    for i, c_in, c_out in convs:
        table[f"features.{i}.weight"], table[f"features.{i}.bias"] = (c_out, c_in, 3, 3), (c_out,)
    for i, shape in {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}.items():
        table[f"classifier.{i}.weight"], table[f"classifier.{i}.bias"] = shape, shape[:1]
    return table


@pytest.mark.parametrize(("cls", "table"), [(AlexNet, _alexnet_table), (VGG16, _vgg16_table)])
def test_backbone_keys_and_shapes_equal_torchvision_checkpoints(cls, table):
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in cls().state_dict().items()}
    assert ours == table()


def test_lpips_linear_layer_table():
    """The published v0.1 files hold lin0..lin4.model.1.weight of shape [1, C, 1, 1] (Dropout is model.0)."""
    for net, chans in (("alex", (64, 192, 384, 256, 256)), ("vgg", (64, 128, 256, 512, 512))):
        m = LPIPS(net)
        assert {f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate(chans)} == {
            f"lin{i}.{k}": tuple(v.shape) for i, lin in enumerate(m.lins) for k, v in lin.state_dict().items()}


def test_published_lpips_linear_weights_load():
    """The lpips package's v0.1 files (the published ones, found inside the installed package without importing
    it): every key loads, and the weights are non-negative as published."""
    _reference("lpips")
    for net in ("alex", "vgg"):
        path = find_weights(f"lpips-{net}")
        assert path is not None and path.name == f"{net}.pth"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == METRIC_WEIGHTS[f"lpips-{net}"].sha256
        m = LPIPS(net, linear=str(path))
        w = torch.cat([lin.model[1].weight.flatten() for lin in m.lins])
        assert (w >= 0).all() and w.sum() > 0


def _random_state(table: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=gen) for k, s in table.items()}


def test_loading_checks_keys_and_shapes(tmp_path):
    """A random state dict with exactly the table's keys loads (and is what the network then holds); one missing,
    extra or misshapen key is refused with one line naming it."""
    state = _random_state(_alexnet_table())
    good = tmp_path / "alexnet.pth"
    torch.save(state, good)
    with torch.device("meta"):
        net = AlexNet()
    load_into(net, good, "AlexNet")
    assert torch.equal(net.features[3].weight, state["features.3.weight"])
    for name, broken in (("missing", {k: v for k, v in state.items() if k != "features.8.bias"}),
                         ("extra", {**state, "features.1.weight": torch.zeros(3)}),
                         ("shape", {**state, "features.0.weight": torch.zeros(64, 3, 5, 5)})):
        path = tmp_path / f"{name}.pth"
        torch.save(broken, path)
        with torch.device("meta"):
            net = AlexNet()
        with pytest.raises(CheckpointError) as info:
            load_into(net, path, "AlexNet")
        assert "\n" not in str(info.value) and ("features.8.bias" in str(info.value) or
                                                "features.1.weight" in str(info.value) or
                                                "features.0.weight" in str(info.value))


def test_inception_checkpoint_loads_with_or_without_batch_norm_counters(tmp_path):
    net = FIDInception()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    full = net.state_dict()
    for counters in (True, False):
        state = {k: v for k, v in full.items() if counters or not k.endswith("num_batches_tracked")}
        path = tmp_path / f"inception_{counters}.pth"
        torch.save(state, path)
        feats = InceptionFeatures(str(path))
        assert all(not t.is_meta for t in feats.state_dict().values())
        assert torch.equal(feats.net.Mixed_7c.branch_pool.conv.weight, full["Mixed_7c.branch_pool.conv.weight"])


def test_pickled_code_in_a_metric_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "hook": types.SimpleNamespace(a=1)}, path)
    with torch.device("meta"):
        net = AlexNet()
    with pytest.raises(CheckpointError):
        load_into(net, path, "AlexNet")


# -- a stand-in for torchvision, so the reference packages can be imported ------------------------------------------
@pytest.fixture
def fake_torchvision(monkeypatch):
    """A ``torchvision`` module whose model constructors return this package's networks, their weights set by the
    test (``holder["alexnet"]`` etc.); the reference packages slice and patch them exactly as they do torchvision's."""
    from reddiff.metrics import backbones as bb

    holder: dict[str, dict[str, torch.Tensor]] = {}
    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.21.0"
    models = types.ModuleType("torchvision.models")
    inception = types.ModuleType("torchvision.models.inception")

    def net_with(cls: type, key: str) -> torch.nn.Module:
        net = cls()
        if key in holder:
            net.load_state_dict(holder[key], strict=False)
        return net

    models.alexnet = lambda pretrained=False, **kw: net_with(AlexNet, "alexnet")
    models.vgg16 = lambda pretrained=False, **kw: types.SimpleNamespace(features=net_with(_VGGFeatures, "vgg16"))
    models.inception_v3 = lambda **kw: FIDInception(num_classes=kw.get("num_classes", 1000))

    class InceptionE(bb._BlockE):
        def __init__(self, c_in: int) -> None:
            super().__init__(c_in, max_pool=False)

    inception.InceptionA, inception.InceptionC, inception.InceptionE = bb._BlockA, bb._BlockC, InceptionE
    models.inception = inception
    tv.models = models
    tv.transforms = types.ModuleType("torchvision.transforms")
    for name, mod in (("torchvision", tv), ("torchvision.models", models), ("torchvision.models.inception", inception),
                      ("torchvision.transforms", tv.transforms)):
        monkeypatch.setitem(sys.modules, name, mod)
    before = set(sys.modules)
    yield holder
    for name in set(sys.modules) - before:  # the reference packages were imported against the stand-in
        if name.split(".")[0] in ("lpips", "pytorch_fid"):
            del sys.modules[name]


class _VGGFeatures(torch.nn.Module):
    """VGG-16's ``features`` alone (the classifier's 120M parameters are not needed to compare features)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg_features()

    def __getitem__(self, i: int) -> torch.nn.Module:
        return self.features[i]

    def load_state_dict(self, state, strict=True, assign=False):  # noqa: D102 - keys with the "features." prefix
        return self.features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                                              if k.startswith("features.")}, strict=strict)


def _vgg_features() -> torch.nn.Sequential:
    with torch.device("meta"):
        full = VGG16()
    feats = full.features.to_empty(device="cpu")
    for m in feats:
        if isinstance(m, torch.nn.Conv2d):
            m.reset_parameters()
    return feats


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_the_reference_package(fake_torchvision, net):
    """Same backbone weights, the published linear layers: our LPIPS equals lpips.LPIPS to float32 rounding on
    random images (and on a real picture against a distorted copy)."""
    _reference("lpips")
    torch.manual_seed(0)
    ours = LPIPS(net, linear=str(find_weights(f"lpips-{net}")))
    feats = ours.net.features
    for m in feats:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=(2 / m.weight[0].numel()) ** 0.5)
            torch.nn.init.normal_(m.bias, std=0.1)
    fake_torchvision["alexnet" if net == "alex" else "vgg16"] = {f"features.{k}": v
                                                                   for k, v in feats.state_dict().items()}
    lpips = importlib.import_module("lpips")
    ref = lpips.LPIPS(net=net, verbose=False)
    from skimage import data

    pic = torch.from_numpy(data.camera()[100:164, 200:264].astype(np.float32) / 127.5 - 1).expand(1, 3, 64, 64)
    a = torch.cat([torch.rand(2, 3, 48, 64) * 2 - 1, torch.zeros(1, 3, 48, 64)])
    b = torch.cat([torch.rand(2, 3, 48, 64) * 2 - 1, torch.full((1, 3, 48, 64), 0.3)])
    with torch.no_grad():
        for x, y in ((a, b), (pic, (pic + 0.1 * torch.randn_like(pic)).clamp(-1, 1))):
            want = ref(x, y).flatten()
            got = ours(x, y)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
            assert (got > 0).all()


def test_lpips_properties():
    torch.manual_seed(1)
    m = LPIPS("alex")
    x, y = torch.rand(3, 3, 64, 64) * 2 - 1, torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert m(x, x).abs().max() == 0
        d = m(x, y)
        torch.testing.assert_close(m(y, x), d)
        torch.testing.assert_close(m(x[1:2], y[1:2]), d[1:2])  # batch independence
        assert (d > 0).all()
        near = m(x, (x + 0.02 * torch.randn_like(x)).clamp(-1, 1))
        assert (near < d).all()
    with pytest.raises(ValueError, match="one shape"):
        m(x, y[:, :, :32])


def test_inception_features_equal_pytorch_fid(fake_torchvision, monkeypatch):
    """pytorch-fid's InceptionV3 (its FID patches of blocks 5b-7c, its resize and normalisation), given the same
    random weights and batch-norm statistics, returns our 2048-d features to float32 rounding."""
    _reference("pytorch_fid")
    torch.manual_seed(2)
    net = FIDInception()
    for name, t in net.state_dict().items():
        if name.endswith("running_var"):
            t.uniform_(0.5, 2.0)
        elif name.endswith("running_mean") or name.endswith(".bias"):
            t.normal_(std=0.1)
        elif name.endswith("bn.weight"):
            t.uniform_(0.8, 1.2)
        elif t.is_floating_point():
            t.normal_(std=(2 / t[0].numel()) ** 0.5)
    state = net.state_dict()
    inception = importlib.import_module("pytorch_fid.inception")
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **kw: state)
    ref = inception.InceptionV3([3]).eval()
    ours = InceptionFeatures()
    ours.net.load_state_dict(state)
    x = torch.rand(2, 3, 64, 80) * 2 - 1
    with torch.no_grad():
        want = ref((x + 1) / 2)[0].flatten(1)
        got = ours(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert want.std() > 0


# -- FID and KID ---------------------------------------------------------------------------------------------------
def test_frechet_distance_closed_form():
    """Commuting covariances: |m1 - m2|^2 + sum (sqrt a_i - sqrt b_i)^2; a rotated pair too (invariant)."""
    gen = torch.Generator().manual_seed(3)
    d = 16
    a, b = torch.rand(d, generator=gen, dtype=torch.float64) + 0.1, torch.rand(d, generator=gen, dtype=torch.float64)
    m1, m2 = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    want = float((m1 - m2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    assert frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(want, rel=1e-10)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    got = frechet_distance(q @ m1, q @ torch.diag(a) @ q.T, q @ m2, q @ torch.diag(b) @ q.T)
    assert got == pytest.approx(want, rel=1e-9)


def test_frechet_distance_non_commuting_against_scipy():
    """General covariances: equal to tr(S1 + S2 - 2 sqrtm(S1 S2)) by scipy in float64."""
    from scipy import linalg

    rng = np.random.default_rng(4)
    d = 12
    g1, g2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = g1 @ g1.T + 0.1 * np.eye(d), g2 @ g2.T
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    want = float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))
    got = frechet_distance(*(torch.from_numpy(t) for t in (m1, s1, m2, s2)))
    assert got == pytest.approx(want, rel=1e-9)


def test_fid_from_features_gaussian_samples_and_rank_deficiency():
    """Samples of two Gaussians approach the closed form as n grows; fewer samples than dimensions (singular
    covariances, as with a few test images and 2048 features) still give a finite non-negative value; a set
    against itself gives 0."""
    gen = torch.Generator().manual_seed(5)
    d, n = 4, 20000
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, d, generator=gen, dtype=torch.float64) * 2 + 1
    want = d * 1.0 + d * (1 - 2) ** 2  # |m|^2 = 4, sum (1 - 2)^2 = 4
    assert fid_from_features(x, y) == pytest.approx(want, rel=0.03)
    few = torch.randn(10, 64, generator=gen)
    other = torch.randn(12, 64, generator=gen) + 0.5
    v = fid_from_features(few, other)
    assert np.isfinite(v) and v > 0
    assert fid_from_features(few, few) == pytest.approx(0.0, abs=1e-8)


def test_fid_matches_pytorch_fid_frechet_distance(fake_torchvision):
    _reference("pytorch_fid")
    fid_score = importlib.import_module("pytorch_fid.fid_score")
    rng = np.random.default_rng(6)
    f1, f2 = rng.normal(size=(300, 32)), rng.normal(size=(250, 32)) * 1.3 + 0.2
    want = fid_score.calculate_frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0),
                                                np.cov(f2, rowvar=False))
    assert fid_from_features(torch.from_numpy(f1), torch.from_numpy(f2)) == pytest.approx(want, rel=1e-8)


def test_kid_against_a_direct_float64_computation():
    """The unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3, summed pair by pair; one subset of all images equals it,
    several subsets give its mean and spread, and identical distributions give about 0."""
    gen = torch.Generator().manual_seed(7)
    n, d = 9, 5
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.7

    def k(a, b):
        return (float(a @ b) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(n)) / (n * n)
    mean, std = kid_from_features(x, y, subsets=1, subset_size=n)
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-12) and std == 0.0
    mean, std = kid_from_features(x, y, subsets=50, subset_size=5)
    assert std > 0 and abs(mean - (xx + yy - 2 * xy)) < 4 * std + 0.5
    a = torch.randn(400, d, generator=gen, dtype=torch.float64)
    b = torch.randn(400, d, generator=gen, dtype=torch.float64)
    assert abs(kid_from_features(a, b, subsets=10, subset_size=200)[0]) < 0.02
    assert kid_from_features(x, y, seed=1) == kid_from_features(x, y, seed=1)


# -- availability, finding and downloading ---------------------------------------------------------------------------
def test_missing_weights_make_a_metric_unavailable_with_one_message():
    assert {"psnr", "ssim"} <= set(available_metrics())
    for name in ("lpips", "fid", "kid", "lpips-vgg"):
        assert name not in available_metrics()
        reason = unavailable_reason(name)
        assert reason and "\n" not in reason and "--download-weights" in reason
    with pytest.raises(CheckpointError, match="pt_inception-2015-12-05-6726825d.pth"):
        InceptionFeatures.published()
    with pytest.raises(CheckpointError, match="alexnet-owt-7be5be79.pth"):
        LPIPS.published("alex")
    status = metric_status("fid")
    assert status["available"] is False and status["weights"][0]["found"] is None
    assert set(METRICS) == {"psnr", "ssim", "lpips", "lpips-vgg", "fid", "kid"}


def test_weights_in_the_torch_hub_cache_are_found(tmp_path, monkeypatch):
    """torchvision and pytorch-fid keep the same files under the same names in $TORCH_HOME/hub/checkpoints."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"x")
    assert find_weights("inception-fid") == hub / "pt_inception-2015-12-05-6726825d.pth"
    assert "fid" in available_metrics() and "kid" in available_metrics()


class _Server:
    """A loopback HTTP server for one folder."""

    def __init__(self, folder: Path) -> None:
        handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **kw)  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_from_a_loopback_server_is_verified_and_atomic(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("REDDIFF_OFFLINE", raising=False)
    served = tmp_path / "served"
    served.mkdir()
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))},
               served / "alex.pth")
    digest = hashlib.sha256((served / "alex.pth").read_bytes()).hexdigest()
    server = _Server(served)
    try:
        entry = replace(METRIC_WEIGHTS["lpips-alex"], url=f"{server.url}/alex.pth", sha256=digest, package_path=None)
        path = fetch_weights("lpips-alex", progress=False, weights=entry)
        assert path.parent == Path(os.environ["REDDIFF_METRICS_DIR"]) and path.name == "lpips-v0.1-alex.pth"
        LPIPS("alex", linear=str(path))  # loads
        path.unlink()
        bad = replace(entry, sha256="0" * 64)
        with pytest.raises(CheckpointError, match="sha256"):
            fetch_weights("lpips-alex", progress=False, weights=bad)
        prefix = replace(entry, sha256=None, sha256_prefix="ffffffff")
        with pytest.raises(CheckpointError, match="not the published file"):
            fetch_weights("lpips-alex", progress=False, weights=prefix)
        missing = replace(entry, url=f"{server.url}/nothing.pth")
        with pytest.raises(CheckpointError, match="404"):
            fetch_weights("lpips-alex", progress=False, weights=missing)
        assert not any(Path(os.environ["REDDIFF_METRICS_DIR"]).iterdir())  # nothing half-written
    finally:
        server.close()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="downloads are disabled"):
        fetch_weights("lpips-alex", progress=False, weights=replace(entry, package_path=None))
