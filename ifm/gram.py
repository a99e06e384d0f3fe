"""Eq. 6 distances of one channel group, kept exact between merges without touching weights.

Eq. 6 for channels ``i, j`` is ``G_ii + G_jj - 2 G_ij``, with ``G`` the Gram matrix of the channel
vectors (the producers' rows and the consumers' columns). :class:`GroupGram` keeps ``G`` over the live
channels (*positions* ``0..width-1``; when a channel dies the last position moves into its place) as

* its rows part and its columns part (merging two channels sums their rows and averages their
  columns, so each part combines its two rows and columns: O(n));
* plus *pending* low-rank products ``U diag(±1) U^T``: a merge in a group that shares a tensor
  changes one part by a symmetric rank-2k product. Products wait, and are added to the parts in one
  large matrix product when ``pending_rank`` columns have gathered (several times faster per product).

The closest pair is found among *candidate pairs* whose distances are kept exact: each product
changes a candidate's distance by ``(u_i - u_j) diag(±1) (u_i - u_j)^T`` (O(k) per pair) and an own
merge recomputes the merged channel's row. Every other pair is provably farther: a full pass makes
the closest pairs candidates (``threshold``: every other pair is at least that far apart), and each
product moves ``D_ij`` by at most ``2 |u_i|^2 + 2 |u_j|^2`` (accumulated per channel in ``moved``;
a merged channel starts again from 0). While the closest candidate stays below that bound no full
pass is needed; otherwise (and at the first look) one is made. Eq. 9 declines need only bounds.

The bookkeeping runs in NumPy on the CPU: a merge needs a few dozen small array operations, which
cost a microsecond there and 5-15 µs in eager PyTorch. Large products are added through PyTorch, on
the same memory.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

Tensor = torch.Tensor

#: Pending low-rank products gather up to this rank per part before they are added to it.
PENDING_RANK = 256
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
    ties: list[tuple[int, int]]  # position pairs at distance d_min (row-major ties), empty if declined


class GroupGram:
    """The Gram matrix of one group (parts plus pending products) and exact Eq. 6 candidate distances.

    Args:
        parts: ``(2, n, n)`` rows part and columns part of ``G`` (float64 or float32, kept and updated).
        tie: a distance below ``tie · (G_ii + G_jj)`` is an exact duplicate (0).
        relative_tie: distances within this relative amount of the smallest are tied.
    """

    #: columns of pending products per part before they are added to it
    pending_rank = PENDING_RANK
    #: a full pass keeps about this many of the closest pairs per channel as candidates
    candidates_per_channel = CANDIDATES_PER_CHANNEL
    #: test seam: a full pass at every look (candidates and bounds are then never relied on)
    always_scan = False

    def __init__(self, parts: np.ndarray, tie: float, relative_tie: float):
        n = parts.shape[1]
        self.parts, self.width, self.cap = parts, n, self.pending_rank
        self.tie, self.relative_tie = tie, relative_tie
        # Pending products U diag(sign) U^T: columns p·cap .. p·cap + rank[p] of ``basis`` for part p.
        self.basis = np.zeros((n, 2 * self.cap), parts.dtype)
        self.sign = np.zeros(2 * self.cap, parts.dtype)
        self.rank = [0, 0]
        self.diag = parts[0].diagonal() + parts[1].diagonal()  # diag(G), pending products included
        self._parts_t = torch.from_numpy(parts)
        self.pair_i = self.pair_j = np.zeros(0, np.int64)  # candidate pairs (positions) ...
        self.pair_d = np.zeros(0, parts.dtype)  # ... and their exact distances
        self.threshold = -math.inf  # at the last full pass, every other pair was this far apart ...
        self.moved = np.zeros(n, parts.dtype)  # ... and since, D_ij moved by <= 2 (moved_i + moved_j)
        self.max_bound = math.inf  # no distance exceeds this
        self.scans = 0

    # --------------------------------------------------------------------------- products
    def add_product(self, u: np.ndarray, signs: np.ndarray, part: int) -> None:
        """``part`` (0: rows, 1: columns) changes by ``u diag(signs) u^T`` (``u``: ``width x k``,
        ``signs``: ±1)."""
        w, k = u.shape
        if self.rank[part] + k > self.cap:
            self.flush()
        squares = u * u
        norms = squares.sum(1)
        self.diag[:w] += squares @ signs
        if len(self.pair_i):  # D_ij changes by (u_i - u_j) diag(signs) (u_i - u_j)^T
            delta = u.take(self.pair_i, 0)
            delta -= u.take(self.pair_j, 0)
            self.pair_d += np.square(delta, out=delta) @ signs
        self.moved[:w] += norms  # |dD_ij| <= |u_i - u_j|^2 <= 2 |u_i|^2 + 2 |u_j|^2
        self.max_bound += 4.0 * float(norms.max())
        if k > self.cap:  # too wide to wait: add it now
            self._add_to_part(part, u, signs)
            return
        start = part * self.cap + self.rank[part]
        self.basis[:w, start:start + k] = u
        self.sign[start:start + k] = signs
        self.rank[part] += k

    def _pending(self) -> list[slice]:
        return [slice(p * self.cap, p * self.cap + r) for p, r in enumerate(self.rank) if r]

    def _add_to_part(self, part: int, u: np.ndarray, signs: np.ndarray) -> None:
        """``parts[part] += u diag(signs) u^T`` in one matrix product."""
        w = self.width
        self._parts_t[part, :w, :w].addmm_(torch.from_numpy(u * signs), torch.from_numpy(np.ascontiguousarray(u)).T)

    def flush(self) -> None:
        """Add the pending products to the parts (``G`` itself does not change)."""
        for cols in self._pending():
            u = self.basis[: self.width, cols]
            self._add_to_part(cols.start // self.cap, u, self.sign[cols])
            u[...] = 0.0
        self.rank = [0, 0]

    # --------------------------------------------------------------------------- distances
    def distance_matrix(self) -> np.ndarray:
        """Eq. 6 distances of all live positions, from the parts (pending products added first):
        ``G_ii + (G_jj - 2 G_ij)``; the diagonal is exactly 0."""
        self.flush()
        w = self.width
        d = np.add(self.parts[0, :w, :w], self.parts[1, :w, :w])
        diag = d.diagonal().copy()
        self.diag[:w] = diag
        d *= -2.0
        d += diag
        d += diag[:, None]
        return d

    def snap(self, d: np.ndarray, i, j) -> np.ndarray:
        """Distances below the Gram identity's rounding level (exact duplicates) become 0."""
        return np.where(d <= self.tie * (self.diag[i] + self.diag[j]), 0.0, d)

    def scan(self) -> None:
        """A full pass: the closest pairs become the candidates (with the farthest pair), and
        ``threshold`` the distance below which all pairs are candidates."""
        w = self.width
        self.scans += 1
        d = self.distance_matrix()
        flat = d.ravel()
        np.fill_diagonal(d, -math.inf)
        far = int(flat.argmax())
        np.fill_diagonal(d, math.inf)
        keep = 2 * self.candidates_per_channel * w  # each pair appears twice
        if keep < w * (w - 1) and w * w > 16 * SAMPLE:  # the threshold from a sample: much cheaper
            sample = np.partition(flat[:: w * w // SAMPLE], SAMPLE * keep // (w * w))
            self.threshold = float(sample[SAMPLE * keep // (w * w)])
            nearest = np.flatnonzero(flat < self.threshold)
        elif keep < w * (w - 1):
            nearest = np.argpartition(flat, keep)
            self.threshold = float(flat[nearest[keep]])
            nearest = nearest[:keep]
            nearest = nearest[flat[nearest] < self.threshold]
        else:
            self.threshold = math.inf
            nearest = np.flatnonzero(np.isfinite(flat))
        i, j = np.divmod(nearest, w)
        upper = i < j  # (both orientations are there, up to rounding)
        far_i, far_j = sorted(divmod(far, w))
        self.pair_i, self.pair_j = np.append(i[upper], far_i), np.append(j[upper], far_j)
        self.pair_d = flat[self.pair_i * w + self.pair_j]
        self.moved[:] = 0.0
        self.max_bound = max(float(flat[far]), 0.0)

    def _all_pairs(self) -> None:
        w = self.width
        d = self.distance_matrix()
        self.pair_i, self.pair_j = np.triu_indices(w, 1)
        self.pair_d = d[self.pair_i, self.pair_j]
        self.threshold = math.inf
        self.max_bound = max(float(self.pair_d.max()), 0.0)

    def lower_bound(self) -> float:
        """Every pair that is not a candidate is at least this far apart."""
        if self.threshold == math.inf:
            return math.inf
        moved = self.moved[: self.width]
        top2 = np.partition(moved, len(moved) - 2)[-2:] if len(moved) > 2 else moved
        return self.threshold - 2.0 * float(top2.sum())

    def _merged_distances(self, m: int) -> np.ndarray:
        """Eq. 6 distances of position ``m`` to every live position (``m`` itself: 0)."""
        w = self.width
        g = self.parts[0, m, :w] + self.parts[1, m, :w]
        for cols in self._pending():
            g += self.basis[:w, cols] @ (self.basis[m, cols] * self.sign[cols])
        row = self.diag[m] + (self.diag[:w] - 2.0 * g)
        row[m] = 0.0
        return row

    def closest(self, beta: float) -> Closest | None:
        """The closest pair(s), or enough to know that Eq. 9 (``d_min > β·d_max``) stops the group."""
        if self.width < 2:
            return None
        fresh = self.always_scan or not len(self.pair_i)
        if fresh:
            self.scan()
        while True:
            i, j, d = self.pair_i, self.pair_j, self.pair_d
            tie_level = self.tie * 2.0 * float(self.diag[: self.width].max())
            d_min = float(d.min())
            snapped = d_min <= tie_level
            if snapped:  # rounding-level distances are exact ties at 0
                d = self.snap(d, i, j)
                d_min = float(d.min())
            limit = d_min if snapped else d_min * (1.0 + self.relative_tie)
            lower = self.lower_bound()
            if min(d_min, lower) > beta * self.max_bound:  # Eq. 9 stops, whichever pair is closest
                return Closest(min(d_min, lower), [])
            if max(limit, tie_level) + tie_level < lower:  # no other pair is as close
                known_max = max(float(d.max()), 0.0)  # a real pair's distance (D_ii = 0 counts)
                if d_min <= beta * known_max:
                    hits = np.flatnonzero(d <= limit)
                    return Closest(d_min, list(zip(i[hits].tolist(), j[hits].tolist())))
                if self.threshold == math.inf:  # all pairs are candidates: known_max is exact
                    return Closest(d_min, [])
            if fresh:  # even a full pass's closest pairs cannot settle it (massive ties): all pairs
                self._all_pairs()
            else:
                self.scan()
                fresh = True

    # --------------------------------------------------------------------------- merging
    def merge(self, a: int, b: int, wa: float, wb: float) -> None:
        """Position ``a`` becomes the merge of ``a`` and ``b`` (rows part summed, columns part
        ``wa·a + wb·b``); position ``b`` is removed (the last position moves into it)."""
        w, parts, basis = self.width, self.parts, self.basis
        rows = parts[0, a, :w] + parts[0, b, :w]
        cols = wa * parts[1, a, :w] + wb * parts[1, b, :w]
        rows[a] += rows[b]
        cols[a] = wa * cols[a] + wb * cols[b]
        for part, new in ((0, rows), (1, cols)):
            parts[part, a, :w] = new
            parts[part, :w, a] = new
        r0, r1 = self.rank
        basis[a, :r0] += basis[b, :r0]
        mean = slice(self.cap, self.cap + r1)
        basis[a, mean] *= wa
        basis[a, mean] += wb * basis[b, mean]
        self.diag[a] = rows[a] + cols[a] + (basis[a] * basis[a]) @ self.sign
        self.moved[a] = 0.0  # the merged channel's distances are computed afresh below
        last = w - 1
        if b != last:
            parts[:, b, :w] = parts[:, last, :w]
            parts[:, :w, b] = parts[:, :w, last]
            basis[b] = basis[last]
            self.diag[b] = self.diag[last]
            self.moved[b] = self.moved[last]
        basis[last] = 0.0
        self.width = last
        self._update_candidates(a, b, last)

    def _update_candidates(self, a: int, b: int, last: int) -> None:
        """Drop the pairs of ``a`` and ``b``, rename ``last`` to ``b``, and add the merged channel's
        pairs closer than ``threshold`` (and its farthest pair)."""
        i, j = self.pair_i, self.pair_j
        keep = (i != a) & (j != a) & (i != b) & (j != b)
        i, j, d = i[keep], j[keep], self.pair_d[keep]
        if b != last:
            i[i == last] = b
            j[j == last] = b
        m = b if a == last else a
        if self.width < 2:
            self.pair_i, self.pair_j, self.pair_d = i, j, d
            return
        row = self._merged_distances(m)
        far = int(row.argmax())
        self.max_bound = max(self.max_bound, float(row[far]))
        row[m] = math.inf
        new = np.flatnonzero(row < self.threshold)
        if far != m:
            new = np.append(new, far)
        self.pair_i = np.concatenate([i, np.full(len(new), m)])
        self.pair_j = np.concatenate([j, new])
        self.pair_d = np.concatenate([d, row.take(new)])
