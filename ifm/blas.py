"""Symmetric rank-k updates (BLAS ``syrk``) on NumPy views, through SciPy's Cython BLAS.

A Gram matrix update ``C += alpha · A^T A`` is symmetric: ``syrk`` computes one triangle, half the
work of a general matrix product, in place (no temporary ``w x w`` matrix, which NumPy's
``A.T @ A`` makes and then mirrors). NumPy and PyTorch do not expose it; SciPy exports the BLAS
routines as C function pointers (``scipy.linalg.cython_blas``), called here through ``ctypes``.
"""
from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np

_ARGS = [ctypes.c_void_p] * 10  # uplo, trans, n, k, alpha, a, lda, beta, c, ldc: all by reference


@lru_cache(maxsize=None)
def _routine(name: str):
    import scipy.linalg.cython_blas as cython_blas

    capsule = ctypes.py_object(cython_blas.__pyx_capi__[name])
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return ctypes.CFUNCTYPE(None, *_ARGS)(get_pointer(capsule, get_name(capsule)))


_SCALARS = {np.dtype(np.float64): ("dsyrk", ctypes.c_double), np.dtype(np.float32): ("ssyrk", ctypes.c_float)}


def syrk_upper(c: np.ndarray, a: np.ndarray, alpha: float, rows: bool = False) -> None:
    """``c += alpha · a^T a`` (``rows``: ``alpha · a a^T``) on the upper triangle of ``c`` (``c[i, j]``,
    ``i <= j``); the strict lower triangle is left as it was.

    ``c``: ``(w, w)``; ``a``: ``(r, w)`` (``rows``: ``(w, r)``); both C-ordered views with unit
    column stride (any row stride), float64 or float32 alike.
    """
    w, r = a.shape if rows else a.shape[::-1]
    if c.shape != (w, w) or c.dtype != a.dtype or c.dtype not in _SCALARS:
        raise ValueError(f"syrk_upper: shapes {c.shape}, {a.shape} and dtypes {c.dtype}, {a.dtype} do not fit")
    if r == 0 or w == 0:
        return
    item = c.itemsize
    if c.strides[1] != item or a.strides[1] != item or c.strides[0] < w * item or a.strides[0] < a.shape[1] * item:
        raise ValueError("syrk_upper: rows must be contiguous")
    name, scalar = _SCALARS[c.dtype]
    # Column-major BLAS sees a C-ordered (w, w) block as its transpose: our upper triangle is its lower.
    # Likewise ``a`` (r, w) with row stride lda is the column-major (w, r) matrix a^T: ``N`` gives
    # a^T a; ``a`` (w, r) is the column-major (r, w) matrix a^T, and ``T`` gives a a^T.
    lda, ldc = ctypes.c_int(a.strides[0] // item), ctypes.c_int(c.strides[0] // item)
    ref = ctypes.byref
    _routine(name)(ctypes.c_char_p(b"L"), ctypes.c_char_p(b"T" if rows else b"N"), ref(ctypes.c_int(w)),
                   ref(ctypes.c_int(r)), ref(scalar(alpha)), ctypes.c_void_p(a.ctypes.data), ref(lda),
                   ref(scalar(1.0)), ctypes.c_void_p(c.ctypes.data), ref(ldc))
