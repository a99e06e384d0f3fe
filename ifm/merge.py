"""Iterative Feature Merging (Eq. 6-10): the merge loop, weights and results.

The result is identical to the official algorithm (same merge sequence, widths and channel order),
but no distance matrix is ever recomputed from the weights after the first pass: each group's
Eq. 6 distances live in a :class:`~ifm.gram.GroupGram` (Gram matrices updated by O(n) combinations
for the group's own merges and by low-rank products for its neighbours' merges). Here:

* a group whose Gram matrix did not change since it last declined, or whose distances provably
  moved too little to change Eq. 9's verdict, declines again unexamined;
* the weights are merged in place in their original channel *slots* (rows summed, columns
  count-weighted), and gathered once at the end in the official channel order (the merged channel
  goes last at each merge).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch

from .gram import GroupGram, gram_matrix
from .groups import ChannelGroup
from .permute import select_channels

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


class _GroupState:
    """Bookkeeping of one group: channel *slots* (original positions, where the weights stay), the
    official channel order, counts and clusters, and the group's :class:`GroupGram` over positions."""

    def __init__(self, group: ChannelGroup, weights: Mapping[str, Tensor], dtype: torch.dtype,
                 device: torch.device):
        n = group.width
        self.group, self.n0 = group, n
        self.counts = [1.0] * n  # per slot
        self.official: list[int] = list(range(n))  # live slots in the official channel order
        self.clusters: list[list[int]] = [[c] for c in range(n)]  # per slot
        self.slot2pos: dict[int, int] = {s: s for s in range(n)}
        self.device = device
        self.slot_of_position = torch.arange(n)  # on the CPU, also to gather weight slices in Gram order
        self.pos2slot = self.slot_of_position.numpy()  # the same memory, cheap to index and update
        self.gram = GroupGram(n, dtype, device)
        self.n_merges = 0
        self.dirty = True
        # In-place views of the merged tensors: rows to sum, columns to average; 1-D rows stacked.
        axis0 = [m.key for m in group.members if m.axis == 0]
        self.row_views = [_rows(weights[k], n) for k in axis0 if weights[k].ndim >= 2]
        self.col_views = [_cols(weights[m.key], n) for m in group.members if m.axis == 1]
        self.vector_keys = [k for k in axis0 if weights[k].ndim == 1]
        self.vectors = torch.stack([weights[k] for k in self.vector_keys], 1) if self.vector_keys else None
        # After a declined visit: its (d_min, d_max) and a bound on how far any distance has moved
        # since, through neighbours' low-rank updates (None: unknown, a full look is needed).
        self.declined_at: tuple[float, float] | None = None
        self.drift = 0.0

    @property
    def width(self) -> int:
        return self.gram.width

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

    def positions(self) -> Tensor | None:
        """Slot of every live position (to gather weight slices into Gram order); None while all live."""
        if self.width == self.n0:
            return None
        live = self.slot_of_position[: self.width]
        return live if self.device.type == "cpu" else live.to(self.device)

    def merge_positions(self, a: int, b: int, wa: float, wb: float) -> None:
        """Merge slots ``a`` and ``b`` in the Gram bookkeeping (the last position moves into ``b``'s)."""
        pa, pb = self.slot2pos.pop(a), self.slot2pos.pop(b)
        last = self.width - 1
        self.gram.merge(pa, pb, wa, wb)
        self.slot2pos[a] = pa
        if pb != last:  # (if a sat last, it moves into b's position here)
            moved = int(self.pos2slot[last])
            self.pos2slot[pb] = moved
            self.slot2pos[moved] = pb


@dataclass
class _Link:
    """A ≥2-D tensor indexed by two groups, seen from the group that merges on ``axis``.

    ``slices[c]`` is own channel ``c``'s slice, one row per channel of group ``other``.
    """

    axis: int
    other: int
    slices: Tensor


def _link_slices(w: Tensor, axis: int, n_own: int, n_other: int) -> Tensor:
    if axis == 0:  # own rows, other's columns
        return w.reshape(n_own, n_other, -1)
    return w.reshape(n_other, n_own, -1).transpose(0, 1)  # own columns, other's rows


class IterativeMerger:
    """Runs IFM on a state dict for a list of channel groups (see :func:`iterative_feature_merging`)."""

    def __init__(self, state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup],
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype
        self.source = state_dict
        self.groups = list(groups)
        member_keys = {m.key for g in self.groups for m in g.members}
        self.weights = {k: state_dict[k].detach().to(self.device, dtype, copy=True) for k in member_keys}
        owners = {(m.key, m.axis): gi for gi, g in enumerate(self.groups) for m in g.members}
        self.links: list[list[_Link]] = [[] for _ in self.groups]
        for gi, g in enumerate(self.groups):
            for m in g.members:
                other = owners.get((m.key, 1 - m.axis))
                if other is None or self.weights[m.key].ndim < 2:
                    continue
                if other == gi:
                    raise ValueError(f"{m.key} maps group {g.name!r} to itself: not supported")
                slices = _link_slices(self.weights[m.key], m.axis, g.width, self.groups[other].width)
                self.links[gi].append(_Link(m.axis, other, slices))
        self.states = [_GroupState(g, self.weights, dtype, self.device) for g in self.groups]
        start = time.perf_counter()
        self._init_grams()
        self.init_seconds = time.perf_counter() - start  # the first full distance pass

    # ----------------------------------------------------------------------------- distances
    def _init_grams(self) -> None:
        for st in self.states:
            for m in st.group.distance_members(self.weights):
                w = self.weights[m.key]
                if m.axis == 0:
                    st.gram.rows_part += gram_matrix(_rows(w, st.n0))
                else:
                    st.gram.columns_part += gram_matrix(_cols(w, st.n0).transpose(0, 1).reshape(st.n0, -1))

    def _snap(self, dist: Tensor, diag: Tensor) -> Tensor:
        """Below the Gram identity's rounding level a pair is an exact duplicate: its distance is 0,
        so exact ties are ties (broken in row-major order) and no distance is negative."""
        norms = diag[:, None] + diag[None, :]
        return dist.masked_fill_(dist <= TIE_TOLERANCE[self.dtype] * norms, 0.0)

    def distances(self, gi: int) -> Tensor:
        """Eq. 6 distances between the group's live channels, in the official channel order."""
        st = self.states[gi]
        diag = st.gram.look()[2]
        dist = self._snap(st.gram.distance_rows(slice(0, st.width), diag), diag)
        dist.diagonal().zero_()
        order = torch.tensor([st.slot2pos[s] for s in st.official], device=self.device)
        return dist[order][:, order]

    def closest_pair(self, gi: int) -> tuple[int, int, float, float] | None:
        """``(slot_a, slot_b, d_min, d_max)`` of the closest pair (official-order ties), or None."""
        st = self.states[gi]
        if st.width < 2:
            return None
        row_min, row_max, diag = st.gram.look()
        d_min, d_max, norm = torch.stack([row_min.min(), row_max.max(), diag.max()]).tolist()
        if d_min <= TIE_TOLERANCE[self.dtype] * 2 * norm:
            # rounding-level distances: snap them to exact zeros, then every zero is a candidate
            dist = self._snap(st.gram.distance_rows(slice(0, st.width), diag), diag)
            d_max = dist.max().item()
            dist.diagonal().fill_(math.inf)
            d_min = dist.min().item()
            candidates = (dist == d_min).nonzero().tolist()
        else:  # pairs within a relative 1e-12 (the asymmetry of Gram rounding) are tied
            limit = d_min * (1 + RELATIVE_TIE[self.dtype])
            rows = (row_min <= limit).nonzero().flatten()
            if len(rows) == 2:  # then the two rows are the only pair within the limit
                candidates = [rows.tolist()]
            else:
                dist = st.gram.distance_rows(rows, diag)
                dist[torch.arange(len(rows), device=self.device), rows] = math.inf
                hits = (dist <= limit).nonzero().tolist()
                rows = rows.tolist()
                candidates = [(rows[r], j) for r, j in hits]
        slots = [(int(st.pos2slot[i]), int(st.pos2slot[j])) for i, j in candidates]
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
            self._update_linked_gram(link, a, b, wa, wb)
        for rows in st.row_views:  # dead slots keep stale values: nothing reads them again
            rows[a].add_(rows[b])
        if st.vectors is not None:
            st.vectors[a].add_(st.vectors[b])
        for cols in st.col_views:
            cols.select(1, a).lerp_(cols.select(1, b), wb)
        st.merge_positions(a, b, wa, wb)
        st.counts[a], st.counts[b] = na + nb, 0.0
        st.clusters[a], st.clusters[b] = sorted(st.clusters[a] + st.clusters[b]), []
        st.official.remove(a)
        st.official.remove(b)
        st.official.append(a)  # the merged channel goes last, as in the official code
        st.n_merges += 1
        st.dirty = True

    def _update_linked_gram(self, link: _Link, a: int, b: int, wa: float, wb: float) -> None:
        """Rank-2k update of the other group's Gram matrix for a merge of own channels ``a``, ``b``.

        With ``A``, ``B`` the two slices (one row per channel of the other group): summed rows
        (axis 0) give ``dG = A B^T + B A^T``; a count-weighted mean of columns (axis 1) gives
        ``N N^T - A A^T - B B^T`` with ``N = wa A + wb B``, which equals ``-X X^T`` with
        ``X = [wb A + wa B, sqrt(2 wa wb) (A - B)]``. Either way ``|dD_ij| <= 4 max_k |U_k|^2``.
        """
        other = self.states[link.other]
        first, second = link.slices[a], link.slices[b]
        k = first.shape[1]
        if link.axis == 0:
            factors = torch.cat([first, second, first], dim=1)  # U = [A, B], V = [B, A]
        else:
            spread = torch.sub(first, second).mul_(math.sqrt(2.0 * wa * wb))
            factors = torch.cat([torch.lerp(second, first, wb), spread], dim=1)
        order = other.positions()
        if order is not None:
            factors = factors.index_select(0, order)
        if link.axis == 0:
            u, v, sign = factors[:, :2 * k], factors[:, k:], 1.0
        else:
            u, v, sign = factors, factors, -1.0
        other.gram.add_product(v, u, sign, part=1 - link.axis)
        if other.declined_at is not None:
            other.drift += 4.0 * u.square().sum(dim=1).max().item()
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
        current = dict(self.weights)
        for st in self.states:  # 1-D rows were merged in their stacked copy
            current.update({key: st.vectors[:, c] for c, key in enumerate(st.vector_keys)})
        keep = {st.group.name: torch.tensor(st.official_slots(), device=self.device) for st in self.states}
        gathered = select_channels(current, self.groups, keep)  # new tensors for every member
        return {key: gathered[key].to(source.device, source.dtype) if key in gathered else source.clone()
                for key, source in self.source.items()}


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
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
