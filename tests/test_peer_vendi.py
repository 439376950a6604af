"""class_diversity against vendi-score's score_dual, class by class (slow; skips without vendi-score)."""
import numpy as np
import pytest
import torch

pytest.importorskip("vendi_score")
pytest.importorskip("sklearn")
from sklearn.preprocessing import normalize  # noqa: E402
from vendi_score import vendi  # noqa: E402

from fmkit.diversity import class_diversity  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("q", [1, 2, "inf"])
@pytest.mark.parametrize("d", [16, 96])
def test_intra_and_inter_equal_score_dual(q, d):
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 60, size=40)  # classes smaller and larger than d
    centres = rng.normal(size=(40, d))
    x = np.concatenate([c + rng.normal(size=(s, d)) for c, s in zip(centres, sizes)])
    labels = np.repeat(np.arange(40), sizes)
    perm = rng.permutation(len(x))
    out = class_diversity(torch.from_numpy(x[perm]), labels[perm], q=q)
    for c in range(40):
        ref = vendi.score_dual(x[labels == c], q=q)
        assert float(out.intra[c]) == pytest.approx(ref, rel=1e-6)
    unit = normalize(x)
    means = np.stack([unit[labels == c].mean(0) for c in range(40)])
    assert out.inter == pytest.approx(vendi.score_dual(means, q=q), rel=1e-6)


def test_float32_features_within_1e6_of_float64_score_dual():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50 * 30, 64)).astype(np.float32)
    labels = np.repeat(np.arange(50), 30)
    out = class_diversity(torch.from_numpy(x), labels)
    ref = np.array([vendi.score_dual(x[labels == c].astype(np.float64)) for c in range(50)])
    np.testing.assert_allclose(out.intra.numpy(), ref, rtol=1e-6)
