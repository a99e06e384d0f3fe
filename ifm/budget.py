"""Parameter budgets (``--target_params P``): the β or share of merged channels that keeps at least P % of the
parameters.

* ``ifm`` allocation: the largest β whose IFM result keeps at least P % (bisection over β; each probe is a merge
  without evaluation). IFM's Eq. 9 then decides how the budget is spread over the layers.
* ``uniform`` allocation: every group merged by the same share (``max_ratio`` with β 0.999, so Eq. 9 does not
  stop it): the largest share that keeps at least P %, found from the widths alone (no merge).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence, get_args

import torch

from .errors import IFMError
from .groups import ChannelGroup
from .kmeans import kept_width
from .permute import select_channels

Tensor = torch.Tensor
Allocation = Literal["ifm", "uniform"]
ALLOCATIONS: tuple[str, ...] = get_args(Allocation)
#: β of the uniform allocation: Eq. 9 (min D > β·max D) practically never stops a group, max_ratio does
UNIFORM_BETA = 0.999


@dataclass(frozen=True)
class Budget:
    """How a parameter budget was met: the β and max_ratio used, and the share of parameters kept."""

    beta: float
    max_ratio: float
    params_pct: float
    probes: int  # merges (ifm) or width evaluations (uniform) tried
    max_merges: int | None = None  # ifm: the first merges of the run at ``beta`` that keep the budget


def params_at_widths(state_dict: Mapping[str, Tensor], parameter_keys: Sequence[str],
                     groups: Sequence[ChannelGroup], widths: Mapping[str, int]) -> int:
    """Parameters of the model with each group cut to ``widths[name]`` channels (merging and pruning to the same
    widths give the same count)."""
    keep = {g.name: torch.arange(widths[g.name]) for g in groups if g.name in widths}
    sliced = select_channels(state_dict, groups, keep)
    return sum(sliced[k].numel() for k in parameter_keys)


def uniform_widths(groups: Sequence[ChannelGroup], ratio: float) -> dict[str, int]:
    return {g.name: kept_width(g.width, ratio) for g in groups}


def uniform_budget(state_dict: Mapping[str, Tensor], parameter_keys: Sequence[str], groups: Sequence[ChannelGroup],
                   target_pct: float, steps: int = 40) -> Budget:
    """The largest share of channels merged in every group that keeps at least ``target_pct`` % of the
    parameters."""
    total = sum(state_dict[k].numel() for k in parameter_keys)

    def pct(ratio: float) -> float:
        return 100.0 * params_at_widths(state_dict, parameter_keys, groups, uniform_widths(groups, ratio)) / total

    lo, hi = 0.0, 1.0  # pct(lo) >= target (nothing merged); find the largest ratio still above it
    at_hi = pct(hi)
    if at_hi >= target_pct:
        return Budget(UNIFORM_BETA, 1.0, at_hi, 1)
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if pct(mid) >= target_pct else (lo, mid)
    if lo == 0.0:
        return Budget(UNIFORM_BETA, 1e-9, 100.0, steps)  # no share is small enough to keep the budget: merge none
    return Budget(UNIFORM_BETA, lo, pct(lo), steps)


def ifm_budget(params_pct_at: Callable[[float], float], target_pct: float, tolerance: float = 1e-3,
               max_probes: int = 20, prefix_pct: Callable[[float], Callable[[int], float]] | None = None) -> Budget:
    """The IFM run that keeps at least ``target_pct`` % of the parameters, within one merge of it.

    Bisection over β (``params_pct_at(beta)`` runs one merge) keeps a bracket: ``lo`` at or above the budget,
    ``hi`` below it. Merges can cascade (one more merge makes others possible), so no β may land near the budget;
    then the run at ``hi`` is cut after its first N merges, N the most that keep the budget
    (``prefix_pct(hi)(n)``: the share kept after the first n merges of the run at ``hi``)."""
    lo, hi = 1e-6, UNIFORM_BETA
    at_lo = params_pct_at(lo)
    probes = 1
    if at_lo < target_pct:
        raise IFMError(f"target_params {target_pct:g}: even β {lo:g} keeps only {at_lo:.2f} % of the parameters "
                       "(exact duplicates merge at any β); choose a smaller budget")
    at_hi = params_pct_at(hi)
    probes += 1
    if at_hi >= target_pct:
        return Budget(hi, 1.0, at_hi, probes)
    while hi - lo > tolerance * hi and probes < max_probes:
        mid = (lo + hi) / 2
        at_mid = params_pct_at(mid)
        probes += 1
        if at_mid >= target_pct:
            lo, at_lo = mid, at_mid
        else:
            hi = mid
    if prefix_pct is None:
        return Budget(lo, 1.0, at_lo, probes)
    kept = prefix_pct(hi)
    low, high = 0, 1  # kept(low) >= target; grow high until kept(high) < target, then bisect
    while kept(high) >= target_pct:
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if kept(mid) >= target_pct else (low, mid)
    at_prefix = kept(low)
    if at_prefix > at_lo:  # (the plain β run was closer)
        return Budget(lo, 1.0, at_lo, probes)
    return Budget(hi, 1.0, at_prefix, probes + 1, max_merges=low)
