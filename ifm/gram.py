"""Eq. 6 distances of one channel group, kept exact between merges without touching weights.

Eq. 6 for channels ``i, j`` is ``G_ii + G_jj - 2 G_ij``, with ``G`` the Gram matrix of the channel
vectors (the producers' rows and the consumers' columns). :class:`GroupGram` keeps ``G`` over the live
channels (*positions* ``0..width-1``; when a channel dies the last position moves into its place) as

* its rows part and its columns part (merging two channels sums their rows and averages their
  columns, so each part combines its two rows and columns: O(n));
* plus *pending* low-rank products ``U diag(±1) U^T``: a merge in a group that shares a tensor
  changes one part by a symmetric rank-2k product. Products wait, and are added to the parts by
  symmetric rank-k updates (BLAS ``syrk``, :mod:`ifm.blas`) when ``pending_rank`` columns have
  gathered (several times faster per product). ``syrk`` updates one triangle: only the parts' upper
  triangles are kept.

The closest pair is found among *candidate pairs* whose distances are kept exact: each product
changes a candidate's distance by ``(u_i - u_j) diag(±1) (u_i - u_j)^T`` (O(k) per pair) and an own
merge recomputes the merged channel's row. Every other pair is provably farther: a full pass makes
the closest pairs candidates (``threshold``: every other pair is at least that far apart), and a
product lowers ``D_ij`` by at most ``2 |u-_i|^2 + 2 |u-_j|^2``, with ``u-`` its sign -1 columns
(accumulated per channel in ``moved``; a merged channel starts again from 0). For a neighbour's
summed rows these are ``(A - B) / sqrt 2``: small, since the neighbour merged two close channels.
While the closest candidate stays below that bound no full pass is needed; otherwise (and at the
first look) one is made. Likewise ``max_bound`` grows only by the sign +1 columns. Eq. 9 declines
need only bounds.

The bookkeeping runs on the CPU, each step of a merge in one compiled loop (:mod:`ifm.kernels`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from . import kernels
from .blas import syrk_upper
from .kernels import CandidatePairs, MergeWeights, PendingLayout, PositionStats

Tensor = torch.Tensor

#: Pending low-rank products gather up to this rank per part before they are added to it.
PENDING_RANK = 128
#: A full pass keeps about this many candidate pairs per channel (the closest pairs of the group).
CANDIDATES_PER_CHANNEL = 2
#: Groups of more than 16x this many distances pick the candidates' threshold from this many of them.
SAMPLE = 65536


def gram_matrix(m: Tensor, out: Tensor | None = None) -> Tensor:
    """``m @ m.T``, computed by halves so that each off-diagonal block is multiplied once (about a
    third faster for wide groups)."""
    n = m.shape[0]
    if out is None:
        out = torch.empty(n, n, dtype=m.dtype, device=m.device)
    if n < 384:
        return out.copy_(m @ m.T)
    h = n // 2
    top, bottom = m[:h], m[h:]
    gram_matrix(top, out[:h, :h])
    gram_matrix(bottom, out[h:, h:])
    off = top @ bottom.T
    out[:h, h:] = off
    out[h:, :h] = off.T
    return out


class Closest(NamedTuple):
    """Eq. 9's verdict on a group: the tied closest position pairs, or none when it stops."""

    d_min: float  # exact when merging; when stopping, a lower bound on the smallest distance
    ties: np.ndarray  # (k, 2) position pairs at distance d_min (row-major ties), none if declined


class GroupGram:
    """The Gram matrix of one group (parts plus pending products) and exact Eq. 6 candidate distances.

    Args:
        parts: ``(2, n, n)`` rows part and columns part of ``G`` (float64 or float32, kept and updated;
            only their upper triangles are read).
        tie: a distance below ``tie · (G_ii + G_jj)`` is an exact duplicate (0).
        relative_tie: distances within this relative amount of the smallest are tied.
    """

    #: columns of pending products per part before they are added to it
    pending_rank = PENDING_RANK
    #: a full pass keeps about this many of the closest pairs per channel as candidates
    candidates_per_channel = CANDIDATES_PER_CHANNEL
    #: test seam: a full pass at every look (candidates and bounds are then never relied on)
    always_scan = False

    def __init__(self, parts: np.ndarray, tie: float, relative_tie: float, summed_part: int = 0):
        n = parts.shape[1]
        self.parts, self.width = parts, n
        self.summed_part = summed_part  # the part an own merge sums: 0 (rows, official rule) or 1 (mean rule)
        self.weighted_half = max(self.pending_rank // 2, 1)  # rows per sign of the count-weighted part's pending region
        self.capacity = 2 * self.weighted_half
        self.tie, self.relative_tie = tie, relative_tie
        # Pending products U diag(sign) U^T, stored as rows of U^T in three regions (``layout``)
        self.basis = np.zeros((2 * self.capacity, n), parts.dtype)
        self.summed_used = self.plus_used = self.minus_used = 0
        # diag(G) (pending products included); and since the last full pass, D_ij fell by <= 2 (moved_i + moved_j)
        self.stats = PositionStats(parts[0].diagonal() + parts[1].diagonal(), np.zeros(n, parts.dtype))
        self.n_pairs = 0  # the first n_pairs of the candidates are live
        self.pairs = CandidatePairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, parts.dtype))
        self.threshold = -math.inf  # at the last full pass, every other pair was this far apart
        self.max_bound = math.inf  # no distance exceeds this
        self.scans = 0

    @property
    def diag(self) -> np.ndarray:
        return self.stats.diag

    @property
    def moved(self) -> np.ndarray:
        return self.stats.moved

    @property
    def layout(self) -> PendingLayout:
        return PendingLayout(self.summed_used, self.plus_used, self.minus_used, self.capacity, self.weighted_half)

    # --------------------------------------------------------------------------- products
    def merge_linked(self, slices: np.ndarray, a: int, b: int, wa: float, wb: float, mean: bool, into_summed: bool,
                     slot_pos: np.ndarray) -> None:
        """A neighbour merges its channels ``a`` and ``b`` (weights ``wa``, ``wb``) in a tensor whose
        slices (one row per slot of this group) are ``slices[a]`` and ``slices[b]``: summed (``mean``
        false) or count-weighted (``mean`` true), in place at the live slots (``slot_pos``: each slot's
        position, -1 if dead). The tensor's products lie in the part this group's own merges sum
        (``into_summed``: a neighbour can only average there) or in the count-weighted one."""
        w, k = self.width, slices.shape[2]
        merge = MergeWeights(a, b, wa, wb)
        if into_summed and not mean:
            raise ValueError("a neighbour's summed channels cannot change the part this group's merges sum")
        # The product waits in region 0 (the summed part: 2k rows of sign -1), region 2 alone (the weighted part
        # averaged: 2k rows of sign -1) or regions 1 and 2 (the weighted part summed: k rows of each sign).
        if into_summed:
            need, used, limit = 2 * k, self.summed_used, self.capacity
        else:
            need, used, limit = (2 * k, self.minus_used, self.weighted_half) if mean else \
                (k, max(self.plus_used, self.minus_used), self.weighted_half)
        if need > limit:  # too wide to wait: add it now
            u = np.empty((2 * k, w), self.parts.dtype)
            self._merge_linked(u, 0, k, slices, merge, mean, slot_pos)
            part = self.parts[self.summed_part if into_summed else 1 - self.summed_part, :w, :w]
            syrk_upper(part, u[:k], -1.0 if mean else 1.0)
            syrk_upper(part, u[k:], -1.0)
            return
        if used + need > limit:
            self.flush()
        minus = self.capacity + self.weighted_half + self.minus_used
        if into_summed:
            first, second = self.summed_used, self.summed_used + k
            self.summed_used += 2 * k
        elif mean:
            first, second = minus, minus + k
            self.minus_used += 2 * k
        else:
            first, second = self.capacity + self.plus_used, minus
            self.plus_used += k
            self.minus_used += k
        self._merge_linked(self.basis, first, second, slices, merge, mean, slot_pos)

    def _merge_linked(self, dest, first_row, second_row, slices, merge: MergeWeights, mean, slot_pos) -> None:
        largest = kernels.merge_linked(slices, merge, mean, slot_pos, self.width, dest, first_row, second_row,
                                       self.stats, self.pairs, self.n_pairs)
        self.max_bound += 4.0 * largest  # dD_ij <= |u+_i - u+_j|^2 <= 2 |u+_i|^2 + 2 |u+_j|^2

    def flush(self) -> None:
        """Add the pending products to the parts (``G`` itself does not change)."""
        w = self.width
        for which in range(3):
            lo, hi, sign, in_summed = kernels.region(which, self.layout)
            if hi > lo:
                part = self.summed_part if in_summed else 1 - self.summed_part
                syrk_upper(self.parts[part, :w, :w], self.basis[lo:hi, :w], sign)
        self.summed_used = self.plus_used = self.minus_used = 0

    # --------------------------------------------------------------------------- distances
    def _upper_distances(self) -> tuple[np.ndarray, tuple[int, int, float]]:
        """Eq. 6 distances of all pairs ``i < j`` (row-major), from the parts (pending products added
        first), and the farthest pair."""
        self.flush()
        w = self.width
        out = np.empty(w * (w - 1) // 2, self.parts.dtype)
        far = kernels.upper_distances(self.parts, w, self.diag, out)
        return out, far

    def distance_matrix(self) -> np.ndarray:
        """Eq. 6 distances of all live positions (symmetric, zero diagonal)."""
        out, _ = self._upper_distances()
        w = self.width
        d = np.zeros((w, w), self.parts.dtype)
        i, j = np.triu_indices(w, 1)
        d[i, j] = d[j, i] = out
        return d

    def snap(self, d: np.ndarray, i, j) -> np.ndarray:
        """Distances below the Gram identity's rounding level (exact duplicates) become 0."""
        return np.where(d <= self.tie * (self.diag[i] + self.diag[j]), 0.0, d)

    def _new_candidates(self, n: int) -> None:
        """Empty candidate arrays with room for ``n`` pairs and those that merges add."""
        room = n + 2 * self.width + 8
        self.pairs = CandidatePairs(np.empty(room, np.int64), np.empty(room, np.int64),
                                    np.empty(room, self.parts.dtype))

    def _grow_candidates(self) -> None:
        n, live = self.n_pairs, self.pairs
        self._new_candidates(n)
        for new, old in zip(self.pairs, live):
            new[:n] = old[:n]

    def scan(self, all_pairs: bool = False) -> None:
        """A full pass: the closest pairs (``all_pairs``: every pair) become the candidates, with the
        farthest pair, and ``threshold`` the distance below which all pairs are candidates."""
        w = self.width
        self.scans += 1
        out, (far_i, far_j, far_d) = self._upper_distances()
        keep = int(self.candidates_per_channel * w)
        if all_pairs or keep >= len(out):
            self.threshold = math.inf
        elif len(out) > 8 * SAMPLE:  # the threshold from a sample: much cheaper
            sample = np.partition(out[:: len(out) // SAMPLE], SAMPLE * keep // len(out))
            self.threshold = float(sample[SAMPLE * keep // len(out)])
        else:
            self.threshold = float(np.partition(out, keep)[keep])
        n = len(out) if self.threshold == math.inf else int(np.count_nonzero(out < self.threshold))
        self._new_candidates(n + 1)
        n = kernels.pairs_below(out, w, self.threshold, self.pairs)
        self.pairs.i[n], self.pairs.j[n], self.pairs.d[n] = far_i, far_j, far_d
        self.n_pairs = n + 1
        self.moved[:] = 0.0
        self.max_bound = max(far_d, 0.0)

    def closest(self, beta: float) -> Closest | None:
        """The closest pair(s), or enough to know that Eq. 9 (``d_min > β·d_max``) stops the group
        (:func:`ifm.kernels.closest_pairs`)."""
        if self.width < 2:
            return None
        fresh = self.always_scan or not self.n_pairs
        if fresh:
            self.scan()
        while True:
            hits = np.empty(self.n_pairs, np.int64)
            verdict, d_min, found = kernels.closest_pairs(
                self.pairs, self.n_pairs, self.stats, self.width, self.threshold, self.max_bound, beta, self.tie,
                self.relative_tie, hits)
            if verdict == kernels.MERGE:
                hits = hits[:found]
                return Closest(d_min, np.stack([self.pairs.i[hits], self.pairs.j[hits]], 1))
            if verdict == kernels.STOP:
                return Closest(d_min, np.zeros((0, 2), np.int64))
            # A full pass; if even its closest pairs cannot settle it (massive ties): all pairs.
            self.scan(all_pairs=fresh)
            fresh = True

    # --------------------------------------------------------------------------- merging
    def merge(self, a: int, b: int, wa: float, wb: float) -> None:
        """Position ``a`` becomes the merge of ``a`` and ``b`` (rows part summed, columns part
        ``wa·a + wb·b``); position ``b`` is removed (the last position moves into it). The candidates
        lose the pairs of ``a`` and ``b`` and gain the merged channel's pairs closer than
        ``threshold`` (and its farthest pair)."""
        if self.n_pairs + self.width > len(self.pairs.i):
            self._grow_candidates()
        self.n_pairs, farthest = kernels.merge_positions(
            self.parts, self.summed_part, self.basis, self.layout, self.stats, MergeWeights(a, b, wa, wb), self.width,
            self.pairs, self.n_pairs, self.threshold)
        self.width -= 1
        self.max_bound = max(self.max_bound, farthest)
