"""Channel groups: sets of channels that must be merged together.

A group lists the ``(state-dict key, axis)`` pairs it indexes: ``axis 0`` for the producer side
(rows of a conv/linear weight, conv bias, BN parameters and statistics), ``axis 1`` for the
consumer side (input channels of the next conv or linear). Groups are built by one generic
mechanism, :func:`build_groups`, from a *space map*: for every layer (module prefix) the channel
space of its input and output (a group name, or ``None`` for spaces that are not merged).
Per-architecture code only writes small space maps (:func:`chain_spaces`, :func:`resnet_spaces`).

Group order and member order follow the state dict's key order, which reproduces the order of the
official implementation (each group appears when its first tensor is met).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple

import torch

Tensor = torch.Tensor


class Member(NamedTuple):
    """One tensor indexed by a group: its state-dict key, the axis that holds the channel, and ``block``: how many
    consecutive entries of that axis each channel holds (its positions, for a linear reading a flattened conv
    output; else 1)."""

    key: str
    axis: int
    block: int = 1


class Segment(NamedTuple):
    """Entries ``start .. stop`` of a layer's axis that hold the channels of ``space`` (None: not merged): a layer
    reading a concatenation sees several spaces side by side."""

    space: str | None
    start: int
    stop: int


class LayerSpaces(NamedTuple):
    """Channel spaces of one layer: ``in_space`` (axis 1) and ``out_space`` (axis 0); either may be a tuple of
    :class:`Segment` covering the axis (a concatenation). ``averaged``: the layer's parameters (``weight``,
    ``bias``...) that scale each output channel, count-averaged by every merge rule (a depthwise kernel, the
    producer of a gate). ``in_block``: entries of axis 1 per input channel."""

    in_space: str | tuple[Segment, ...] | None
    out_space: str | tuple[Segment, ...] | None
    averaged: tuple[str, ...] = ()
    in_block: int | None = None  # entries of axis 1 per input channel (a traced graph knows it; None: from the shapes)


#: A member that indexes a segment of a tensor's axis is a *virtual* tensor ``key@axis:start:stop`` (the slice of the
#: axis); :func:`split_segments` makes it, :func:`join_segments` puts merged segments back together.
SEGMENT_MARK = "@"


def segment_key(key: str, axis: int, start: int, stop: int) -> str:
    return f"{key}{SEGMENT_MARK}{axis}:{start}:{stop}"


def parse_segment_key(key: str) -> tuple[str, int, int, int] | None:
    """``(key, axis, start, stop)`` of a virtual segment key, else None."""
    base, mark, rest = key.rpartition(SEGMENT_MARK)
    if not mark:
        return None
    axis, start, stop = (int(v) for v in rest.split(":"))
    return base, axis, start, stop


def base_key(key: str) -> str:
    """The state-dict key a (possibly virtual segment) key belongs to."""
    parsed = parse_segment_key(key)
    return parsed[0] if parsed else key


def split_segments(state_dict: Mapping[str, Tensor], groups: Iterable[ChannelGroup]) -> dict[str, Tensor]:
    """``state_dict`` plus a view of each segment the groups' members name (changing a view changes the tensor)."""
    out = dict(state_dict)
    for group in groups:
        for member in group.members:
            parsed = parse_segment_key(member.key)
            if parsed and member.key not in out:
                key, axis, start, stop = parsed
                out[member.key] = state_dict[key].narrow(axis, start, stop - start)
    return out


def channel_slices(tensor: Tensor, axis: int, width: int, channels: Tensor | None = None) -> Tensor:
    """``(len(channels), rest)``: each channel's slice of ``tensor`` along ``axis`` (0: its rows; 1: its columns, a
    row per channel), for ``channels`` (default all ``width``)."""
    if axis == 0:
        rows = tensor.reshape(width, -1)
        return rows if channels is None else rows[channels]
    cols = tensor.reshape(tensor.shape[0], width, -1)
    cols = cols if channels is None else cols[:, channels]
    return cols.transpose(0, 1).reshape(cols.shape[1], -1)


def join_segments(merged: Mapping[str, Tensor], original: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Put the (merged) segments of every split tensor back together along their axis, in ``original``'s key order;
    parts of the axis no segment covers are taken from ``original`` unchanged."""
    pieces: dict[str, list[tuple[int, int, int, str]]] = {}
    for vkey in merged:
        parsed = parse_segment_key(vkey)
        if parsed:
            key, axis, start, stop = parsed
            pieces.setdefault(key, []).append((start, stop, axis, vkey))
    out = {}
    for key, tensor in original.items():
        if key not in pieces:
            out[key] = merged.get(key, tensor)
            continue
        parts, position = [], 0
        segments = sorted(pieces[key])
        axis = segments[0][2]
        for start, stop, _, vkey in segments:
            if start > position:
                parts.append(tensor.narrow(axis, position, start - position))
            parts.append(merged[vkey])
            position = stop
        if position < tensor.shape[axis]:
            parts.append(tensor.narrow(axis, position, tensor.shape[axis] - position))
        out[key] = torch.cat([p.to(parts[-1].dtype) for p in parts], axis)
    return out


@dataclass
class ChannelGroup:
    """A set of interchangeable channels and every ``(key, axis)`` that indexes them."""

    name: str
    width: int
    members: list[Member] = field(default_factory=list)
    #: members that scale each channel (a BN turned affine, a depthwise kernel, a gate's producer): count-averaged
    #: by every merge rule, where the rule would sum the other members on their axis
    averaged: frozenset[str] = frozenset()

    @property
    def layer(self) -> str:
        """The layer whose channels these are: its first member's module (``features.24``)."""
        key = base_key(self.members[0].key)
        return key[: -len(".weight")] if key.endswith(".weight") else key

    def distance_members(self, state_dict: Mapping[str, Tensor]) -> list[Member]:
        """Members that enter Eq. 6: weights with two or more dims (1-D params such as BN are excluded)."""
        return [m for m in self.members if state_dict[m.key].ndim >= 2]


def _layer_of(key: str) -> tuple[str, str]:
    prefix, _, param = key.rpartition(".")
    return prefix, param


def build_groups(state_dict: Mapping[str, Tensor], spaces: Mapping[str, LayerSpaces]) -> list[ChannelGroup]:
    """Build channel groups from a space map, in official order.

    Args:
        state_dict: the model's state dict (its key order fixes group and member order).
        spaces: ``layer prefix -> LayerSpaces``; layers absent from it belong to no group.

    Returns:
        The groups, each with its width and members.
    """
    groups: dict[str, ChannelGroup] = {}
    averaged: dict[str, set[str]] = {}

    def add(key: str, tensor: Tensor, axis: int, space: str | None, average: bool = False,
            block: int | None = None) -> None:
        if space is None:
            return
        width, block = _channels_on_axis(tensor, axis, groups.get(space), block)
        group = groups.setdefault(space, ChannelGroup(space, width))
        if width != group.width or (axis == 1 and tensor.shape[1] != width * block):
            raise ValueError(f"{key} has {tensor.shape[axis]} entries on axis {axis}, but group {space!r} has "
                             f"{group.width} channels (x{block}): the checkpoint does not fit this architecture")
        group.members.append(Member(key, axis, block))
        if average:
            averaged.setdefault(space, set()).add(key)

    for key, tensor in state_dict.items():
        prefix, param = _layer_of(key)
        if prefix not in spaces or tensor.ndim == 0:
            continue
        layer = spaces[prefix]
        in_space = layer.in_space if tensor.ndim >= 2 else None
        if isinstance(in_space, tuple):  # reads a concatenation: one virtual tensor per segment of axis 1
            for seg in in_space:
                part = tensor.narrow(1, seg.start, seg.stop - seg.start)
                vkey = segment_key(key, 1, seg.start, seg.stop)
                add(vkey, part, 0, layer.out_space)
                add(vkey, part, 1, seg.space)
        elif isinstance(layer.out_space, tuple):  # a BN over a concatenation: one per segment of axis 0
            for seg in layer.out_space:
                add(segment_key(key, 0, seg.start, seg.stop), tensor.narrow(0, seg.start, seg.stop - seg.start), 0,
                    seg.space)
        else:
            add(key, tensor, 0, layer.out_space, param in layer.averaged)
            add(key, tensor, 1, in_space, block=layer.in_block)
    for name, keys in averaged.items():
        groups[name].averaged = frozenset(keys)
    for group in groups.values():
        keys_by_axis = {(m.key, m.axis) for m in group.members}
        both = {k for k, a in keys_by_axis if (k, 1 - a) in keys_by_axis}
        if both:
            raise ValueError(f"group {group.name!r} indexes both axes of {sorted(both)}; not supported")
    return list(groups.values())


def _channels_on_axis(tensor: Tensor, axis: int, group: ChannelGroup | None, block: int | None) -> tuple[int, int]:
    """Channels on ``axis`` and entries per channel. A flattened input (conv channels -> linear) holds a block of
    positions per channel: given by a traced graph, else taken from the group's width (hand-written maps)."""
    if axis == 0:
        return int(tensor.shape[0]), 1
    if block is None:
        wide = group is not None and tensor.ndim == 2 and tensor.shape[1] % group.width == 0
        block = tensor.shape[1] // group.width if wide else 1
    return int(tensor.shape[1]) // block, block


def _layers_in_order(state_dict: Mapping[str, Tensor]) -> list[tuple[str, str]]:
    """``(prefix, kind)`` for every conv/linear/BN layer, in state-dict order."""
    layers: list[tuple[str, str]] = []
    for key, tensor in state_dict.items():
        prefix, param = _layer_of(key)
        if param != "weight":
            continue
        if tensor.ndim >= 2:
            layers.append((prefix, "conv" if tensor.ndim == 4 else "linear"))
        elif f"{prefix}.running_mean" in state_dict:
            layers.append((prefix, "bn"))
    return layers


def chain_spaces(state_dict: Mapping[str, Tensor], name_format: str = "perm_{}") -> dict[str, LayerSpaces]:
    """Space map of a plain chain (VGG-like): every conv/linear but the last opens a group.

    BN layers share the space of the layer before them; the final layer's outputs (classes) are
    not merged. Group names follow the official ``perm_features.<idx>`` scheme.
    """
    layers = _layers_in_order(state_dict)
    last_linear = max(i for i, (_, kind) in enumerate(layers) if kind != "bn")
    spaces: dict[str, LayerSpaces] = {}
    current: str | None = None
    for i, (prefix, kind) in enumerate(layers):
        if kind == "bn":
            spaces[prefix] = LayerSpaces(current, current)
            continue
        out = None if i == last_linear else name_format.format(prefix)
        spaces[prefix] = LayerSpaces(current, out)
        current = out
    return spaces


RESNET_OFFICIAL_STAGES: tuple[int, ...] = (3, 4)


def resnet_spaces(state_dict: Mapping[str, Tensor], stages: Iterable[int] = RESNET_OFFICIAL_STAGES
                  ) -> dict[str, LayerSpaces]:
    """Space map of a CIFAR (``shortcut``/``linear``) or torchvision (``downsample``/``fc``) ResNet.

    In each merged stage every block's inner activations (``relu1``, ``relu2`` for bottlenecks) are
    groups, and the whole residual stream of the stage (every block's last conv + BN, the projection
    conv + BN, and all its consumers) is one group named after block 0. By default only stages 3
    and 4 are merged, as in the official code.
    """
    stages = set(stages)
    if not stages <= {1, 2, 3, 4}:
        raise ValueError(f"ResNet stages must be in 1..4, got {sorted(stages)}")
    blocks: dict[int, list[int]] = {}
    for key in state_dict:
        match = re.match(r"layer(\d)\.(\d+)\.", key)
        if match:
            blocks.setdefault(int(match[1]), [])
            if int(match[2]) not in blocks[int(match[1])]:
                blocks[int(match[1])].append(int(match[2]))
    if sorted(blocks) != [1, 2, 3, 4]:
        raise ValueError("state dict has no layer1..layer4 blocks: not a ResNet")
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in state_dict)
    proj = "shortcut" if any(".shortcut." in k for k in state_dict) else "downsample"
    head = "linear" if "linear.weight" in state_dict else "fc"
    inner = ["relu1", "relu2"] if bottleneck else ["relu1"]
    last_conv = len(inner) + 1

    def stream(stage: int) -> str | None:
        return f"layer{stage}.0.relu{last_conv}" if stage in stages else None

    # The stem's output is stage 1's stream when layer1.0 has an identity shortcut.
    stem_out = stream(1) if f"layer1.0.{proj}.0.weight" not in state_dict else None
    spaces = {"conv1": LayerSpaces(None, stem_out), "bn1": LayerSpaces(stem_out, stem_out)}
    previous = stem_out
    for stage in range(1, 5):
        out_stream = stream(stage)
        for b in sorted(blocks[stage]):
            p = f"layer{stage}.{b}"
            block_in = previous if b == 0 else out_stream
            chain = [f"{p}.{r}" if stage in stages else None for r in inner] + [out_stream]
            current = block_in
            for k, space in enumerate(chain, start=1):
                spaces[f"{p}.conv{k}"] = LayerSpaces(current, space)
                spaces[f"{p}.bn{k}"] = LayerSpaces(space, space)
                current = space
            spaces[f"{p}.{proj}.0"] = LayerSpaces(block_in, out_stream)
            spaces[f"{p}.{proj}.1"] = LayerSpaces(out_stream, out_stream)
        previous = out_stream
    spaces[head] = LayerSpaces(previous, None)
    return spaces
