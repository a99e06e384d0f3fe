"""Compiled (Numba) loops of the merge bookkeeping in :mod:`ifm.gram`.

A merge changes O(n·k) numbers spread over a dozen arrays; done as NumPy calls that is a few dozen
calls of a few microseconds each, which dominated the whole run. Each function here does one step
of a merge in one call. They are plain loops over the same float operations as the NumPy
expressions they replace (no fast-math: no reassociation, no fused multiply-adds), compiled on first
use and cached on disk.

Conventions shared with :class:`ifm.gram.GroupGram`:

* ``parts[q]`` (``q`` = 0: rows part, 1: columns part) is symmetric, and only its upper triangle
  (``[i, j]`` with ``i <= j``) is kept up to date: :func:`upper` reads it.
* Pending products ``U diag(sign) U^T`` are stored as rows of ``basis`` (``basis[c, p]`` = ``U[p, c]``)
  in three regions described by a :class:`PendingLayout`.
* A group's candidate pairs are :class:`CandidatePairs`, of which the first ``n_pairs`` are live, and its
  per-position numbers are :class:`PositionStats`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_jit = numba.njit(cache=True, nogil=True)

#: strided loops ask for the cache lines of this many iterations ahead (columns of a Gram part, slices of a
#: weight along its second axis: each in another page, which the hardware prefetchers do not follow)
AHEAD = 16


@intrinsic
def _prefetch_byte(typingctx, array, offset):
    """LLVM's prefetch of the cache line holding byte ``offset`` of ``array``'s data (no effect on results)."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer = builder.gep(builder.bitcast(data, ir.IntType(8).as_pointer()), [args[1]])
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic("llvm.prefetch", [pointer.type],
                                              ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]))
        builder.call(fn, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(array, offset), codegen


@_jit
def prefetch(array, i, j, k, lines):
    """Ask for the cache line of element ``[i, j, k]`` of a 3-D array and the ``lines - 1`` after it."""
    offset = i * array.strides[0] + j * array.strides[1] + k * array.strides[2]
    for line in range(lines):
        _prefetch_byte(array, offset + 64 * line)


class CandidatePairs(NamedTuple):
    """Position pairs ``(i[t], j[t])`` and their exact Eq. 6 distances ``d[t]`` (room for more than are live)."""
    i: np.ndarray
    j: np.ndarray
    d: np.ndarray


class PositionStats(NamedTuple):
    """Per position: ``diag`` = ``G_pp`` (pending products included) and ``moved`` = how far the position's
    distances to non-candidates may have fallen since the last full pass (half the bound, see ``ifm.gram``)."""
    diag: np.ndarray
    moved: np.ndarray


class PendingLayout(NamedTuple):
    """Where the pending products sit in ``basis``: the summed part's (all sign -1: neighbours average their
    channels in it) in ``[0, summed_used)``; the count-weighted part's sign +1 columns in ``[capacity,
    capacity + plus_used)`` and its sign -1 columns in ``[capacity + weighted_half, capacity + weighted_half +
    minus_used)``. Under the official rule the summed part is the rows part, the weighted one the columns part."""
    summed_used: int
    plus_used: int
    minus_used: int
    capacity: int
    weighted_half: int


class MergeWeights(NamedTuple):
    """Channels ``a`` and ``b`` merge; a count-weighted mean gives them the weights ``wa`` and ``wb``."""
    a: int
    b: int
    wa: float
    wb: float


@_jit
def upper(parts, q, i, j):
    """``parts[q][i, j]`` of a symmetric matrix whose upper triangle is kept."""
    if i <= j:
        return parts[q, i, j]
    return parts[q, j, i]


@_jit
def region(which, layout):
    """Pending rows ``lo .. hi`` of region ``which`` (0, 1, 2) of a :class:`PendingLayout`, their sign, and
    whether the summed part (``True``: an own merge sums it; the rows part under the official rule) or the
    count-weighted part holds them."""
    if which == 0:
        return 0, layout.summed_used, -1.0, True
    if which == 1:
        return layout.capacity, layout.capacity + layout.plus_used, 1.0, False
    start = layout.capacity + layout.weighted_half
    return start, start + layout.minus_used, -1.0, False


@_jit
def merge_linked(slices, merge, mean, slot_pos, width, dest, first_row, second_row, stats, pairs, n_pairs):
    """A neighbour merges its channels ``a`` and ``b`` (weights ``wa``, ``wb``) in a tensor that this
    group indexes too: merge their slices in place at this group's live slots, write the change of
    this group's Gram matrix, ``u diag(sign) u^T``, into ``dest``: the first ``k`` columns of ``u``
    (sign +1 for summed rows, -1 for averaged columns) as rows ``first_row ..`` and the last ``k``
    (sign -1) as rows ``second_row ..`` (``dest[row + c, p] = u[p, c]``); and update ``diag``,
    ``moved`` (by the squares of ``u_p``'s sign -1 columns) and the candidates' distances by it.
    Returns the largest square sum of a ``u_p``'s sign +1 columns.

    ``slices[c]``: the neighbour's channel ``c`` slice (one row per slot of this group).
    ``slot_pos[s]``: the position of slot ``s`` (-1: dead; its values are left as they are).
    Summed rows (``mean`` false): ``A B^T + B A^T = (P P^T - Q Q^T) / 2``, ``u = [P, Q] / sqrt 2``
    with ``P = A + B``, ``Q = A - B``. Count-weighted columns (``mean`` true): ``N N^T - A A^T - B B^T
    = -X X^T`` with ``X = [B + wb (A - B), sqrt(2 wa wb) (A - B)]``.
    """
    a, b, wa, wb = merge
    diag, moved = stats
    k = slices.shape[2]
    inv_sqrt2 = math.sqrt(0.5)
    spread_scale = math.sqrt(2.0 * wa * wb)
    first_sign = -1.0 if mean else 1.0
    u = np.empty((width, 2 * k), dest.dtype)  # compact: the pairs below read it at random rows
    if mean:  # column slices are strided: a loop of loads only keeps many cache misses in flight
        xs = np.empty((width, k), dest.dtype)
        ys = np.empty((width, k), dest.dtype)
        n_slots = slot_pos.shape[0]
        for s in range(n_slots):
            if s + AHEAD < n_slots:
                prefetch(slices, a, s + AHEAD, 0, 2)  # (a slice may straddle two lines)
                prefetch(slices, b, s + AHEAD, 0, 2)
            p = slot_pos[s]
            if p >= 0:
                for c in range(k):
                    xs[p, c] = slices[a, s, c]
                    ys[p, c] = slices[b, s, c]
    largest = 0.0
    for s in range(slot_pos.shape[0]):  # slots in memory order
        p = slot_pos[s]
        if p < 0:
            continue
        first_sq = 0.0  # |first half of u_p|^2 and |second half|^2
        second_sq = 0.0
        if mean:  # (two loops: no branch inside)
            for c in range(k):
                x = xs[p, c]
                y = ys[p, c]
                spread = x - y
                first = y + wb * spread
                second = spread_scale * spread
                u[p, c] = first
                u[p, k + c] = second
                first_sq += first * first
                second_sq += second * second
                slices[a, s, c] = x + wb * (y - x)  # the merge (the unlinked weights' expression)
        else:
            for c in range(k):
                x = slices[a, s, c]
                y = slices[b, s, c]
                first = (x + y) * inv_sqrt2
                second = (x - y) * inv_sqrt2
                u[p, c] = first
                u[p, k + c] = second
                first_sq += first * first
                second_sq += second * second
                slices[a, s, c] = x + y  # the merge
        diag[p] += first_sign * first_sq - second_sq
        # D_pq changes by sum_c sign_c (u_pc - u_qc)^2: the sign -1 columns can lower it by at most
        # 2 (|u_p-|^2 + |u_q-|^2), the sign +1 columns raise it by at most 2 (|u_p+|^2 + |u_q+|^2)
        moved[p] += (first_sq + second_sq) if mean else second_sq
        rise = 0.0 if mean else first_sq
        if rise > largest:
            largest = rise
    for c in range(k):
        for p in range(width):
            dest[first_row + c, p] = u[p, c]
        for p in range(width):
            dest[second_row + c, p] = u[p, k + c]
    for t in range(n_pairs):  # D_ij changes by (u_i - u_j) diag(sign) (u_i - u_j)^T
        i = pairs.i[t]
        j = pairs.j[t]
        first_change = 0.0
        second_change = 0.0
        for c in range(k):
            delta = u[i, c] - u[j, c]
            first_change += delta * delta
            delta = u[i, c + k] - u[j, c + k]
            second_change += delta * delta
        pairs.d[t] += first_sign * first_change - second_change
    return largest


@_jit
def merge_positions(parts, summed_part, basis, layout, stats, merge, width, pairs, n_pairs, threshold):
    """Position ``a`` becomes the merge of positions ``a`` and ``b`` of a ``width``-channel Gram
    matrix: part ``summed_part`` summed (the official rule's rows part), the other ``wa·a + wb·b``,
    pending products likewise; then the last position moves into ``b``, and the candidates are updated
    (:func:`replace_candidates`, which needs room for ``width`` more pairs). Returns the new number of
    candidate pairs and the merged channel's farthest distance."""
    a, b, wa, wb = merge
    diag, moved = stats
    s = summed_part
    w = 1 - summed_part
    summed = np.empty(width, parts.dtype)
    weighted = np.empty(width, parts.dtype)
    for p in range(width):
        if p + AHEAD < width:  # (rows p < a of column a hold row a's entries: the upper triangle)
            for q in range(2):
                prefetch(parts, q, p + AHEAD, a, 1)
                prefetch(parts, q, p + AHEAD, b, 1)
        summed[p] = upper(parts, s, a, p) + upper(parts, s, b, p)
        weighted[p] = wa * upper(parts, w, a, p) + wb * upper(parts, w, b, p)
    summed[a] += summed[b]
    weighted[a] = wa * weighted[a] + wb * weighted[b]
    for p in range(width):
        parts[s, a, p] = summed[p]
        parts[s, p, a] = summed[p]
        parts[w, a, p] = weighted[p]
        parts[w, p, a] = weighted[p]
    pending = 0.0
    for which in range(3):
        lo, hi, sign, in_summed = region(which, layout)
        for c in range(lo, hi):
            if in_summed:
                basis[c, a] += basis[c, b]
            else:
                basis[c, a] = basis[c, a] * wa + wb * basis[c, b]
            pending += sign * (basis[c, a] * basis[c, a])
    diag[a] = summed[a] + weighted[a] + pending
    moved[a] = 0.0
    last = width - 1
    if b != last:
        for q in range(2):
            for p in range(last):
                if p + AHEAD < last:
                    prefetch(parts, q, p + AHEAD, last, 1)
                    prefetch(parts, q, p + AHEAD, b, 1)
                if p != b:
                    value = upper(parts, q, last, p)
                    parts[q, b, p] = value
                    parts[q, p, b] = value
            parts[q, b, b] = parts[q, last, last]
        for which in range(3):
            lo, hi, sign, in_summed = region(which, layout)
            for c in range(lo, hi):
                basis[c, b] = basis[c, last]
        diag[b] = diag[last]
        moved[b] = moved[last]
    if last < 2:
        return 0, 0.0
    m = b if a == last else a  # the merged channel's position
    gram_row = np.empty(last, parts.dtype)  # row m of G: the merged parts' row (old indices) ...
    for p in range(last):
        old = a if p == m else (last if p == b else p)
        gram_row[p] = summed[old] + weighted[old]
    for which in range(3):  # ... plus the pending products
        lo, hi, sign, in_summed = region(which, layout)
        for c in range(lo, hi):
            coef = basis[c, m] * sign
            for p in range(last):
                gram_row[p] += coef * basis[c, p]
    return replace_candidates(pairs, n_pairs, a, b, m, gram_row, diag, threshold)


@_jit
def upper_distances(parts, width, diag, out):
    """Eq. 6 distances ``G_ii + (G_jj - 2 G_ij)`` of all pairs ``i < j`` in row-major order into
    ``out`` (``diag`` is first set from the parts). Returns the farthest pair and its distance."""
    for p in range(width):
        diag[p] = parts[0, p, p] + parts[1, p, p]
    t = 0
    far_i, far_j, far_d = 0, 1, -math.inf
    for i in range(width):
        for j in range(i + 1, width):
            d = (-2.0 * (parts[0, i, j] + parts[1, i, j]) + diag[j]) + diag[i]
            out[t] = d
            if d > far_d:
                far_i, far_j, far_d = i, j, d
            t += 1
    return far_i, far_j, far_d


@_jit
def pairs_below(distances, width, threshold, pairs):
    """The pairs ``i < j`` (row-major ``distances`` as from :func:`upper_distances`) closer than
    ``threshold``, into the pair arrays. Returns their number."""
    t = 0
    kept = 0
    for i in range(width):
        for j in range(i + 1, width):
            if distances[t] < threshold:
                pairs.i[kept] = i
                pairs.j[kept] = j
                pairs.d[kept] = distances[t]
                kept += 1
            t += 1
    return kept


@_jit
def replace_candidates(pairs, n_pairs, a, b, m, gram_row, diag, threshold):
    """After a merge of positions ``a`` and ``b`` (the last position, ``len(gram_row)``, moved into
    ``b``; the merged channel sits at ``m``): drop the pairs of ``a`` and ``b``, rename the moved
    position, and add the merged channel's pairs closer than ``threshold`` and its farthest pair.
    ``gram_row``: row ``m`` of ``G`` (overwritten with ``m``'s Eq. 6 distances).
    Returns the new number of pairs and the farthest distance."""
    width = gram_row.shape[0]
    last = width
    kept = 0
    for t in range(n_pairs):
        i = pairs.i[t]
        j = pairs.j[t]
        if i == a or j == a or i == b or j == b:
            continue
        if i == last:
            i = b
        if j == last:
            j = b
        pairs.i[kept] = i
        pairs.j[kept] = j
        pairs.d[kept] = pairs.d[t]
        kept += 1
    far = 0
    for p in range(width):
        gram_row[p] = diag[m] + (diag[p] - 2.0 * gram_row[p])
    gram_row[m] = 0.0
    for p in range(width):
        if gram_row[p] > gram_row[far]:
            far = p
    for p in range(width):
        if p != m and gram_row[p] < threshold:
            pairs.i[kept] = m
            pairs.j[kept] = p
            pairs.d[kept] = gram_row[p]
            kept += 1
    if far != m:
        pairs.i[kept] = m
        pairs.j[kept] = far
        pairs.d[kept] = gram_row[far]
        kept += 1
    return kept, gram_row[far]


@_jit
def _snapped(d, snapping, tie, g_ii, g_jj):
    """``d``, or exactly 0 when snapping and ``d`` is at the Gram identity's rounding level."""
    if snapping and d <= tie * (g_ii + g_jj):
        return 0.0
    return d


#: :func:`closest_pairs` verdicts
MERGE, STOP, RESCAN = 0, 1, 2


@_jit
def closest_pairs(pairs, n_pairs, stats, width, threshold, max_bound, beta, tie, relative_tie, hits):
    """Eq. 9 on a group's candidates: ``(MERGE, d_min, number of hits)`` with the indices of the
    candidates tied at the smallest distance in ``hits``; ``(STOP, a lower bound on the smallest
    distance, 0)``; or ``(RESCAN, 0, 0)`` when the bounds cannot settle it.

    Distances at the Gram identity's rounding level (``d <= tie (G_ii + G_jj)``, once any candidate
    is within ``2 tie max G_ii``) count as exact 0; otherwise distances within ``relative_tie`` of
    the smallest are tied. Every non-candidate pair is at least ``threshold - 2 (the two largest
    moved)`` apart, and none farther than ``max_bound``."""
    diag, moved = stats
    pair_i, pair_j, pair_d = pairs
    diag_max = -math.inf
    first = 0.0
    second = 0.0
    for p in range(width):
        if diag[p] > diag_max:
            diag_max = diag[p]
        x = moved[p]
        if x > first:
            second = first
            first = x
        elif x > second:
            second = x
    tie_level = tie * 2.0 * diag_max
    d_min = math.inf
    for t in range(n_pairs):
        if pair_d[t] < d_min:
            d_min = pair_d[t]
    snapped = d_min <= tie_level
    d_min = math.inf
    d_max = -math.inf
    for t in range(n_pairs):
        d = _snapped(pair_d[t], snapped, tie, diag[pair_i[t]], diag[pair_j[t]])
        if d < d_min:
            d_min = d
        if d > d_max:
            d_max = d
    limit = d_min if snapped else d_min * (1.0 + relative_tie)
    lower = math.inf if threshold == math.inf else threshold - 2.0 * (first + second)
    if min(d_min, lower) > beta * max_bound:  # Eq. 9 stops, whichever pair is closest
        return STOP, min(d_min, lower), 0
    if max(limit, tie_level) + tie_level < lower:  # no other pair is as close
        if d_min <= beta * max(d_max, 0.0):  # (d_max: a real pair's distance; D_ii = 0 counts)
            found = 0
            for t in range(n_pairs):
                if _snapped(pair_d[t], snapped, tie, diag[pair_i[t]], diag[pair_j[t]]) <= limit:
                    hits[found] = t
                    found += 1
            return MERGE, d_min, found
        if threshold == math.inf:  # all pairs are candidates: d_max is exact
            return STOP, d_min, 0
    return RESCAN, 0.0, 0


@_jit
def gather_channels(source, rows, cols, out):
    """``out[i, j] = source[rows[i], cols[j]]`` over ``(rows, cols, block)`` arrays, cast to ``out``'s
    dtype: one tensor's kept channels, in order, along both of its grouped axes at once."""
    for i in range(rows.shape[0]):
        for j in range(cols.shape[0]):
            for c in range(source.shape[2]):
                out[i, j, c] = source[rows[i], cols[j], c]


@_jit
def first_ranked_pair(pairs, rank):
    """The row of ``pairs`` (``(k, 2)`` indices) whose ``(min, max)`` of ``rank`` is lexicographically smallest."""
    best = 0
    best_lo = best_hi = np.iinfo(np.int64).max
    for t in range(pairs.shape[0]):
        x = rank[pairs[t, 0]]
        y = rank[pairs[t, 1]]
        lo = min(x, y)
        hi = max(x, y)
        if lo < best_lo or (lo == best_lo and hi < best_hi):
            best, best_lo, best_hi = t, lo, hi
    return best
