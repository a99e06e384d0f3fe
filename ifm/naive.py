"""The official IFM algorithm written plainly (float64), as an independent reference for the tests and the
benchmark (``scripts/bench_merge.py``): read it to see the whole method in one page.

It follows the official code's behaviour literally (one merge per group per outer iteration, groups in
their given order, a group stopping for that iteration when its closest pair is farther than beta times
its farthest): every visit recomputes the group's full distance matrix from the current weights; the
merged channel is moved to the end; rows are summed and columns take the count-weighted mean.
Deliberately shares no code with the rest of ``ifm``.
"""
from __future__ import annotations

import torch


def naive_distance(params, members, n):
    a = torch.zeros(n, n, dtype=torch.float64)
    for key, axis, *_ in members:
        w = params[key]
        if w.ndim < 2:
            continue
        if axis == 0:
            m = w.reshape(n, -1)
        else:
            m = w.reshape(w.shape[0], n, -1).permute(1, 0, 2).reshape(n, -1)
        a += m @ m.T
    norms = torch.diag(a)[:, None] + torch.diag(a)[None, :]
    d = norms - 2 * a
    d = (d + d.T) / 2
    d[d <= 1e-10 * norms] = 0.0  # documented tie rule: rounding-level distances are exact ties
    return d


def naive_merge(params, members, counts, i, j, n, rule="official", averaged_keys=()):
    """Official rule: rows summed, columns count-weighted; mean rule: rows count-weighted, columns summed;
    ``averaged_keys`` (rows) count-weighted by both."""
    lo, hi = min(i, j), max(i, j)
    order = [k for k in range(n) if k not in (lo, hi)] + [hi, lo]
    c_hi, c_lo = counts[hi], counts[lo]
    for key, axis, *_ in members:
        w = params[key]
        averaged = key in averaged_keys or (axis == 0) == (rule == "mean")
        if axis == 0:
            w = w.reshape(n, -1)[order].clone()
            w[-2] = (w[-2] * c_hi + w[-1] * c_lo) / (c_hi + c_lo) if averaged else w[-2] + w[-1]
            params[key] = w[:-1].reshape(n - 1, *params[key].shape[1:])
        else:
            shape = params[key].shape
            w = w.reshape(shape[0], n, -1)[:, order].clone()
            w[:, -2] = (w[:, -2] * c_hi + w[:, -1] * c_lo) / (c_hi + c_lo) if averaged else w[:, -2] + w[:, -1]
            params[key] = w[:, :-1].reshape(shape[0], shape[1] // n * (n - 1), *shape[2:])
    counts = [counts[k] for k in order]
    counts[-2] += counts[-1]
    return counts[:-1]


class NaiveDeadline(Exception):
    """Raised when ``deadline`` passes; ``visits`` says how many distance matrices were computed."""

    def __init__(self, visits):
        super().__init__(f"deadline passed after {visits} visits")
        self.visits = visits


def naive_ifm(state_dict, groups, beta, max_ratio=1.0, order="official", deadline=None, rule="official"):
    """``groups``: list of (name, width, [(key, axis), ...]) or (name, width, members, averaged keys). Returns
    (params, widths, log).

    ``deadline``: a ``time.perf_counter()`` value after which :class:`NaiveDeadline` is raised.
    """
    import time
    visits = [0]
    params = {k: v.detach().clone().double() for k, v in state_dict.items()}
    averaged = {g[0]: set(g[3]) if len(g) > 3 else set() for g in groups}
    groups = [g[:3] for g in groups]
    widths = {name: n for name, n, _ in groups}
    counts = {name: [1.0] * n for name, n, _ in groups}
    log = []

    def visit(name, members, it):
        n = widths[name]
        if n < 2:
            return False
        if deadline is not None and time.perf_counter() > deadline:
            raise NaiveDeadline(visits[0])
        visits[0] += 1
        d = naive_distance(params, members, n)
        off = ~torch.eye(n, dtype=torch.bool)
        d_min, d_max = d[off].min().item(), d[off].max().item()
        if d_min > beta * d_max:
            return False
        i, j = ((d == d_min) & off).nonzero()[0].tolist()  # first in row-major order
        log.append((it, name, i, j))
        counts[name] = naive_merge(params, members, counts[name], i, j, n, rule, averaged[name])
        widths[name] = n - 1
        return True

    if order == "official":
        it = 0
        while True:
            merged = False
            for name, n0, members in groups:
                if it >= n0 * max_ratio:
                    continue
                merged |= visit(name, members, it)
            it += 1
            if not merged:
                break
    else:
        it = 0
        for name, n0, members in groups:
            k = 0
            while k < n0 * max_ratio and visit(name, members, it):
                k += 1
                it += 1
    return params, widths, log
