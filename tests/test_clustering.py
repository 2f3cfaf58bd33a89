import numpy as np
import pytest
from sklearn.datasets import make_blobs

from srnet_core.segmentation.clustering import assign, candidate_ks, fit_centres, gap_statistic


def test_candidates_shrink_geometrically():
    assert candidate_ks(24) == [24, 21, 18, 16, 14, 12, 10, 9, 8, 7, 6, 5, 4, 3, 2]
    assert candidate_ks(6) == [6, 5, 4, 3, 2]
    with pytest.raises(ValueError):
        candidate_ks(1)


@pytest.mark.parametrize("true_k", [3, 5, 8])
def test_gap_statistic_recovers_k_on_separated_blobs(true_k):
    data, _ = make_blobs(n_samples=3000, n_features=4, centers=true_k, cluster_std=0.5,
                         center_box=(-20, 20), random_state=true_k)
    result = gap_statistic(data, candidate_ks(16), n_refs=10, seed=0)
    assert result.k == true_k
    curve = result.curve.set_index("k")
    assert list(result.curve["k"]) == sorted(candidate_ks(16))
    # the rule: chosen k passes Gap(k) >= Gap(k') - s_k', every smaller candidate fails it
    ks = list(curve.index)
    i = ks.index(true_k)
    assert curve.gap[ks[i]] >= curve.gap[ks[i + 1]] - curve.s[ks[i + 1]]
    for j in range(i):
        assert curve.gap[ks[j]] < curve.gap[ks[j + 1]] - curve.s[ks[j + 1]]


def test_gap_statistic_refuses_bad_data():
    with pytest.raises(ValueError, match="NaN"):
        gap_statistic(np.array([[0.0, np.nan]] * 50), [2, 3])
    with pytest.raises(ValueError, match="cannot be split"):
        gap_statistic(np.zeros((3, 2)), [2, 3])


def test_assign_nearest_centre_and_soft_map():
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=np.float32)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, size=(40, 30))
    features = centres[truth] + rng.normal(0, 0.5, size=(40, 30, 2)).astype(np.float32)
    labels, soft = assign(features, centres, block_rows=7)
    assert (labels == truth).all()
    assert soft.shape == (3, 40, 30)
    np.testing.assert_allclose(soft.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)
    assert (soft.argmax(axis=0) == truth).all()


def test_fit_centres_finds_blob_centres():
    data, _, truth = make_blobs(n_samples=2000, n_features=3, centers=4, cluster_std=0.3,
                                center_box=(-10, 10), random_state=1, return_centers=True)
    centres = fit_centres(data, 4)
    d = np.linalg.norm(centres[:, None] - truth[None], axis=2)
    assert d.min(axis=1).max() < 0.1
    assert list(np.argsort(centres[:, 0])) == [0, 1, 2, 3]   # ordered, so labels are reproducible
