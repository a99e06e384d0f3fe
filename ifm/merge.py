"""Iterative Feature Merging (Eq. 6-10) with incrementally updated distances.

The result is identical to the official algorithm (same merge sequence, widths and channel order),
but no distance matrix is ever recomputed from the weights after the first pass:

* every group keeps two Gram matrices, ``G_row`` (its producer rows) and ``G_col`` (its consumer
  columns), over fixed *slots* (original channel positions); Eq. 6 is ``G_ii + G_jj - 2 G_ij``
  of their sum;
* merging slots ``a`` and ``b`` sums their rows and takes the count-weighted mean of their
  columns, so the merged slot's Gram entries are the same combinations of old entries: O(n);
* tensors shared with another group change that group's Gram matrix by a low-rank update
  (the slices of ``a`` and ``b`` out, the merged slice in);
* a group whose Gram matrix did not change since it last declined declines again, unexamined;
* the weights are merged in place in their slots, and gathered once at the end in the official
  channel order (the merged channel goes last at each merge).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch

from .groups import ChannelGroup

Tensor = torch.Tensor
Order = Literal["official", "layerwise"]

#: A squared distance below this fraction of ``|v_i|^2 + |v_j|^2`` is an exact duplicate (0).
TIE_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
#: Two pairs whose distances differ by less than this relative amount are tied (row-major order wins).
RELATIVE_TIE = {torch.float64: 1e-12, torch.float32: 1e-6}


@dataclass(frozen=True)
class MergeStep:
    """One merge: outer iteration, group, the pair in the group's current (official) indexing
    (``i < j``), and its Eq. 6 distance."""

    iteration: int
    group: str
    i: int
    j: int
    distance: float


@dataclass
class MergeResult:
    """What IFM produced: the merged state dict and how it was obtained."""

    state_dict: dict[str, Tensor]
    widths: dict[str, int]
    original_widths: dict[str, int]
    clusters: dict[str, list[list[int]]]
    merge_log: list[MergeStep]
    iterations: int
    seconds: float
    beta: float
    max_ratio: float
    order: str

    @property
    def n_merges(self) -> int:
        return len(self.merge_log)

    @property
    def feature_complexity(self) -> dict[str, int]:
        """Final width of every group (the paper's layer-wise feature complexity)."""
        return dict(self.widths)


def check_hyperparameters(beta: float, max_ratio: float) -> None:
    """Raise ``ValueError`` for β outside (0, 1) or max_ratio outside (0, 1]."""
    if not (isinstance(beta, (int, float)) and 0.0 < beta < 1.0):
        raise ValueError(f"beta (--threshold) must lie in (0, 1), got {beta}; e.g. --threshold 0.1")
    if not (isinstance(max_ratio, (int, float)) and 0.0 < max_ratio <= 1.0):
        raise ValueError(f"max_ratio must lie in (0, 1], got {max_ratio}; e.g. --max_ratio 1.0")


def _rows(t: Tensor, n: int) -> Tensor:
    """View with the channel on dim 0: ``(n, rest)``."""
    return t.reshape(n, -1)


def _cols(t: Tensor, n: int) -> Tensor:
    """View with the channel on dim 1: ``(out, n, block)`` (a flattened linear input has block > 1)."""
    return t.reshape(t.shape[0], n, -1)


def _gram(m: Tensor) -> Tensor:
    return m @ m.T


class _GroupState:
    """Bookkeeping of one group.

    Weights keep their original channel *slots*; the Gram matrices are kept compact over the live
    channels (*positions* ``0..width-1``): when a channel dies, the last position moves into its place.
    """

    def __init__(self, index: int, group: ChannelGroup, dtype: torch.dtype, device: torch.device):
        n = group.width
        self.index, self.group, self.n0 = index, group, n
        self.counts = [1.0] * n  # per slot
        self.official: list[int] = list(range(n))  # live slots in the official channel order
        self.clusters: list[list[int]] = [[c] for c in range(n)]  # per slot
        self.pos2slot: list[int] = list(range(n))
        self.slot2pos: dict[int, int] = {s: s for s in range(n)}
        self.gram = torch.zeros(2, n, n, dtype=dtype, device=device)  # [rows part, columns part]
        self.pos_tensor = torch.arange(n, device=device)
        self.buffer = torch.empty(0, dtype=dtype, device=device)
        self.width = n
        self.n_merges = 0
        self.dirty = True
        # After a declined visit: its (d_min, d_max) and a bound on how far any distance has moved
        # since, through neighbours' low-rank updates (None: unknown, a full look is needed).
        self.declined_at: tuple[float, float] | None = None
        self.drift = 0.0

    def still_declines(self, beta: float) -> bool:
        """Whether Eq. 9 provably still says stop, without looking (distances moved <= drift)."""
        if self.declined_at is None:
            return False
        d_min, d_max = self.declined_at
        return d_min - self.drift > beta * (d_max + self.drift)

    def official_rank(self, slot: int) -> int:
        return self.official.index(slot)

    def official_slots(self) -> list[int]:
        return list(self.official)

    def positions(self) -> Tensor:
        """Slot of every live position (to gather weight slices into Gram order)."""
        return self.pos_tensor[: self.width]

    def remove_position(self, pos: int) -> None:
        """Drop a dead position from the compact Gram matrices (the last position moves into it)."""
        last = self.width - 1
        dead_slot = self.pos2slot[pos]
        if pos != last:
            gram = self.gram
            gram[:, pos, :last + 1] = gram[:, last, :last + 1]
            gram[:, :last + 1, pos] = gram[:, :last + 1, last]
            self.pos_tensor[pos] = self.pos_tensor[last]
            moved = self.pos2slot[last]
            self.pos2slot[pos] = moved
            self.slot2pos[moved] = pos
        self.pos2slot.pop()
        del self.slot2pos[dead_slot]
        self.width -= 1


@dataclass
class _Link:
    """A ≥2-D tensor indexed by two groups: ``owner`` on ``axis``, ``other`` on the other axis."""

    key: str
    axis: int
    other: int


class IterativeMerger:
    """Runs IFM on a state dict for a list of channel groups (see :func:`iterative_feature_merging`)."""

    def __init__(self, state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup],
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else _default_device()
        self.dtype = dtype
        self.source = state_dict
        self.groups = list(groups)
        self.states = [_GroupState(i, g, dtype, self.device) for i, g in enumerate(self.groups)]
        member_keys = {m.key for g in self.groups for m in g.members}
        self.weights = {k: state_dict[k].detach().to(self.device, dtype, copy=True) for k in member_keys}
        owners: dict[tuple[str, int], int] = {}
        for gi, g in enumerate(self.groups):
            for m in g.members:
                owners[(m.key, m.axis)] = gi
        self.links: list[list[_Link]] = [[] for _ in self.groups]
        for gi, g in enumerate(self.groups):
            for m in g.members:
                other = owners.get((m.key, 1 - m.axis))
                if other is not None and self.weights[m.key].ndim >= 2:
                    self.links[gi].append(_Link(m.key, m.axis, other))
        start = time.perf_counter()
        self._init_grams()
        self.init_seconds = time.perf_counter() - start  # the first full distance pass

    # ----------------------------------------------------------------------------- distances
    def _init_grams(self) -> None:
        for st in self.states:
            for m in st.group.distance_members(self.weights):
                w = self.weights[m.key]
                if m.axis == 0:
                    st.gram[0] += _gram(_rows(w, st.n0))
                else:
                    st.gram[1] += _gram(_cols(w, st.n0).transpose(0, 1).reshape(st.n0, -1))

    def _distances_into_buffer(self, st: _GroupState) -> tuple[Tensor, Tensor]:
        """Raw Gram-identity distances of the live positions (in a reused buffer) and the norms."""
        w = st.width
        if st.buffer.numel() < w * w:
            st.buffer = torch.empty(w * w, dtype=self.dtype, device=self.device)
        dist = st.buffer[: w * w].view(w, w)
        torch.add(st.gram[0, :w, :w], st.gram[1, :w, :w], out=dist)
        diag = dist.diagonal().clone()
        dist.mul_(-2.0).add_(diag[:, None]).add_(diag[None, :])
        return dist, diag

    def _snap(self, dist: Tensor, diag: Tensor) -> Tensor:
        """Below the Gram identity's rounding level a pair is an exact duplicate: its distance is 0,
        so exact ties are ties (broken in row-major order) and no distance is negative."""
        norms = diag[:, None] + diag[None, :]
        return dist.masked_fill_(dist <= TIE_TOLERANCE[self.dtype] * norms, 0.0)

    def distances(self, gi: int) -> Tensor:
        """Eq. 6 distances between the group's live channels, in the official channel order."""
        st = self.states[gi]
        dist, diag = self._distances_into_buffer(st)
        dist = self._snap(dist.clone(), diag)
        order = torch.tensor([st.slot2pos[s] for s in st.official], device=self.device)
        return dist[order][:, order]

    def closest_pair(self, gi: int) -> tuple[int, int, float, float] | None:
        """``(slot_a, slot_b, d_min, d_max)`` of the closest pair (official-order ties), or None."""
        st = self.states[gi]
        w = st.width
        if w < 2:
            return None
        dist, diag = self._distances_into_buffer(st)
        d_max, row_min = _off_diagonal_max_and_row_min(dist)
        d_min = row_min.min().item()
        if d_min <= TIE_TOLERANCE[self.dtype] * 2 * diag.max().item():
            # rounding-level distances: snap them to exact zeros, then every zero is a candidate
            self._snap(dist, diag)
            d_max, row_min = _off_diagonal_max_and_row_min(dist)
            d_min = row_min.min().item()
            candidates = (dist == d_min).nonzero().tolist()
        else:  # pairs within a relative 1e-12 (the asymmetry of Gram rounding) are tied
            limit = d_min * (1 + RELATIVE_TIE[self.dtype])
            rows = (row_min <= limit).nonzero().flatten().tolist()
            candidates = [(i, j) for i in rows for j in (dist[i] <= limit).nonzero().flatten().tolist()]
        slots = [(st.pos2slot[i], st.pos2slot[j]) for i, j in candidates]
        if len(slots) > 1:
            ranked = []
            for a, b in slots:
                ra, rb = st.official_rank(a), st.official_rank(b)
                ranked.append(((min(ra, rb), max(ra, rb)), a, b))
            _, a, b = min(ranked)
        else:
            a, b = slots[0]
        return a, b, d_min, d_max

    # ----------------------------------------------------------------------------- merging
    def merge(self, gi: int, a: int, b: int) -> None:
        """Merge slots ``a`` and ``b`` of group ``gi`` (rows summed, columns count-weighted mean)."""
        st = self.states[gi]
        if a > b:
            a, b = b, a
        na, nb = st.counts[a], st.counts[b]
        wa, wb = na / (na + nb), nb / (na + nb)
        for link in self.links[gi]:
            self._update_linked_gram(st, link, a, b, wa, wb)
        for m in st.group.members:  # dead slots keep stale values: nothing reads them again
            w = self.weights[m.key]
            if m.axis == 0:
                rows = _rows(w, st.n0)
                rows[a] += rows[b]
            else:
                cols = _cols(w, st.n0)
                cols[:, a].mul_(wa).add_(cols[:, b], alpha=wb)
        pa, pb = st.slot2pos[a], st.slot2pos[b]
        self._merge_own_gram(st.gram, pa, pb, wa, wb, st.width)
        st.remove_position(pb)
        st.counts[a], st.counts[b] = na + nb, 0.0
        st.clusters[a], st.clusters[b] = sorted(st.clusters[a] + st.clusters[b]), []
        st.official.remove(a)
        st.official.remove(b)
        st.official.append(a)  # the merged channel goes last, as in the official code
        st.n_merges += 1
        st.dirty = True

    def _merge_own_gram(self, gram: Tensor, a: int, b: int, wa: float, wb: float, width: int) -> None:
        """Position ``a`` becomes the merged channel: rows part ``a + b``, columns part ``wa·a + wb·b``."""
        coef_a = torch.tensor([1.0, wa], dtype=self.dtype, device=self.device)
        coef_b = torch.tensor([1.0, wb], dtype=self.dtype, device=self.device)
        diag = coef_a * coef_a * gram[:, a, a] + 2 * coef_a * coef_b * gram[:, a, b] + coef_b * coef_b * gram[:, b, b]
        row = coef_a[:, None] * gram[:, a, :width] + coef_b[:, None] * gram[:, b, :width]
        gram[:, a, :width] = row
        gram[:, :width, a] = row
        gram[:, a, a] = diag

    def _update_linked_gram(self, st: _GroupState, link: _Link, a: int, b: int, wa: float, wb: float) -> None:
        """Rank-2k update of the other group's Gram matrix for a merge of slots a, b in ``st``.

        With A, B the two slices (one row per channel of the other group): summed rows give
        ``dG = A B^T + B A^T``; a weighted mean of columns gives ``N N^T - A A^T - B B^T`` with
        ``N = wa A + wb B``. Both are ``V U^T`` with ``U = [A, B]``.
        """
        other = self.states[link.other]
        order = other.positions()
        w = self.weights[link.key]
        if link.axis == 1:  # we merge columns (weighted mean); the other group owns the rows
            cols = _cols(w, st.n0)
            pair = cols.index_select(1, torch.tensor([a, b], device=self.device))[order]  # (w, 2, k)
            A, B = pair[:, 0], pair[:, 1]
            V = torch.cat([(wa * wa - 1) * A + (wa * wb) * B, (wa * wb) * A + (wb * wb - 1) * B], dim=1)
            target, mix = other.gram[0], (wa, wb)
        else:  # we sum rows; the other group owns the columns of this tensor
            blocks = w.reshape(st.n0, other.n0, -1)
            A, B = blocks[a][order], blocks[b][order]
            V = torch.cat([B, A], dim=1)
            target, mix = other.gram[1], (1.0, 1.0)
        U = torch.cat([A, B], dim=1)
        n = other.width
        target[:n, :n].addmm_(V, U.T)
        if other.declined_at is not None:  # |dD_ij| <= 2 (S_i + S_j), S = |n|^2 + |a|^2 + |b|^2 per row
            new = mix[0] * A + mix[1] * B
            other.drift += 4.0 * (new.square().sum(dim=1) + U.square().sum(dim=1)).max().item()
        other.dirty = True

    # ----------------------------------------------------------------------------- driver
    def visit(self, gi: int, beta: float, iteration: int, log: list[MergeStep]) -> bool:
        """Examine group ``gi`` once: merge its closest pair unless Eq. 9 says stop."""
        st = self.states[gi]
        if not st.dirty or st.still_declines(beta):
            return False
        found = self.closest_pair(gi)
        if found is None or found[2] > beta * found[3]:
            st.dirty = False
            st.declined_at, st.drift = (found[2], found[3]) if found else None, 0.0
            return False
        st.declined_at = None
        a, b, d_min, _ = found
        ra, rb = st.official_rank(a), st.official_rank(b)
        log.append(MergeStep(iteration, st.group.name, min(ra, rb), max(ra, rb), d_min))
        self.merge(gi, a, b)
        return True

    def run(self, beta: float, max_ratio: float = 1.0, order: Order = "official",
            progress: bool = False) -> MergeResult:
        """Merge until Eq. 9 stops every group (or ``max_ratio`` caps it)."""
        check_hyperparameters(beta, max_ratio)
        start = time.perf_counter()
        log: list[MergeStep] = []
        bar = _progress_bar(progress, sum(s.n0 for s in self.states))
        iteration = 0
        if order == "official":
            while True:
                merged_any = False
                for gi, st in enumerate(self.states):
                    if iteration >= st.n0 * max_ratio:
                        continue
                    merged_any |= self.visit(gi, beta, iteration, log)
                bar.update(len(log) - bar.n)
                iteration += 1
                if not merged_any:
                    break
        elif order == "layerwise":
            for gi, st in enumerate(self.states):
                st.dirty = True
                while st.n_merges < st.n0 * max_ratio and self.visit(gi, beta, iteration, log):
                    iteration += 1
                    bar.update(1)
        else:
            raise ValueError(f"order must be 'official' or 'layerwise', got {order!r}")
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = self.init_seconds + time.perf_counter() - start
        return MergeResult(
            state_dict=self.merged_state_dict(),
            widths={s.group.name: s.width for s in self.states},
            original_widths={s.group.name: s.n0 for s in self.states},
            clusters={s.group.name: [s.clusters[k] for k in s.official_slots()] for s in self.states},
            merge_log=log, iterations=iteration, seconds=seconds,
            beta=beta, max_ratio=max_ratio, order=order)

    def merged_state_dict(self) -> dict[str, Tensor]:
        """The merged weights gathered in official channel order, in the source dtypes and devices."""
        index = {(m.key, m.axis): torch.tensor(st.official_slots(), device=self.device)
                 for st in self.states for m in st.group.members if st.official != list(range(st.n0))}
        widths = {(m.key, m.axis): st.n0 for st in self.states for m in st.group.members}
        merged: dict[str, Tensor] = {}
        for key, source in self.source.items():
            if key not in self.weights:
                merged[key] = source.clone()
                continue
            w = self.weights[key].to(source.dtype)
            if (key, 0) in index:
                w = _rows(w, widths[(key, 0)]).index_select(0, index[(key, 0)]).reshape(-1, *w.shape[1:])
            if (key, 1) in index:
                n0, keep = widths[(key, 1)], index[(key, 1)]
                w = _cols(w, n0).index_select(1, keep).reshape(w.shape[0], w.shape[1] * len(keep) // n0, *w.shape[2:])
            merged[key] = w.to(source.device)
        return merged


def _off_diagonal_max_and_row_min(dist: Tensor) -> tuple[float, Tensor]:
    """Largest off-diagonal entry and every row's smallest off-diagonal entry (the diagonal is left +inf)."""
    diagonal = dist.diagonal()
    diagonal.fill_(-math.inf)
    d_max = dist.max().item()
    diagonal.fill_(math.inf)
    return d_max, dist.min(dim=1).values


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _NullBar:
    n = 0

    def update(self, k: int) -> None:
        self.n += k

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="IFM merges", unit="merge", leave=False)


def iterative_feature_merging(state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup],
                              beta: float = 0.1, max_ratio: float = 1.0, order: Order = "official",
                              dtype: torch.dtype = torch.float64,
                              device: torch.device | str | None = None,
                              progress: bool = False) -> MergeResult:
    """Run IFM on ``state_dict``.

    Args:
        state_dict: the model's parameters and buffers (not modified).
        groups: channel groups, in the order they are visited (see :mod:`ifm.groups`).
        beta: Eq. 9 threshold β in (0, 1): a group merges while ``d_min <= β·d_max``.
        max_ratio: cap in (0, 1]: a group is visited while ``iteration < width·max_ratio``.
        order: ``"official"`` (one merge per group per sweep) or ``"layerwise"`` (Algorithm 1).
        dtype: float64 (default) or float32 bookkeeping of weights and Gram matrices.
        device: where to compute (default: CUDA when present).
        progress: show a progress bar.

    Returns:
        A :class:`MergeResult`.
    """
    check_hyperparameters(beta, max_ratio)
    merger = IterativeMerger(state_dict, groups, dtype=dtype, device=device)
    return merger.run(beta, max_ratio, order, progress)
