"""Channel-group discovery: the groups a merge may touch, traced from a model's graph (:func:`channel_groups`),
checked by permutation (:func:`check_groups`) and described for ``--list_groups`` (:func:`describe_groups`)."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from .architectures import Architecture, get_architecture, model_for_state_dict, module_architecture
from .errors import IFMError
from .groups import ChannelGroup, build_groups
from .trace import TracedGraph, trace_spaces, traced_layer_spaces

Tensor = torch.Tensor


def channel_groups(arch: str | Architecture | nn.Module, state_dict: Mapping[str, Tensor] | None = None,
                   stages: Iterable[int] | None = None, input_size: Sequence[int] = (3, 224, 224),
                   rule: str = "official", graph: TracedGraph | None = None) -> list[ChannelGroup]:
    """Channel groups of ``state_dict`` for ``arch`` (ResNets: ``stages``, default the official (3, 4)) that merge
    ``rule`` may merge (the official rule leaves spaces behind SiLU, GELU... alone; the mean rule merges them).

    ``arch`` may also be any ``nn.Module``: its groups are traced from one forward pass on a
    ``(1, *input_size)`` input, for its own weights unless ``state_dict`` is given. ``graph``: the architecture's
    traced graph, if already at hand (else it is traced now)."""
    if isinstance(arch, nn.Module):
        graph = graph or trace_spaces(arch, input_size)
        return build_groups(arch.state_dict() if state_dict is None else state_dict,
                            traced_layer_spaces(graph, rule=rule))
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    if state_dict is None:
        raise ValueError("channel_groups needs the state dict for an architecture name")
    if stages is not None and not arch.is_resnet:
        raise IFMError(f"stages apply to ResNets only, not {arch.name}")
    if stages is not None and (not list(stages) or not set(stages) <= {1, 2, 3, 4}):
        raise IFMError(f"ResNet stages are 1, 2, 3 and 4; got {list(stages)} (the official choice is 3 4)")
    return build_groups(state_dict, arch.spaces(state_dict, stages, graph, rule))


def check_groups(arch: str | Architecture | nn.Module, state_dict: Mapping[str, Tensor] | None,
                 groups: Sequence[ChannelGroup], seed: int = 0, input_size: Sequence[int] = (3, 224, 224)) -> float:
    """Permute every group's channels at random: the model's output (float64, one random input) must not change,
    else the groups are wrong and :class:`IFMError` says so. Returns the relative change. ``arch`` may be a module
    (its own weights unless ``state_dict``; ``input_size`` for its input)."""
    from .permute import permute_channels
    if isinstance(arch, nn.Module):
        state_dict = arch.state_dict() if state_dict is None else state_dict
        arch = module_architecture(arch, input_size)
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    gen = torch.Generator().manual_seed(seed)
    perms = {g.name: torch.randperm(g.width, generator=gen) for g in groups}
    x = torch.randn(2, *arch.input_size, generator=gen, dtype=torch.float64)
    outputs = []
    for sd in (state_dict, permute_channels(state_dict, groups, perms)):
        model = model_for_state_dict(arch, sd).double().eval()
        with torch.no_grad():
            out = model(x)
        outputs.append(out if isinstance(out, Tensor) else out[0])
    change = float((outputs[0] - outputs[1]).abs().max() / outputs[0].abs().max().clamp_min(1e-30))
    if not change <= 1e-9:
        raise IFMError(f"permuting the channel groups traced from {arch.name} changes its output (by {change:.2g} "
                       "relative): an op the rule table misreads; please report it with the model")
    return change


def describe_groups(graph: TracedGraph, groups: Sequence[ChannelGroup], rule: str = "official",
                    arch: Architecture | None = None, stages: Iterable[int] | None = None) -> str:
    """``--list_groups``: each group with its width and the layers and axes it touches, then the spaces ``arch``'s
    stage choice leaves out, the frozen spaces, each with the reason, and the discovery time."""
    lines = [f"{len(groups)} channel groups under the {rule} merge rule (traced in {graph.seconds:.2f} s):"]
    for g in groups:
        producers = sorted({m.key.rpartition('.')[0] for m in g.members if m.axis == 0})
        consumers = sorted({m.key.rpartition('.')[0] for m in g.members if m.axis == 1})
        averaged = f"; averaged by every rule: {', '.join(sorted(g.averaged))}" if g.averaged else ""
        lines.append(f"  {g.name}  width {g.width}: rows of {', '.join(producers)}; "
                     f"columns of {', '.join(consumers) or '-'}{averaged}")
    if arch is not None:
        left = [(ps[0], graph.spaces[root].width, arch.left_out(ps, stages)) for root, ps in graph.producers(rule).items()
                if arch.left_out(ps, stages)]
        if left:
            lines.append(f"{len(left)} spaces left out (mergeable, not merged with this choice):")
            lines += [f"  {producer}  width {width}: {reason}" for producer, width, reason in left]
    frozen = [(s.producer, s.width, graph.frozen_reason(s.id, rule)) for s in graph.spaces
              if s.producer and graph.frozen_reason(s.id, rule)]
    lines.append(f"{len(frozen)} frozen spaces (never merged):")
    lines += [f"  {producer}  width {width}: {reason}" for producer, width, reason in frozen]
    return "\n".join(lines)
