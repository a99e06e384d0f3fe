"""The entry scripts' command line: the official scripts' argument names (``--model_param``, ``--threshold``,
``--max_ratio``, ``--vgg_name``...), the options beyond the paper (generated from the run description's fields,
:func:`ifm.experiments.run.add_option_arguments`), and :func:`cli`, which runs one self-merge from them. Every bad
input ends in one ``error:`` line and nothing is written."""
from __future__ import annotations

import argparse
from typing import Sequence

from ..discovery import channel_groups, describe_groups
from .cli import cli_main
from .loading import load_model
from ..merge import DTYPES, ORDERS
from .run import DEFAULT_RESULTS, RunSpec, add_option_arguments, from_args
from .selfmerge import format_record, run_self_merge


def add_merge_arguments(parser: argparse.ArgumentParser, dataset: str, family: str) -> None:
    """Arguments shared by the entry scripts (official names first)."""
    p = parser
    p.add_argument("--model_param", default=None, help="checkpoint: a state dict (or wrapped in state_dict/net/model)")
    if dataset == "cifar10":
        if family == "vgg":
            p.add_argument("--vgg_name", default="VGG16", choices=["VGG11", "VGG13", "VGG16", "VGG19"])
        else:
            p.add_argument("--resnet_name", default="ResNet18", choices=["ResNet18", "ResNet34", "ResNet50"])
    elif family == "any":
        p.add_argument("--arch", required=True, help="a torchvision model (mobilenet_v2, densenet121, resnet50...) "
                                                     "or module:callable returning your nn.Module")
        p.add_argument("--input_size", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                       help="input to trace the model with (default 3 224 224; 3 32 32 for CIFAR models)")
        p.add_argument("--list_groups", action="store_true",
                       help="list the channel groups and the frozen spaces (with the reason), then stop")
        p.add_argument("--weights", default=None, help="torchvision weights instead of --model_param, e.g. DEFAULT")
    else:
        default = "vgg16" if family == "vgg" else "resnet50"
        p.add_argument("--arch", default=default, help="torchvision name, e.g. vgg16, vgg16_bn, resnet50")
        p.add_argument("--weights", default=None, help="torchvision weights instead of --model_param, e.g. IMAGENET1K_V1")
    p.add_argument("--threshold", type=float, default=0.1, help="beta of Eq. 9, in (0, 1)")
    p.add_argument("--max_ratio", type=float, default=1.0, help="cap on merges per group, in (0, 1]")
    p.add_argument("--order", default="official", choices=list(ORDERS),
                   help="official: one merge per group per sweep; layerwise: paper Algorithm 1")
    if family in ("resnet", "any"):
        p.add_argument("--stages", type=int, nargs="+", default=None, help="ResNet stages to merge (default: 3 4)")
    p.add_argument("--dtype", default="float64", choices=list(DTYPES), help="distance bookkeeping")
    p.add_argument("--data_root", default="data/cifar10" if dataset == "cifar10" else "data/imagenet")
    if dataset == "cifar10":  # ImageNet cannot be downloaded by torchvision
        p.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 if absent")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--batch_size", type=int, default=64 if dataset == "imagenet" else 256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--eval_samples", type=int, default=None, help="evaluate on N test images spread evenly")
    p.add_argument("--no_eval", action="store_true", help="merge only (IFM needs no data)")
    p.add_argument("--save_merged", default=None, help="write the merged state dict here")
    p.add_argument("--overwrite", action="store_true", help="allow --save_merged to replace a file")
    p.add_argument("--results", default=DEFAULT_RESULTS, help="append one JSON line per run here")
    p.add_argument("--no_progress", action="store_true")


def merge_argument_parser(dataset: str, family: str, spec_type: type = RunSpec,
                          **parser_options) -> argparse.ArgumentParser:
    """A parser with the entry scripts' arguments and the options beyond the paper (those of ``spec_type``)."""
    parser = argparse.ArgumentParser(**parser_options)
    add_merge_arguments(parser, dataset, family)
    add_extension_arguments(parser, spec_type)
    if family == "any":
        parser.set_defaults(merge_rule="auto")
    return parser


def add_extension_arguments(parser: argparse.ArgumentParser, spec_type: type = RunSpec) -> None:
    """Options beyond the paper, one per flagged field of the run description (their defaults keep the official
    behaviour; see :func:`ifm.experiments.run.option`)."""
    add_option_arguments(parser, spec_type)


def cli(dataset: str, family: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``*_self_merge.py`` scripts (``family="any"``: ``scripts/self_merge.py``, any CNN): one
    line on stderr and exit 2 on bad input."""
    what = "any CNN" if family == "any" else f"a {dataset} {family.upper()}"
    parser = merge_argument_parser(dataset, family, description=f"Iterative Feature Merging on {what}")
    args = parser.parse_args(argv)
    spec, options = from_args(args)

    def main() -> None:
        if getattr(args, "list_groups", False):
            print(list_groups(spec))
            return
        record = run_self_merge(spec, options)
        print(format_record(record))
        print(f"results appended to {options.results}")
    return cli_main(main)


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/self_merge.py`` and the ``ifm`` command: IFM on any CNN."""
    return cli("imagenet", "any", argv)


def list_groups(spec: RunSpec) -> str:
    """The channel groups of the run's model and its frozen spaces (``--list_groups``)."""
    loaded = load_model(spec, initialise=True)
    groups = channel_groups(loaded.arch, loaded.state_dict, spec.stages, rule=loaded.merge_rule, graph=loaded.graph)
    text = describe_groups(loaded.graph, groups, loaded.merge_rule, loaded.arch, spec.stages)
    return text + (f"\nmerge rule {loaded.rule_reason}" if loaded.rule_reason else "")
