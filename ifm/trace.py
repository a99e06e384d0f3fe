"""Channel spaces of any CNN, found by recording one forward pass.

The model runs once on an example input (on the ``meta`` device: no arithmetic, no memory) under a
:class:`~torch.overrides.TorchFunctionMode` that sees every torch call. Beside each activation it keeps
the *labels* of its dim-1 entries: which channel space, and which channel of it, each entry holds. The
rule table:

* ``conv2d`` (``groups == 1``) and ``linear`` open a new space for their outputs and record the space
  of their input (a linear after ``flatten`` sees each channel as a block of positions);
* channel-wise ops pass the labels through: batch norm (whose parameters join the space), activations,
  pooling, dropout, padding, resizing, reductions over spatial dims, ``flatten`` (labels repeated per
  position);
* ``add``/``sub`` of two activations (residual streams) unite the spaces of their operands, and so does an
  elementwise product. When one factor is broadcast over the other's positions (a squeeze-and-excitation
  gate), it is the *gate*: its producer joins the gated group with its parameters averaged by every merge
  rule (the gate of a merged channel is then the duplicates' gate, whatever its activation; a gate that a
  layer also reads is merged by the mean rule only); a product of two full activations too;
* a depthwise conv passes its input's space through; its kernels join that space as per-channel members,
  averaged by every merge rule (its bias follows the producer's rows);
* ``cat`` along dim 1 puts spaces side by side: a conv, linear or BN reading it has one segment per space
  (a *virtual* tensor per segment, :func:`ifm.groups.split_segments`);
* everything else that takes an activation — grouped convs, channel-indexed parameters used outside a conv/linear/BN (layer scales),
  reshapes that split channels, permutes, normalisations over channels, attention — *freezes* the
  spaces involved, with the reason: they are never merged (never a wrong merge). The model's output
  space is frozen too.

The result is a space map (``layer prefix -> LayerSpaces``) that :func:`ifm.groups.build_groups` turns
into channel groups, as for the hand-written maps.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import IFMError
from .groups import LayerSpaces, Segment

Tensor = torch.Tensor

#: ops that act on each channel separately (same dim-1 size in and out): labels pass through
CHANNELWISE = frozenset("""
relu relu_ relu6 hardtanh hardtanh_ leaky_relu leaky_relu_ elu elu_ selu celu gelu silu silu_ mish hardswish
hardswish_ sigmoid sigmoid_ hardsigmoid tanh tanh_ softplus
dropout dropout_ dropout1d dropout2d dropout3d feature_dropout alpha_dropout feature_alpha_dropout
max_pool1d max_pool2d max_pool3d _max_pool2d max_pool2d_with_indices avg_pool1d avg_pool2d avg_pool3d
adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool2d _adaptive_max_pool2d
adaptive_max_pool2d_with_indices lp_pool2d pad interpolate upsample upsample_nearest upsample_bilinear
contiguous clone to float double half type_as detach requires_grad_ __getitem__
""".split())
#: channel-wise activations that are not positively homogeneous (f(2z) != 2 f(z)): summing the producing rows
#: of two duplicates (the official rule) changes what the consumers see, so these spaces are frozen under it
NON_HOMOGENEOUS = frozenset("""
relu6 hardtanh hardtanh_ elu elu_ selu celu gelu silu silu_ mish hardswish hardswish_ sigmoid sigmoid_ hardsigmoid
tanh tanh_ softplus
""".split())
#: reductions that keep dim 1 when they reduce other dims
REDUCTIONS = frozenset("mean sum amax amin max min".split())
#: elementwise ops whose two activation operands must hold the same channels (their spaces unite)
UNITING = frozenset("add add_ __add__ __iadd__ __radd__ sub sub_ __sub__ __isub__ __rsub__".split())
#: elementwise products of two activations: their channel-aligned spaces unite. A factor broadcast over the other's
#: positions is a gate (squeeze-and-excitation): its producer joins the gated group, averaged by every rule; a
#: product of two full activations keeps its function only under the mean rule
PRODUCTS = frozenset("mul mul_ __mul__ __imul__ __rmul__".split())
#: concatenations: along dim 1 they put spaces side by side (their consumers read segments)
CONCATENATIONS = frozenset("cat concat concatenate".split())
#: arithmetic that, with a number (or a one-element tensor) as the other operand, treats every channel alike
SCALAR_ARITHMETIC = UNITING | frozenset("mul mul_ __mul__ __imul__ __rmul__ div div_ __truediv__ __itruediv__".split())
#: results of these carry no activation (sizes, flags)
IGNORED = frozenset("dim size numel __len__ __bool__ __format__ __repr__ is_floating_point zeros ones".split())


@dataclass
class Space:
    """A channel space: the outputs of one conv/linear (or the input), possibly united with others."""
    id: int
    producer: str | None  # layer prefix, None for the input
    width: int
    frozen: str | None = None  # why its channels may not be merged
    activation: str | None = None  # a channel-wise activation it passes through that is not positively homogeneous
    depthwise: str | None = None  # a depthwise conv it passes through (its kernels are per-channel members)
    product: str | None = None  # an elementwise product of two full activations it takes part in
    gate: str | None = None  # the product it gates (broadcast over the other factor): its producers are averaged


@dataclass
class Labels:
    """Which space and channel each entry of an activation's channel dim holds: dim 1, or the last dim of a
    channels-last block (after a permute)."""
    space: np.ndarray
    index: np.ndarray
    dim: int = 1

    def moved(self, dim: int) -> "Labels":
        return Labels(self.space, self.index, dim)

    def plain(self) -> tuple[int, int] | None:
        """``(space, block)`` when the entries are one space's channels in order, each repeated ``block``
        times (a flattened conv output), else None."""
        if len(self.space) == 0 or (self.space != self.space[0]).any():
            return None
        channels = int(self.index.max()) + 1
        if len(self.index) % channels:
            return None
        block = len(self.index) // channels
        if not np.array_equal(self.index, np.repeat(np.arange(channels), block)):
            return None
        return int(self.space[0]), block


@dataclass
class TracedGraph:
    """What one forward pass showed: the spaces, each layer's input and output space, and timing."""
    spaces: list[Space]
    parent: list[int]
    layers: dict[str, tuple[Any, Any, str]]  # prefix -> (in space, out space, kind); a space may be segments
    batch_norms: dict[str, tuple[str | None, float]] = field(default_factory=dict)  # prefix -> (producer, eps)
    in_blocks: dict[str, int] = field(default_factory=dict)  # conv/linear prefix -> entries per input channel
    seconds: float = 0.0
    _reasons: dict = field(default_factory=dict, init=False, repr=False)  # rule -> {root: reason}, made once

    def root(self, space: int) -> int:
        return _root(self.parent, space)

    def frozen_reason(self, space: int, rule: str = "official") -> str | None:
        """Why the united space of ``space`` is frozen under merge ``rule`` (None: it may be merged). Under the
        official rule, a space that passes through an activation that is not positively homogeneous is frozen:
        summing the producing rows of two duplicates changes what its consumers see."""
        if rule not in self._reasons:
            frozen: dict[int, str] = {}
            official: list[dict[int, str]] = [{}, {}, {}]  # reasons only the official rule has, in priority order
            for prefix, (read, _, kind) in self.layers.items():
                if kind in ("conv", "linear") and isinstance(read, int) and self.spaces[read].gate:
                    official[2].setdefault(self.root(read), f"{prefix} reads a gate, which the official rule averages "
                                                            "(its readers would need summed columns; use --merge_rule "
                                                            "mean)")
            for s in self.spaces:
                root = self.root(s.id)
                if s.frozen:
                    frozen.setdefault(root, s.frozen)
                if s.activation and not s.gate:  # (a gate's producer is averaged: any activation keeps its value)
                    official[0].setdefault(root, f"passes through {s.activation}: the official merge rule keeps a "
                                                 "model's function only through ReLU-like activations (use "
                                                 "--merge_rule mean)")
                if s.product:
                    official[1].setdefault(root, f"is multiplied with another full activation ({s.product}): the "
                                                 "official rule would sum both factors (use --merge_rule mean)")
            reasons = dict(frozen)
            if rule == "official":
                for by_root in official:
                    for root, reason in by_root.items():
                        reasons.setdefault(root, reason)
            self._reasons[rule] = reasons
        return self._reasons[rule].get(self.root(space))

    @property
    def activations(self) -> list[str]:
        """What only the mean rule can merge without changing the function, among spaces it could merge: activations
        that are not positively homogeneous (outside gates), products of two full activations."""
        found = set()
        for s in self.spaces:
            if not self.frozen_reason(s.id, "mean"):
                found |= {s.activation} if s.activation and not s.gate else set()
                found |= {"products of activations"} if s.product else set()
        return sorted(found)

    def averaged_params(self, prefix: str) -> tuple[str, ...]:
        """The parameters of layer ``prefix`` that every merge rule count-averages: all of a gate's producer (and
        of a BN on the gate's path), a depthwise conv's kernel."""
        _, out, kind = self.layers[prefix]
        if isinstance(out, int) and self.spaces[out].gate:
            return ("weight", "bias", "running_mean", "running_var")
        return ("weight",) if kind == "depthwise" else ()

    def producers(self, rule: str = "official") -> dict[int, list[str]]:
        """Every space ``rule`` may merge (by its root) with the conv/linear layers producing it, in execution
        order."""
        found: dict[int, list[str]] = {}
        for prefix, (_, out) in self.space_map(rule).items():
            if out is not None and self.layers[prefix][2] in ("conv", "linear"):
                found.setdefault(out, []).append(prefix)
        return found

    def space_map(self, rule: str = "official") -> dict[str, tuple[Any, Any]]:
        """``prefix -> (in root, out root)`` with spaces frozen under ``rule`` as None; a layer reading a
        concatenation has a tuple of ``(root, start, stop)`` segments instead of one root."""
        def live(space):
            if isinstance(space, tuple):
                return tuple((live(sid), start, stop) for sid, start, stop in space)
            return None if space is None or self.frozen_reason(space, rule) else self.root(space)
        return {prefix: (live(i), live(o)) for prefix, (i, o, _) in self.layers.items()}


class _Recorder(TorchFunctionMode):
    """Records labels of activations and the rule table's verdicts during one forward pass."""

    def __init__(self, param_names: Mapping[int, str]):
        super().__init__()
        self.param_names = dict(param_names)
        self.spaces: list[Space] = []
        self.parent: list[int] = []
        self.labels: dict[int, Labels] = {}
        self.alive: list[Tensor] = []  # keeps labelled tensors alive, so their ids stay unique
        self.layers: dict[str, tuple[int | None, int | None, str]] = {}
        self.outputs: dict[int, str] = {}  # id of a conv/linear output -> its layer (a BN right after it folds)
        self.batch_norms: dict[str, tuple[str | None, float]] = {}
        self.in_blocks: dict[str, int] = {}

    # ------------------------------------------------------------------ spaces
    def new_space(self, producer: str | None, width: int, frozen: str | None = None) -> int:
        sid = len(self.spaces)
        self.spaces.append(Space(sid, producer, width, frozen))
        self.parent.append(sid)
        return sid

    def root(self, sid: int) -> int:
        return _root(self.parent, sid)

    def unite(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def freeze(self, labels: Labels | None, reason: str) -> None:
        if labels is None:
            return
        for sid in np.unique(labels.space):
            space = self.spaces[int(sid)]
            if space.frozen is None:
                space.frozen = reason

    def set_labels(self, tensor: Any, labels: Labels) -> None:
        if isinstance(tensor, Tensor) and tensor.dim() > labels.dim and tensor.shape[labels.dim] == len(labels.space):
            self.labels[id(tensor)] = labels
            self.alive.append(tensor)

    def labels_of(self, tensor: Any) -> Labels | None:
        return self.labels.get(id(tensor)) if isinstance(tensor, Tensor) else None

    def fresh(self, producer: str | None, width: int, frozen: str | None = None) -> Labels:
        sid = self.new_space(producer, width, frozen)
        return Labels(np.full(width, sid), np.arange(width))

    # ------------------------------------------------------------------ the mode
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name not in IGNORED and any(isinstance(t, Tensor) for t in _flatten_args((out,), {})):
            self.record(name, args, kwargs, out)  # (calls that return no tensor, such as .shape, change nothing)
        return out

    def record(self, name: str, args: Sequence, kwargs: Mapping, out: Any) -> None:
        flat = [a for a in _flatten_args(args, kwargs) if isinstance(a, Tensor)]
        acts = [(a, labels) for a in flat if (labels := self.labels_of(a)) is not None]
        params = [self.param_names[id(a)] for a in flat if id(a) in self.param_names]
        if name in ("conv2d", "conv1d", "conv3d", "linear") and acts and params:
            self.weighted_layer(name, args, kwargs, acts[0], params, out)
        elif name == "batch_norm" and acts:
            self.batch_norm(acts[0], params, out, _arg(args, kwargs, 7, "eps", 1e-5))
        elif not acts:
            return  # no activation involved (constants, parameters combined among themselves)
        elif name in CONCATENATIONS and not params and self.concatenates(args, kwargs, acts, out):
            self.set_labels(out, Labels(np.concatenate([self.labels_of(t).space for t in args[0]]),
                                        np.concatenate([self.labels_of(t).index for t in args[0]])))
        elif name in (UNITING | PRODUCTS) and len(acts) == 2 and not params:
            self.uniting(name, acts, out)
        elif len(acts) == 1 and not params and name in SCALAR_ARITHMETIC and len(flat) == 1 + sum(
                t.numel() == 1 for t in flat if t is not acts[0][0]) and isinstance(out, Tensor) \
                and out.shape == acts[0][0].shape:  # x * 0.5, x + 3: every channel alike
            self.set_labels(out, acts[0][1])
        elif len(acts) == 1 and not params and (passed := self.passes_through(name, acts[0], args, kwargs, out)):
            if name in NON_HOMOGENEOUS:
                for sid in np.unique(acts[0][1].space):
                    space = self.spaces[int(sid)]
                    space.activation = space.activation or _activation_name(name, args, kwargs)
            self.set_labels(out, passed)
        elif len(acts) == 1 and not params and name in ("flatten", "view", "reshape") and acts[0][1].dim == 1 \
                and self.flattens(acts[0][0], out):
            labels = acts[0][1]
            block = int(np.prod(acts[0][0].shape[2:])) if acts[0][0].dim() > 2 else 1
            self.set_labels(out, Labels(np.repeat(labels.space, block), np.repeat(labels.index, block)))
        else:
            what = f"{name}" + (f" with {', '.join(params[:2])}" if params else "")
            for _, labels in acts:
                self.freeze(labels, f"used by {what}, which mixes or indexes channels in a way the rule table "
                                    "does not know")
            for tensor in _flatten_args((out,), {}):
                if isinstance(tensor, Tensor) and tensor.dim() >= 2:
                    self.set_labels(tensor, self.fresh(None, tensor.shape[1], f"produced by {name}"))

    def weighted_layer(self, name, args, kwargs, act, params, out) -> None:
        tensor, labels = act
        weight = next((p for p in params if p.endswith("weight")), params[0])
        prefix = weight.rpartition(".")[0]
        groups = _arg(args, kwargs, 6, "groups", 1) if name.startswith("conv") else 1
        channel_dim = tensor.dim() - 1 if name == "linear" else 1  # a linear reads the last dim (channels-last)
        if groups != 1:  # (whatever dim the labels are on: a grouped conv never opens a space of its own)
            plain = labels.plain() if labels.dim == channel_dim else None
            if groups == tensor.shape[1] == out.shape[1] and plain is not None and plain[1] == 1:
                # depthwise: each channel filtered alone; its kernel (and bias) is one more per-channel member
                space = self.spaces[plain[0]]
                space.depthwise = space.depthwise or prefix
                self.layers[prefix] = (None, plain[0], "depthwise")
                self.set_labels(out, labels)
                return
            kind = "depthwise" if groups == tensor.shape[1] == out.shape[1] else "grouped"
            self.freeze(labels, f"{prefix}: a {kind} conv (groups={groups}) reads it")
            self.layers[prefix] = (None, None, kind)
            self.set_labels(out, self.fresh(prefix, out.shape[1], f"{prefix}: output of a {kind} conv"))
            return
        if labels.dim != channel_dim:
            self.freeze(labels, f"{prefix} reads another dim than the one holding these channels")
            in_space = None
        else:
            plain = labels.plain()
            in_space = self.segments(labels, prefix) if plain is None else plain[0]
            if plain is not None:
                self.in_blocks[prefix] = plain[1]
        out_labels = self.fresh(prefix, out.shape[channel_dim]).moved(channel_dim)
        self.layers[prefix] = (in_space, int(out_labels.space[0]), "conv" if name.startswith("conv") else "linear")
        self.set_labels(out, out_labels)
        self.outputs[id(out)] = prefix

    def batch_norm(self, act, params, out, eps: float) -> None:
        tensor, labels = act
        plain = labels.plain()
        prefix = params[0].rpartition(".")[0] if params else None
        if prefix:
            self.batch_norms[prefix] = (self.outputs.get(id(tensor)), float(eps))
        if labels.dim != 1:
            self.freeze(labels, f"{prefix or 'a batch norm'} normalises another dim than the channels'")
            if prefix:
                self.layers[prefix] = (None, None, "bn")
        elif plain is None and prefix:  # over a concatenation: each segment's parameters join its space
            segments = self.segments(labels, prefix)
            self.layers[prefix] = (segments, segments, "bn")
        elif plain is None or plain[1] != 1:
            self.freeze(labels, f"{prefix or 'a batch norm'} normalises several spaces at once")
            if prefix:
                self.layers[prefix] = (None, None, "bn")
        elif prefix:
            self.layers[prefix] = (plain[0], plain[0], "bn")
        self.set_labels(out, labels)

    def uniting(self, name, acts, out) -> None:
        (a, la), (b, lb) = acts
        pa, pb = la.plain(), lb.plain()
        if la.dim != lb.dim or a.dim() != b.dim() or pa is None or pb is None or pa[1] != pb[1] \
                or a.shape[la.dim] != b.shape[lb.dim]:
            self.freeze(la, f"{name} of activations whose channels do not line up")
            self.freeze(lb, f"{name} of activations whose channels do not line up")
            self.set_labels(out, self.fresh(None, out.shape[1], f"produced by {name} of misaligned channels"))
            return
        gated = la
        if name in PRODUCTS:
            gate = pb[0] if _broadcast_over(b, a, lb.dim) else pa[0] if _broadcast_over(a, b, la.dim) else None
            if gate is not None and self.root(pa[0]) != self.root(pb[0]):
                gated = lb if gate == pa[0] else la  # (the product carries the gated activation's labels on)
                root = self.root(gate)  # the gate's whole (united) space: its producers are averaged
                for space in self.spaces:
                    if self.root(space.id) == root:
                        space.gate = space.gate or name.strip("_")
            else:  # two full activations (or one space times itself): merged by the mean rule only
                for sid in (pa[0], pb[0]):
                    self.spaces[sid].product = self.spaces[sid].product or name.strip("_")
        self.unite(pa[0], pb[0])
        self.set_labels(out, gated)

    def segments(self, labels: Labels, reader: str) -> tuple[tuple[int | None, int, int], ...]:
        """A concatenation read by ``reader``: runs of whole spaces, as ``(space, start, stop)`` entries of dim 1; a
        run that is not one whole space in order (a split, a shuffle) is frozen and has space None."""
        runs, start, n = [], 0, len(labels.space)
        while start < n:
            stop = start
            while stop < n and labels.space[stop] == labels.space[start]:
                stop += 1
            run = Labels(labels.space[start:stop], labels.index[start:stop])
            sid = int(labels.space[start])
            plain = run.plain()
            if plain is None or (stop - start) // plain[1] != self.spaces[sid].width:
                self.freeze(run, f"{reader} reads part of it, or its channels out of order")
                runs.append((None, start, stop))
            else:
                runs.append((sid, start, stop))
            start = stop
        return tuple(runs)

    def concatenates(self, args, kwargs, acts, out) -> bool:
        """``torch.cat`` of labelled activations along dim 1 (channels-first)."""
        tensors = args[0] if args else kwargs.get("tensors", ())
        dim = _arg(args, kwargs, 1, "dim", 0)
        return (isinstance(out, Tensor) and out.dim() >= 2 and dim % out.dim() == 1 and len(tensors) == len(acts)
                and all(self.labels_of(t) is not None and self.labels_of(t).dim == 1 for t in tensors))

    @staticmethod
    def passes_through(name, act, args, kwargs, out) -> Labels | None:
        """The labels of ``out`` if ``name`` acts on each channel alone (None otherwise): channel-wise ops, reductions
        over other dims, permutes (which move the channel dim)."""
        tensor, labels = act
        d = labels.dim
        if not isinstance(out, Tensor):
            return None
        if name == "permute":
            dims = args[1:] if len(args) > 1 and isinstance(args[1], int) else _arg(args, kwargs, 1, "dims", ())
            dims = [v % tensor.dim() for v in dims]
            return labels.moved(dims.index(d)) if len(dims) == tensor.dim() and d in dims else None
        if name in REDUCTIONS:
            dims = _arg(args, kwargs, 1, "dim", None)
            dims = [dims] if isinstance(dims, int) else dims
            if dims is None or not all(isinstance(v, int) for v in dims):
                return None
            dims = [v % tensor.dim() for v in dims]
            if d in dims:
                return None
            keep = _arg(args, kwargs, 2, "keepdim", False)
            new = d if keep else d - sum(v < d for v in dims)
            return labels.moved(new) if out.dim() > new and out.shape[new] == tensor.shape[d] else None
        if out.dim() != tensor.dim() or out.shape[d] != tensor.shape[d]:
            return None
        if name in CHANNELWISE:
            if name == "__getitem__":  # indexing that keeps dims 0 .. d whole
                index = args[1] if len(args) > 1 else None
                index = index if isinstance(index, tuple) else (index,)
                return labels if len(index) > d and all(i == slice(None) for i in index[:d + 1]) else None
            return labels
        return None

    @staticmethod
    def flattens(tensor, out) -> bool:
        return isinstance(out, Tensor) and out.dim() == 2 and out.shape[1] == int(np.prod(tensor.shape[1:])) \
            and out.shape[0] == tensor.shape[0]


def _broadcast_over(gate: Tensor, other: Tensor, channel_dim: int) -> bool:
    """``gate`` holds one value per (sample, channel) that an elementwise product spreads over ``other``'s positions
    (a squeeze-and-excitation gate): its size is 1 on every other dim where ``other``'s is not."""
    rest = [d for d in range(gate.dim()) if d not in (0, channel_dim)]
    return all(gate.shape[d] == 1 for d in rest) and any(other.shape[d] > 1 for d in rest)


def _root(parent: list[int], space: int) -> int:
    """The representative of ``space``'s united spaces (union-find with path halving)."""
    while parent[space] != space:
        parent[space] = parent[parent[space]]
        space = parent[space]
    return space


def _activation_name(name: str, args, kwargs) -> str:
    """What users call the activation ``name`` (``F.relu6`` runs as ``hardtanh(x, 0, 6)``: named ReLU6)."""
    name = name.rstrip("_")
    if name == "hardtanh" and (_arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)) == (0, 6):
        return "ReLU6"
    return name


def _arg(args, kwargs, position: int, name: str, default):
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def _flatten_args(args, kwargs) -> list:
    out = []
    stack = list(args) + list(kwargs.values())
    while stack:
        item = stack.pop(0)
        if isinstance(item, (list, tuple)):
            stack[:0] = list(item)
        else:
            out.append(item)
    return out


def trace_spaces(model: nn.Module, input_size: Sequence[int] = (3, 224, 224),
                 example: Callable[[], Any] | None = None) -> TracedGraph:
    """Record ``model``'s channel spaces from one forward pass on a ``(1, *input_size)`` input (on the meta
    device when the model's parameters can be moved there; the model itself is not changed)."""
    start = time.perf_counter()
    try:
        traced = copy.deepcopy(model).to("meta").eval()
        device = torch.device("meta")
    except Exception:  # (a module that cannot live on the meta device)
        traced = copy.deepcopy(model).eval()
        device = next((p.device for p in traced.parameters()), torch.device("cpu"))
    names = {id(t): n for n, t in list(traced.named_parameters()) + list(traced.named_buffers())}
    recorder = _Recorder(names)
    dtype = next((p.dtype for p in traced.parameters() if p.is_floating_point()), torch.float32)
    x = example() if example is not None else torch.zeros(1, *input_size, device=device, dtype=dtype)
    recorder.set_labels(x, recorder.fresh(None, x.shape[1], "the model's input"))
    try:
        with torch.no_grad(), recorder:
            out = traced(x)
    except Exception as exc:
        raise IFMError(f"cannot run {type(model).__name__} on a {tuple(x.shape)} input to find its channels: "
                       f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                       "(pass the input size the model expects)") from None
    for tensor in _flatten_args((out,), {}):
        recorder.freeze(recorder.labels_of(tensor), "the model's output")
    for prefix, (in_space, out_space, kind) in recorder.layers.items():
        inputs = [sid for sid, _, _ in in_space] if isinstance(in_space, tuple) else [in_space]
        if kind in ("conv", "linear") and any(sid is not None and recorder.root(sid) == recorder.root(out_space)
                                              for sid in inputs):
            space = recorder.spaces[out_space]
            space.frozen = space.frozen or (f"{prefix} reads and writes these same channels (a residual around "
                                            "one layer): one group cannot index both axes of a weight")
    return TracedGraph(recorder.spaces, recorder.parent, recorder.layers, recorder.batch_norms, recorder.in_blocks,
                       time.perf_counter() - start)


def traced_layer_spaces(graph: TracedGraph, name: Callable[[list[str]], str] | None = None,
                        keep: Callable[[list[str]], bool] | None = None, rule: str = "official"
                        ) -> dict[str, LayerSpaces]:
    """The space map of a traced graph for merge ``rule``. Each merged space is named by ``name(producers)`` (its
    producing layers in execution order; default: the first one) and merged only if ``keep(producers)``."""
    space_map = graph.space_map(rule)
    names = {root: (name or (lambda ps: ps[0]))(ps) for root, ps in graph.producers(rule).items()
             if keep is None or keep(ps)}

    def label(root):
        if isinstance(root, tuple):
            return tuple(Segment(label(sid), start, stop) for sid, start, stop in root)
        return None if root is None else names.get(root)
    return {prefix: LayerSpaces(label(i), label(o), graph.averaged_params(prefix), graph.in_blocks.get(prefix))
            for prefix, (i, o) in space_map.items()}
