"""``ifm.blas.syrk_upper``: the in-place symmetric rank-k update the merge loop flushes with."""
import numpy as np
import pytest

from ifm.blas import syrk_upper


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows", [False, True])
def test_syrk_upper_updates_only_the_upper_triangle_of_a_strided_view(dtype, rows):
    rng = np.random.default_rng(0)
    store = rng.standard_normal((9, 11)).astype(dtype)  # the target lives in store[:6, :6] (row stride 11)
    before = store.copy()
    factors = rng.standard_normal((7, 13)).astype(dtype)
    a = factors[:6, :4] if rows else factors[:4, :6]  # row stride 13
    syrk_upper(store[:6, :6], a, -0.5, rows=rows)
    a64 = a.astype(np.float64)
    expect = before[:6, :6].astype(np.float64) - 0.5 * (a64 @ a64.T if rows else a64.T @ a64)
    upper = np.triu_indices(6)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(store[:6, :6][upper], expect[upper], rtol=tol, atol=tol)
    lower = np.tril_indices(6, -1)
    np.testing.assert_array_equal(store[:6, :6][lower], before[:6, :6][lower])
    np.testing.assert_array_equal(store[6:], before[6:])  # nothing outside the view is written
    np.testing.assert_array_equal(store[:, 6:], before[:, 6:])


def test_syrk_upper_rejects_what_it_cannot_update_in_place():
    c = np.zeros((4, 4))
    with pytest.raises(ValueError, match="do not fit"):
        syrk_upper(c, np.ones((3, 5)), 1.0)  # (r, w) with w != 4
    with pytest.raises(ValueError, match="do not fit"):
        syrk_upper(c, np.ones((3, 4), np.float32), 1.0)  # mixed dtypes
    with pytest.raises(ValueError, match="contiguous"):
        syrk_upper(c, np.ones((3, 8))[:, ::2], 1.0)  # (3, 4), columns not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        syrk_upper(np.zeros((8, 8))[::2, ::2], np.ones((3, 4)), 1.0)
