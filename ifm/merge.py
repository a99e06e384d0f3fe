"""Iterative Feature Merging (Eq. 6-10): the merge loop, weights and results.

The result is identical to the official algorithm (same merge sequence, widths and channel order),
but no distance matrix is recomputed from the weights after the first pass: each group's Eq. 6
distances live in a :class:`~ifm.gram.GroupGram` (a Gram matrix updated by O(n) combinations for the
group's own merges and by low-rank products for its neighbours' merges, and the exact distances of
the group's closest pairs). Here:

* the first pass (one Gram matrix per group) runs on ``device``: on the CPU by BLAS ``syrk``
  (:mod:`ifm.blas`), on CUDA in PyTorch; the merge loop runs on the CPU, each step of a merge one
  compiled loop (:mod:`ifm.kernels`) over NumPy arrays;
* a group whose Gram matrix did not change since it last declined declines again unexamined (one
  whose distances provably moved too little to change Eq. 9's verdict declines on its bounds);
* the weights are merged in place in their original channel *slots* (rows summed, columns
  count-weighted), and gathered once at the end in the official channel order (the merged channel
  goes last at each merge).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence, get_args

import numpy as np
import torch

from . import kernels
from .blas import syrk_upper
from .device import default_device
from .errors import IFMError
from .gram import GroupGram, gram_matrix
from .groups import ChannelGroup, join_segments, parse_segment_key, split_segments

Tensor = torch.Tensor
Order = Literal["official", "layerwise"]
ORDERS: tuple[str, ...] = get_args(Order)
MergeRule = Literal["official", "mean"]
MERGE_RULES: tuple[str, ...] = get_args(MergeRule)
Dtype = Literal["float64", "float32"]  # of the distance bookkeeping
DTYPES: tuple[str, ...] = get_args(Dtype)

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
    correction_seconds: float = 0.0  # the data-free repair after merging (``ifm.correction``), if any
    #: the consumers' Gram matrices before merging, kept for the correction (:attr:`IterativeMerger.column_grams`)
    column_grams: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def n_merges(self) -> int:
        return len(self.merge_log)


def check_hyperparameters(beta: float, max_ratio: float) -> None:
    """Raise ``ValueError`` for β outside (0, 1) or max_ratio outside (0, 1]."""
    if not (isinstance(beta, (int, float)) and 0.0 < beta < 1.0):
        raise ValueError(f"beta must lie in (0, 1), got {beta}; e.g. 0.1")
    if not (isinstance(max_ratio, (int, float)) and 0.0 < max_ratio <= 1.0):
        raise ValueError(f"max_ratio must lie in (0, 1], got {max_ratio}; e.g. 1.0")


def in_place_view(w: np.ndarray, *shape: int) -> np.ndarray:
    """``w`` reshaped *without a copy*, so that writing into the result writes into ``w``; raises ``AttributeError``
    where the memory layout would need one (``ndarray.reshape`` then copies silently, and merges written into
    the copy are lost: the merger keeps its arrays C-ordered, whatever the layout of the state dict)."""
    view = w.view()
    view.shape = shape  # (NumPy refuses, instead of copying, when no view has this shape)
    return view


def _rows(w: np.ndarray, n: int) -> np.ndarray:
    """View with the channel on dim 0: ``(n, rest)``."""
    return in_place_view(w, n, w.size // n)


def _cols(w: np.ndarray, n: int) -> np.ndarray:
    """View with the channel on dim 1: ``(out, n, block)`` (a flattened linear input has block > 1)."""
    return in_place_view(w, w.shape[0], n, w.size // (w.shape[0] * n))


class _GroupState:
    """Bookkeeping of one group: channel *slots* (original positions, where the weights stay), their Gram
    *positions* (live channels ``0..width-1`` of the group's :class:`GroupGram`) and the official channel order,
    counts and clusters. It alone changes the slot / position / official-order maps."""

    def __init__(self, group: ChannelGroup, arrays: Mapping[str, np.ndarray], gram: GroupGram,
                 linked: set[tuple[str, int]]):
        n = group.width
        self.group, self.original_width, self.gram = group, n, gram
        self.counts = [1.0] * n  # per slot
        self.official: list[int] = list(range(n))  # live slots in the official channel order
        self.clusters: list[list[int]] = [[c] for c in range(n)]  # per slot
        self.slot_pos = np.arange(n)  # Gram position of each slot (-1: merged away)
        self.pos2slot = np.arange(n)  # slot at each position (valid for positions < width)
        self.n_merges = 0
        self.dirty = True  # changed since it last declined
        # In-place views of the merged arrays that no neighbour shares (``linked`` ones are merged
        # with the neighbour's Gram update): rows and columns merged by the rule, and rows every rule averages
        # (``group.averaged``); 1-D rows stacked.
        axis0 = [m.key for m in group.members if m.axis == 0]
        unlinked = [k for k in axis0 if arrays[k].ndim >= 2 and (k, 0) not in linked]
        self.row_views = [_rows(arrays[k], n) for k in unlinked if k not in group.averaged]
        self.averaged_row_views = [_rows(arrays[k], n) for k in unlinked if k in group.averaged]
        self.col_views = [_cols(arrays[m.key], n) for m in group.members if m.axis == 1 and (m.key, 1) not in linked]
        self.vector_keys = [k for k in axis0 if arrays[k].ndim == 1 and k not in group.averaged]
        self.vectors = np.stack([arrays[k] for k in self.vector_keys], 1) if self.vector_keys else None
        self.averaged_keys = [k for k in axis0 if arrays[k].ndim == 1 and k in group.averaged]
        self.averaged = np.stack([arrays[k] for k in self.averaged_keys], 1) if self.averaged_keys else None

    @property
    def width(self) -> int:
        return self.gram.width

    def official_rank(self, slot: int) -> int:
        return self.official.index(slot)

    def official_slots(self) -> list[int]:
        return list(self.official)

    def merge_weights(self, a: int, b: int) -> tuple[float, float]:
        """The count-weighted mean's weights of slots ``a`` and ``b``."""
        na, nb = self.counts[a], self.counts[b]
        return na / (na + nb), nb / (na + nb)

    def first_in_official_order(self, pairs: np.ndarray) -> tuple[int, int]:
        """The slots of the tied position pair (``(k, 2)`` positions) that comes first in row-major official
        order (one compiled loop: all-zero weights tie every pair)."""
        best = 0
        if len(pairs) > 1:
            rank = np.empty(len(self.slot_pos), np.int64)  # of each slot, then of each position
            rank[self.official] = np.arange(len(self.official))
            best = kernels.first_ranked_pair(pairs, rank[self.pos2slot[:self.width]])
        return int(self.pos2slot[pairs[best, 0]]), int(self.pos2slot[pairs[best, 1]])

    def merge_slots(self, a: int, b: int, wa: float, wb: float) -> None:
        """Slot ``a`` becomes the merge of slots ``a < b`` (weights ``wa``, ``wb``): in the Gram bookkeeping (the
        last position moves into ``b``'s), the maps, counts, clusters and official order (merged channel last)."""
        pa, pb = int(self.slot_pos[a]), int(self.slot_pos[b])
        last = self.width - 1
        self.gram.merge(pa, pb, wa, wb)
        self.slot_pos[b] = -1
        if pb != last:  # (if a sat last, it moves into b's position here)
            moved = int(self.pos2slot[last])
            self.pos2slot[pb] = moved
            self.slot_pos[moved] = pb
        self.counts[a], self.counts[b] = self.counts[a] + self.counts[b], 0.0
        self.clusters[a], self.clusters[b] = sorted(self.clusters[a] + self.clusters[b]), []
        self.official.remove(a)
        self.official.remove(b)
        self.official.append(a)  # the merged channel goes last, as in the official code
        self.n_merges += 1
        self.dirty = True


@dataclass
class _Link:
    """A ≥2-D tensor indexed by two groups, seen from the group whose merges change it.

    ``slices[c]`` is own channel ``c``'s slice, one row per channel of group ``other``. ``averaged``: the own
    merges count-average the slices (else they sum them); ``into_summed``: the tensor's Gram matrix lies in the
    part of the other group's Gram matrix that its own merges sum.
    """

    other: int
    slices: np.ndarray
    averaged: bool
    into_summed: bool


def _link_slices(w: np.ndarray, axis: int, n_own: int, n_other: int) -> np.ndarray:
    if axis == 0:  # own rows, other's columns
        return in_place_view(w, n_own, n_other, w.size // (n_own * n_other))
    return in_place_view(w, n_other, n_own, w.size // (n_own * n_other)).transpose(1, 0, 2)  # own columns, other's rows


class IterativeMerger:
    """Runs IFM on a state dict for a list of channel groups (see :func:`iterative_feature_merging`)."""

    def __init__(self, state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup],
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
                 rule: MergeRule = "official", keep_column_grams: bool = False):
        if dtype not in TIE_TOLERANCE:
            raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
        if rule not in MERGE_RULES:
            raise ValueError(f"rule must be one of {MERGE_RULES}, got {rule!r}")
        self.rule = rule
        self.rows_averaged = rule == "mean"  # (official: rows summed, columns count-weighted; mean: the dual)
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype
        self.groups = list(groups)
        self.original = state_dict
        self.segmented = any(parse_segment_key(m.key) for g in self.groups for m in g.members)
        self.source = split_segments(state_dict, self.groups) if self.segmented else state_dict
        member_keys = {m.key for g in self.groups for m in g.members}
        # Merged in place on the CPU, as C-ordered NumPy arrays (and views of them), whatever the layout of the
        # source tensors (channels-last, transposed, sliced: ``np.array`` would keep it, and a reshape of it copy);
        # made by NumPy, which needs no thread pool (PyTorch's threads would spin against the BLAS threads).
        self.arrays = arrays = {k: np.array(_as_numpy(self.source[k]), _numpy_dtype(dtype), order="C")
                                for k in member_keys}
        bad = next((k for k in sorted(member_keys) if not np.isfinite(arrays[k]).all()), None)
        if bad is not None:
            raise IFMError(f"{bad} holds non-finite values (inf or NaN): IFM needs finite weights; "
                           "check the checkpoint (a diverged training?)")
        self.ran = False
        self.summed_part = 1 if self.rows_averaged else 0  # the Gram part an own merge sums
        owners = {(m.key, m.axis): index for index, g in enumerate(self.groups) for m in g.members}
        self.links: list[list[_Link]] = [[] for _ in self.groups]
        linked: list[set[tuple[str, int]]] = [set() for _ in self.groups]  # members merged by a link
        for index, g in enumerate(self.groups):
            for m in g.members:
                other = owners.get((m.key, 1 - m.axis))
                if other is None or arrays[m.key].ndim < 2:
                    continue
                if other == index:
                    raise ValueError(f"{m.key} maps group {g.name!r} to itself: not supported")
                slices = _link_slices(arrays[m.key], m.axis, g.width, self.groups[other].width)
                averaged = m.key in g.averaged or (m.axis == 0) == self.rows_averaged
                into_summed = self._part(self.groups[other], m.key, 1 - m.axis) == self.summed_part
                self.links[index].append(_Link(other, slices, averaged, into_summed))
                linked[index].add((m.key, m.axis))
        start = time.perf_counter()
        tie, relative = TIE_TOLERANCE[dtype], RELATIVE_TIE[dtype]
        # The consumers' columns are copied to one row per channel in one reused buffer (fresh memory is slow to touch)
        buffer = np.empty(max((arrays[m.key].size for g in self.groups for m in g.members
                               if m.axis == 1 and arrays[m.key].ndim >= 2), default=0), _numpy_dtype(dtype))
        self.states = [_GroupState(g, arrays, GroupGram(self._gram_parts(g, arrays, buffer), tie, relative,
                                                        self.summed_part), linked[index])
                       for index, g in enumerate(self.groups)]
        self.init_seconds = time.perf_counter() - start  # the first full distance pass
        start = time.perf_counter()
        #: with ``keep_column_grams``: per group, the Gram matrix of its consumers' columns before any merge (upper
        #: triangle; groups whose columns part also holds members every rule averages are left out), for the
        #: data-free correction (:mod:`ifm.correction`), which would otherwise compute it again
        self.column_grams: dict[str, np.ndarray] = {}
        for g, state in zip(self.groups, self.states) if keep_column_grams else ():
            if not any(m.key in g.averaged and arrays[m.key].ndim >= 2 for m in g.members):
                self.column_grams[g.name] = state.gram.parts[1].copy()
        self.column_gram_seconds = time.perf_counter() - start

    # ----------------------------------------------------------------------------- distances
    def _part(self, group: ChannelGroup, key: str, axis: int) -> int:
        """The Gram part of ``group`` that holds the products of its member ``(key, axis)``: its axis (0: rows,
        1: columns), or for a member every rule averages, the part own merges average."""
        return 1 - self.summed_part if key in group.averaged else axis

    def _gram_parts(self, group: ChannelGroup, arrays: Mapping[str, np.ndarray], buffer: np.ndarray) -> np.ndarray:
        """The group's Gram matrix (rows part, columns part) as a CPU array, computed on ``device``.

        On the CPU: upper triangles only, by symmetric rank-k updates (no PyTorch operation in between,
        whose worker threads would spin against the BLAS threads). ``buffer``: room for the largest consumer
        weight, copied there with one row per channel.
        """
        n = group.width
        on_cpu = self.device.type == "cpu"
        if on_cpu:
            parts = np.zeros((2, n, n), _numpy_dtype(self.dtype))
        else:
            parts_t = torch.zeros(2, n, n, dtype=self.dtype, device=self.device)
        for m in group.distance_members(arrays):
            if m.axis == 0:
                rows = _rows(arrays[m.key], n)  # (a contiguous view)
            else:  # one row per channel
                cols = _cols(arrays[m.key], n)
                rows = buffer[:cols.size].reshape(n, cols.shape[0], cols.shape[2])
                np.copyto(rows, cols.transpose(1, 0, 2))
                rows = rows.reshape(n, -1)
            part = self._part(group, m.key, m.axis)
            if on_cpu:
                syrk_upper(parts[part], rows, 1.0, rows=True)
            else:
                parts_t[part] += gram_matrix(torch.from_numpy(rows).to(self.device))
        return parts if on_cpu else parts_t.cpu().numpy()

    def distances(self, index: int) -> Tensor:
        """Eq. 6 distances between the group's live channels, in the official channel order (rounding-
        level distances snapped to 0)."""
        state = self.states[index]
        gram = state.gram
        dist = gram.distance_matrix()
        i, j = np.indices(dist.shape)
        dist = gram.snap(dist, i, j)
        np.fill_diagonal(dist, 0.0)
        order = state.slot_pos[state.official]
        return torch.from_numpy(dist[np.ix_(order, order)])

    # ----------------------------------------------------------------------------- merging
    def merge(self, index: int, a: int, b: int) -> None:
        """Merge slots ``a`` and ``b`` of group ``index``: official rule, rows (and 1-D parameters) summed and
        columns count-weighted; mean rule, rows (and 1-D parameters) count-weighted and columns summed; the
        group's ``averaged`` members count-weighted by both."""
        state = self.states[index]
        if a > b:
            a, b = b, a
        wa, wb = state.merge_weights(a, b)
        for link in self.links[index]:  # at the other group's live slots only
            self._update_linked_gram(link, a, b, wa, wb)
        for rows in state.row_views:  # dead slots keep stale values: nothing reads them again
            _combine(rows[a], rows[b], wb, self.rows_averaged)
        if state.vectors is not None:
            _combine(state.vectors[a], state.vectors[b], wb, self.rows_averaged)
        for cols in state.col_views:
            _combine(cols[:, a], cols[:, b], wb, not self.rows_averaged)
        for rows in state.averaged_row_views:
            _combine(rows[a], rows[b], wb, True)
        if state.averaged is not None:
            _combine(state.averaged[a], state.averaged[b], wb, True)
        state.merge_slots(a, b, wa, wb)

    def _update_linked_gram(self, link: _Link, a: int, b: int, wa: float, wb: float) -> None:
        """Merge own channels ``a``, ``b`` in a tensor shared with another group, and update that
        group's Gram matrix by rank 2k. With slices ``A``, ``B`` (one row per channel of the other
        group): summed slices change it by ``A B^T + B A^T``, count-weighted ones by
        ``N N^T - A A^T - B B^T`` with ``N = wa A + wb B`` (see :func:`ifm.kernels.merge_linked`)."""
        other = self.states[link.other]
        other.gram.merge_linked(link.slices, a, b, wa, wb, link.averaged, link.into_summed, other.slot_pos)
        other.dirty = True

    # ----------------------------------------------------------------------------- driver
    def visit(self, index: int, beta: float, iteration: int, log: list[MergeStep]) -> bool:
        """Examine group ``index`` once: merge its closest pair unless Eq. 9 says stop."""
        state = self.states[index]
        if not state.dirty:
            return False
        found = state.gram.closest(beta)  # a decline needs only bounds, kept by the Gram bookkeeping
        if found is None or len(found.ties) == 0:
            state.dirty = False
            return False
        a, b = state.first_in_official_order(found.ties)
        ra, rb = state.official_rank(a), state.official_rank(b)
        log.append(MergeStep(iteration, state.group.name, min(ra, rb), max(ra, rb), found.d_min))
        self.merge(index, a, b)
        return True

    def run(self, beta: float, max_ratio: float = 1.0, order: Order = "official",
            progress: bool = False, max_merges: int | None = None) -> MergeResult:
        """Merge until Eq. 9 stops every group (or ``max_ratio`` caps it, or ``max_merges`` merges are done). A
        merger runs once: it merges its copy of the weights in place (build a new one, or call
        :func:`iterative_feature_merging`)."""
        check_hyperparameters(beta, max_ratio)
        if self.ran:
            raise RuntimeError("this IterativeMerger has run already and holds merged weights; build a new one")
        self.ran = True
        start = time.perf_counter()
        log: list[MergeStep] = []
        bar = _progress_bar(progress, max_merges)  # (Eq. 9 stops earlier than any bound known in advance)
        iteration = 0
        cap = float("inf") if max_merges is None else max_merges
        if order == "official":
            while len(log) < cap:
                merged_any = False
                for index, state in enumerate(self.states):
                    if iteration >= state.original_width * max_ratio or len(log) >= cap:
                        continue
                    merged_any |= self.visit(index, beta, iteration, log)
                bar.update(len(log) - bar.n)
                iteration += 1
                if not merged_any:
                    break
        elif order == "layerwise":
            for index, state in enumerate(self.states):
                state.dirty = True
                while (state.n_merges < state.original_width * max_ratio and len(log) < cap
                       and self.visit(index, beta, iteration, log)):
                    iteration += 1
                    bar.update(1)
        else:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        bar.close()
        return self._result(log, iteration, self.init_seconds + time.perf_counter() - start, beta, max_ratio, order)

    def merge_partition(self, partition: Mapping[str, Sequence[Sequence[int]]]) -> MergeResult:
        """Merge each cluster of original channels into one (a partition chosen elsewhere, e.g. by k-means), by
        the merger's rule: rows summed or count-averaged over the whole cluster. Groups absent from
        ``partition`` stay as they are. The result's ``beta`` and ``max_ratio`` are NaN (no Eq. 9 was used)."""
        if self.ran:
            raise RuntimeError("this IterativeMerger has run already and holds merged weights; build a new one")
        self.ran = True
        start = time.perf_counter()
        log: list[MergeStep] = []
        for index, state in enumerate(self.states):
            clusters = partition.get(state.group.name, [])
            covered = sorted(c for cluster in clusters for c in cluster)
            if clusters and covered != list(range(state.original_width)):
                raise ValueError(f"the partition of group {state.group.name!r} must cover channels "
                                 f"0..{state.original_width - 1} once each")
            for cluster in clusters:
                first, *rest = sorted(int(c) for c in cluster)
                for other in rest:  # the cluster's count grows: each step weighs the new member 1/count
                    ra, rb = sorted((state.official_rank(first), state.official_rank(other)))
                    log.append(MergeStep(0, state.group.name, ra, rb, float("nan")))
                    self.merge(index, first, other)
        nan = float("nan")
        return self._result(log, 1, self.init_seconds + time.perf_counter() - start, nan, nan, "partition")

    def _result(self, log: list[MergeStep], iterations: int, seconds: float, beta: float, max_ratio: float,
                order: str) -> MergeResult:
        return MergeResult(
            state_dict=self.merged_state_dict(),
            widths={s.group.name: s.width for s in self.states},
            original_widths={s.group.name: s.original_width for s in self.states},
            clusters={s.group.name: [s.clusters[k] for k in s.official_slots()] for s in self.states},
            merge_log=log, iterations=iterations, seconds=seconds,
            beta=beta, max_ratio=max_ratio, order=order, column_grams=self.column_grams)

    def merged_state_dict(self) -> dict[str, Tensor]:
        """The merged weights gathered in official channel order, in the source dtypes and devices."""
        current = dict(self.arrays)
        for state in self.states:  # 1-D rows were merged in their stacked copies
            current.update({key: state.vectors[:, c] for c, key in enumerate(state.vector_keys)})
            current.update({key: state.averaged[:, c] for c, key in enumerate(state.averaged_keys)})
        keep = {}  # (key, axis) -> (group width, kept slots in official order, entries per channel)
        for state in self.states:
            slots = np.array(state.official_slots(), np.int64)
            keep.update({(m.key, m.axis): (state.original_width, slots, m.block) for m in state.group.members})
        out = {}
        for key, source in self.source.items():
            if key not in current:
                out[key] = source.clone()
                continue
            w = current[key]
            n_rows, rows, _ = keep.get((key, 0), (w.shape[0], None, 1))
            n_cols, cols, block = keep.get((key, 1), (1, None, 1))
            rows = np.arange(n_rows) if rows is None else rows
            cols = np.arange(n_cols) if cols is None else cols
            grid = w.reshape(n_rows, n_cols, -1)
            via_float32 = source.dtype in HALF_DTYPES  # gathered in float32, then cast
            dtype = np.float32 if via_float32 else _numpy_dtype(source.dtype) if source.dtype.is_floating_point else w.dtype
            gathered = np.empty((len(rows), len(cols), grid.shape[2]), dtype)
            kernels.gather_channels(grid, rows, cols, gathered)
            shape = (len(rows), *source.shape[1:]) if (key, 1) not in keep else \
                (len(rows), block * len(cols), *source.shape[2:])
            out[key] = torch.from_numpy(gathered.reshape(shape)).to(source.device, source.dtype)
        return join_segments(out, self.original) if self.segmented else out


def _combine(into: np.ndarray, other: np.ndarray, wb: float, averaged: bool) -> None:
    """Merge ``other`` into the view ``into``: the count-weighted mean (``other`` weighing ``wb``) or the sum."""
    if averaged:
        into += wb * (other - into)
    else:
        into += other


#: weights NumPy cannot hold (no bfloat16) or the compiled kernels cannot write: handled through float32
HALF_DTYPES = (torch.float16, torch.bfloat16)


def _as_numpy(tensor: Tensor) -> np.ndarray:
    """A CPU NumPy view of a weight; half-precision weights (NumPy has no bfloat16) go through float32."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype in HALF_DTYPES else tensor).numpy()


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


class _NullBar:
    n = 0

    def update(self, k: int) -> None:
        self.n += k

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, total: int | None):
    """A merge counter; with a total only when one is known (``max_merges``), so that no ETA misleads."""
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="IFM merges", unit="merge", leave=False)


def distance_matrices(state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup],
                      indices: Sequence[int] | None = None) -> dict[str, Tensor]:
    """Eq. 6 distance matrices of the chosen groups (indices into ``groups``; default all), by group name,
    in float64 and the official channel order."""
    merger = IterativeMerger(state_dict, groups, device="cpu")
    chosen = range(len(merger.groups)) if indices is None else indices
    return {merger.groups[index].name: merger.distances(index) for index in chosen}


def iterative_feature_merging(state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup],
                              beta: float = 0.1, max_ratio: float = 1.0, order: Order = "official",
                              dtype: torch.dtype = torch.float64,
                              device: torch.device | str | None = None,
                              progress: bool = False, rule: MergeRule = "official",
                              max_merges: int | None = None, keep_column_grams: bool = False) -> MergeResult:
    """Run IFM on ``state_dict``.

    Args:
        state_dict: the model's parameters and buffers (not modified).
        groups: channel groups, in the order they are visited (see :mod:`ifm.groups`).
        beta: Eq. 9 threshold β in (0, 1): a group merges while ``d_min <= β·d_max``.
        max_ratio: cap in (0, 1]: a group is visited while ``iteration < width·max_ratio``.
        order: ``"official"`` (one merge per group per sweep) or ``"layerwise"`` (Algorithm 1).
        dtype: float64 (default) or float32 bookkeeping of weights and Gram matrices.
        device: where the first Gram pass runs (default: CUDA when present); the loop runs on the CPU.
        progress: show a progress bar.
        rule: ``"official"`` (producer rows summed, consumer columns count-weighted: keeps the function of
            exact duplicates through ReLU-like activations) or ``"mean"`` (the dual: rows and per-channel
            parameters count-weighted, columns summed: keeps it through any activation).
        max_merges: stop after this many merges (the first ones of the run without the cap; ``None``: no cap).
        keep_column_grams: keep the consumers' Gram matrices for the correction (``MergeResult.column_grams``).

    Returns:
        A :class:`MergeResult`.
    """
    check_hyperparameters(beta, max_ratio)  # before the first distance pass, not after it
    merger = IterativeMerger(state_dict, groups, dtype=dtype, device=device, rule=rule,
                             keep_column_grams=keep_column_grams)
    return merger.run(beta, max_ratio, order, progress, max_merges)
