"""Eq. 6 distances of one channel group, kept up to date between merges without touching weights.

Eq. 6 for channels ``i, j`` is ``G_ii + G_jj - 2 G_ij``, with ``G`` the Gram matrix of the channel
vectors (the producers' rows and the consumers' columns). :class:`GroupGram` keeps ``G`` as its rows
part and its columns part (rows are summed and columns averaged when channels merge), over the live
channels (*positions* ``0..width-1``; when a channel dies the last position moves into its place):

* merging two channels of the group combines their rows of both parts: O(n);
* a merge in a group that shares a tensor changes one part by a low-rank product; products are
  queued and added in one matrix product when ``G`` is next read (a group that declines meanwhile
  gathers many of them into one efficient product);
* each position's smallest and largest distance survive a merge of the group's own channels (only the
  merged row and column change), so a group whose neighbours are idle pays O(n) per merge.

Every distance is computed as ``G_ii + (G_jj - 2 G_ij)`` with ``G_ij = rows_ij + columns_ij``, in the
full pass and in single rows and columns alike, so cached extremes are bit-identical to a fresh pass.
"""
from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

#: Neighbours' low-rank updates of a Gram matrix are queued up to this rank, then added in one product.
PENDING_RANK = 128


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


class PendingProducts:
    """Low-rank products ``sign · V U^T`` waiting to be added to an ``n x n`` matrix (rows: positions)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.products: list[tuple[Tensor, Tensor, float]] = []
        self.rank = 0

    def add(self, v: Tensor, u: Tensor, sign: float, target: Tensor, width: int) -> None:
        """Queue ``sign · v u^T`` (both ``width x r``, not aliasing anything that changes later) for
        ``target``; when the queue is full it is added to ``target`` first."""
        if self.rank + v.shape[1] > self.capacity:
            self.apply_to(target, width)
        self.products.append((v, u, sign))
        self.rank += v.shape[1]

    def apply_to(self, target: Tensor, width: int) -> None:
        """Add the queued products to ``target`` in one matrix product."""
        if not self.products:
            return
        if len(self.products) == 1:
            v, u, sign = self.products[0]
        else:
            v = torch.cat([v if s == 1.0 else v * s for v, _, s in self.products], dim=1)
            u, sign = torch.cat([u for _, u, _ in self.products], dim=1), 1.0
        target[:width, :width].addmm_(v, u.T, alpha=sign)
        self.products.clear()
        self.rank = 0


class GroupGram:
    """The Gram matrix of one group, as its rows and columns parts, and its Eq. 6 distances."""

    #: keep per-position extremes through own merges when no neighbour changed ``G`` (a test seam)
    track_extremes = True

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device):
        self.width = n
        self.dtype, self.device = dtype, device
        self.parts = torch.zeros(2, n, n, dtype=dtype, device=device)  # G = rows part + columns part
        self.rows_part, self.columns_part = self.parts
        self.pending = [PendingProducts(PENDING_RANK) for _ in range(2)]
        self.buffer = torch.empty(0, dtype=dtype, device=device)
        self.extremes: tuple[Tensor, Tensor] | None = None  # per position: min and max distance
        self.quiet = True  # no neighbour changed G since the last look
        self.keep_extremes = False
        self._coef: Tensor | None = None

    def add_product(self, v: Tensor, u: Tensor, sign: float, part: int) -> None:
        """A neighbour's merge changed ``part`` (0: rows, 1: columns) by ``sign · v u^T``: queued until
        the next look (or until the queue is full)."""
        self.pending[part].add(v, u, sign, self.rows_part if part == 0 else self.columns_part, self.width)
        self.extremes = None
        self.quiet = False

    def _apply_pending(self) -> None:
        self.pending[0].apply_to(self.rows_part, self.width)
        self.pending[1].apply_to(self.columns_part, self.width)

    # --------------------------------------------------------------------------- distances
    def _gram(self, rows: Tensor | slice, cols: slice) -> Tensor:
        """``G[rows, cols]`` (a copy)."""
        return torch.add(self.rows_part[rows, cols], self.columns_part[rows, cols])

    def diagonal(self) -> Tensor:
        """``diag(G)`` of the live positions (a copy)."""
        w = self.width
        return torch.add(self.rows_part.diagonal()[:w], self.columns_part.diagonal()[:w])

    def distance_rows(self, rows: Tensor | slice, diag: Tensor) -> Tensor:
        """Eq. 6 distances ``D[rows, :]`` (a diagonal entry is exactly 0)."""
        return torch.add(diag, self._gram(rows, slice(0, self.width)), alpha=-2.0).add_(diag[rows, None])

    def distance_columns(self, cols: slice, diag: Tensor) -> Tensor:
        """Eq. 6 distances ``D[:, cols]``, each entry computed as in its row."""
        return torch.add(diag[cols], self._gram(slice(0, self.width), cols), alpha=-2.0).add_(diag[:, None])

    def look(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every position's smallest off-diagonal distance, largest distance, and ``diag(G)``."""
        self._apply_pending()
        self.keep_extremes, self.quiet = self.quiet and self.track_extremes, True
        w = self.width
        if self.extremes is not None:
            return (*self.extremes, self.diagonal())
        if self.buffer.numel() < w * w:
            self.buffer = torch.empty(w * w, dtype=self.dtype, device=self.device)
        half = torch.add(self.rows_part[:w, :w], self.columns_part[:w, :w], out=self.buffer[: w * w].view(w, w))
        diag = half.diagonal().clone()
        torch.add(diag, half, alpha=-2.0, out=half)
        row_max = half.amax(dim=1).add_(diag)  # the diagonal's D_ii = 0 never exceeds a row's max
        half.diagonal().fill_(math.inf)
        self.extremes = (half.amin(dim=1).add_(diag), row_max)
        return (*self.extremes, diag)

    # --------------------------------------------------------------------------- merging
    def merge(self, a: int, b: int, wa: float, wb: float) -> None:
        """Position ``a`` becomes the merge of ``a`` and ``b`` (rows part summed, columns part
        ``wa·a + wb·b``); position ``b`` is removed."""
        self._apply_pending()
        w, parts = self.width, self.parts
        lo, hi = min(a, b), max(a, b)
        pick = slice(lo, hi + 1, hi - lo)
        extremes, self.extremes = self.extremes, None
        stale = None
        if self.keep_extremes and extremes is not None:
            diag = self.diagonal()
            stale = self.distance_columns(pick, diag)
        coef = self._coefficients(*((wa, wb) if a < b else (wb, wa)))  # (part, 1, 2)
        new = torch.bmm(coef, parts[:, pick, :w])  # (part, 1, w)
        diag_new = torch.bmm(new[:, :, pick], coef.transpose(1, 2))  # (part, 1, 1)
        parts[:, a:a + 1, :w] = new
        parts[:, :w, a:a + 1] = new.transpose(1, 2)
        parts[:, a:a + 1, a:a + 1] = diag_new
        self._remove(b)
        if stale is not None:
            self._update_extremes(extremes, stale, a, b, w - 1)

    def _coefficients(self, c_lo: float, c_hi: float) -> Tensor:
        """``[[[1, 1]], [[c_lo, c_hi]]]``: on the CPU written in place through a NumPy view (a new
        small tensor costs more than the rest of a merge's bookkeeping)."""
        if self.device.type != "cpu":
            return torch.tensor([[[1.0, 1.0]], [[c_lo, c_hi]]], dtype=self.dtype, device=self.device)
        if self._coef is None:
            self._coef = torch.ones(2, 1, 2, dtype=self.dtype)
        self._coef.numpy()[1, 0] = (c_lo, c_hi)
        return self._coef

    def _remove(self, pos: int) -> None:
        last = self.width - 1
        if pos != last:
            self.parts[:, pos, :last + 1] = self.parts[:, last, :last + 1]
            self.parts[:, :last + 1, pos] = self.parts[:, :last + 1, last]
        self.width -= 1

    def _update_extremes(self, extremes: tuple[Tensor, Tensor], stale: Tensor, a: int, b: int, last: int
                         ) -> None:
        """After merging ``a`` and ``b`` (``last`` moved into ``b``): rows whose extreme sat in a changed
        column, and the merged row, are recomputed; every other row only meets the merged column."""
        row_min, row_max = extremes
        touched = ((stale == row_min[:, None]) | (stale == row_max[:, None])).any(dim=1)
        if b != last:
            for values in (row_min, row_max, touched):
                values[b] = values[last]
        row_min, row_max, touched = row_min[:last], row_max[:last], touched[:last]
        merged = b if a == last else a
        diag = self.diagonal()
        fresh = self.distance_columns(slice(merged, merged + 1), diag)[:, 0]
        torch.minimum(row_min, fresh, out=row_min)
        torch.maximum(row_max, fresh, out=row_max)
        touched[merged] = True
        rows = touched.nonzero().flatten()
        dist = self.distance_rows(rows, diag)
        row_max[rows] = dist.amax(dim=1)
        dist[torch.arange(len(rows), device=self.device), rows] = math.inf
        row_min[rows] = dist.amin(dim=1)
        self.extremes = (row_min, row_max)
