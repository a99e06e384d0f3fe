"""Reproduce the paper's figures and tables. One subcommand per item; outputs go to ``--out``.

    python scripts/reproduce.py fig3a  --results results/sweep.jsonl            # also Fig. 4(a), 4(b)
    python scripts/reproduce.py fig3b  --results results/sweep.jsonl
    python scripts/reproduce.py fig5a  --results results/sweep.jsonl --beta 0.1
    python scripts/reproduce.py fig2a  --arch VGG16 --model_param ckpt.pt --layers last   # Fig. 7: --layers first12
    python scripts/reproduce.py fig2b  --arch VGG16 --model_param ckpt.pt --data_root data/cifar10 --betas 0.1
    python scripts/reproduce.py table2 --device cpu
    python scripts/reproduce.py guided --arch VGG16 --model_param ckpt.pt --data_root data/cifar10 --layer features.24
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ifm import figures  # noqa: E402
from ifm import data as datasets  # noqa: E402
from ifm.archs import channel_groups, get_architecture, model_for_state_dict  # noqa: E402
from ifm.errors import IFMError  # noqa: E402
from ifm.io import load_state_dict_file, read_jsonl, write_csv, write_json  # noqa: E402
from ifm.merge import iterative_feature_merging  # noqa: E402
from ifm.plots import plot_accuracy_vs_params  # noqa: E402
from ifm.selfmerge import Evaluator, load_model, pick_device  # noqa: E402


def _curves(results: str, method: str = "ifm") -> dict[str, list[dict]]:
    records = [r for r in read_jsonl(results) if r.get("method", "ifm") == method and r.get("acc_after") is not None]
    if not records:
        raise IFMError(f"no evaluated records in {results}: run scripts/sweep.py first")
    by_run: dict[tuple, dict[float, dict]] = defaultdict(dict)
    for r in records:
        by_run[(r["model"], r["checkpoint"])][r["beta"]] = r  # the last record of a beta wins
    models = defaultdict(int)
    for model, _ in by_run:
        models[model] += 1
    return {(m if models[m] == 1 else f"{m} ({Path(c).stem})"): sorted(v.values(), key=lambda r: r["beta"])
            for (m, c), v in by_run.items()}


def cmd_fig3a(args) -> None:
    curves = _curves(args.results)
    path = plot_accuracy_vs_params(curves, Path(args.out) / f"{args.name}.png", title=args.title)
    for label, records in curves.items():
        print(label + ": " + ", ".join(f"β={r['beta']:g} {r['params_pct']:.1f}% {r['acc_after']:.2f}%" for r in records))
    print(f"figure: {path}")


def cmd_fig3b(args) -> None:
    choices = {}
    print(f"{'model':24s} {'beta':>6} {'params':>12} {'params %':>9} {'acc before':>11} {'acc after':>10}")
    rows = []
    for label, records in _curves(args.results).items():
        chosen = figures.largest_beta_within(records, args.fraction)
        if chosen is None:
            print(f"{label:24s} no β keeps {100 * args.fraction:.0f}% of the original accuracy")
            continue
        choices[label] = chosen
        rows.append((label, chosen["beta"], chosen["params_after"], chosen["params_pct"], chosen["acc_before"],
                     chosen["acc_after"]))
        print(f"{label:24s} {chosen['beta']:>6g} {chosen['params_after']:>12,d} {chosen['params_pct']:>9.2f} "
              f"{chosen['acc_before']:>11.2f} {chosen['acc_after']:>10.2f}")
    write_csv(Path(args.out) / "fig3b.csv", ["model", "beta", "params", "params_pct", "acc_before",
                                                     "acc_after"], rows)
    print(f"figure: {figures.plot_accuracy_vs_count(choices, Path(args.out) / 'fig3b.png')}")


def cmd_fig5a(args) -> None:
    widths = {}
    for label, records in _curves(args.results).items():
        match = [r for r in records if abs(r["beta"] - args.beta) < 1e-12]
        if match:
            widths[label] = match[-1]["widths"]
    if not widths:
        raise IFMError(f"no record at beta={args.beta} in {args.results}: sweep that beta first")
    for label, w in widths.items():
        print(f"{label}: {list(w.values())}")
    path = figures.plot_feature_complexity(widths, Path(args.out) / "fig5a.png", args.beta)
    print(f"figure: {path} (and {path.with_suffix('.csv')})")


def _state_dict(args) -> tuple[str, dict]:
    get_architecture(args.arch)
    return args.arch, load_state_dict_file(args.model_param)


def cmd_fig2a(args) -> None:
    arch, sd = _state_dict(args)
    n_groups = len(channel_groups(arch, sd))
    layers = {"last": [n_groups - 1], "first12": list(range(min(12, n_groups))), "all": list(range(n_groups))}.get(
        args.layers) or [int(v) for v in args.layers.split(",")]
    matrices = figures.normalized_distances(sd, arch, layers)
    for name, m in matrices.items():
        off = m[~torch.eye(m.shape[0], dtype=torch.bool)]
        print(f"{name}: {m.shape[0]} features, normalised distance min {off.min():.3g} median {off.median():.3g}")
    name = "fig2a" if args.layers == "last" else "fig7" if args.layers == "first12" else "distances"
    print(f"figure: {figures.plot_heatmaps(matrices, Path(args.out) / f'{name}.png')}")


def _loaded_and_evaluator(args):
    ns = argparse.Namespace(arch=args.arch, model_param=args.model_param, weights=None, data_root=args.data_root,
                            download=False, eval_samples=args.eval_samples, batch_size=256, workers=2,
                            no_progress=args.no_progress)
    loaded = load_model(ns)
    return loaded, Evaluator(loaded, ns, pick_device(args.device))


def cmd_fig2b(args) -> None:
    loaded, evaluator = _loaded_and_evaluator(args)
    lambdas = [float(v) for v in args.lambdas.split(",")]
    curves = []
    for beta in args.betas:
        curve = figures.fig2b(loaded.state_dict, loaded.arch.name, beta, lambdas,
                              lambda m: evaluator(m, "interpolating").accuracy, args.seed)
        curves.append(curve)
        print(f"β={beta:g}: {curve['moved_features']} equivalent features moved")
        print("  λ       " + " ".join(f"{v:7.2f}" for v in lambdas))
        print("  equiv.  " + " ".join(f"{v:7.2f}" for v in curve["equivalent"]))
        print("  random  " + " ".join(f"{v:7.2f}" for v in curve["random"]))
    write_json(Path(args.out) / "fig2b.json", curves)
    print(f"figure: {figures.plot_interpolation(curves, Path(args.out) / 'fig2b.png')}")


TABLE2_MODELS = ["cifar10:VGG13", "cifar10:VGG16", "cifar10:ResNet18", "cifar10:ResNet50",
                 "imagenet:vgg13", "imagenet:vgg16", "imagenet:vgg19", "imagenet:resnet18", "imagenet:resnet50"]


def cmd_table2(args) -> None:
    device = str(pick_device(args.device))
    rows = []
    print(f"device: {device}, β={args.beta}; weights: {'random init' if not args.model_param else args.model_param}")
    print(f"{'dataset':9s} {'model':9s} {'paper 2080Ti s/it':>18s} {'naive s/it':>11s} {'ours s/it':>10s} "
          f"{'ours total s':>13s} {'iters':>6s} {'merges':>7s}")
    for spec in args.models:
        dataset, name = spec.split(":")
        arch = get_architecture(name)
        torch.manual_seed(0)
        sd = load_state_dict_file(args.model_param) if args.model_param else arch.build(
            10 if dataset == "cifar10" else 1000).state_dict()
        t = figures.time_per_iteration(sd, name, args.beta, device)
        paper = figures.PAPER_TABLE2.get((dataset, name), "-")
        rows.append((dataset, name, paper, t["naive_per_iteration_s"], t["ours_per_iteration_s"], t["total_s"],
                     t["iterations"], t["merges"]))
        print(f"{dataset:9s} {name:9s} {paper:>18s} {t['naive_per_iteration_s']:>11.3f} "
              f"{t['ours_per_iteration_s']:>10.4f} {t['total_s']:>13.2f} {t['iterations']:>6d} {t['merges']:>7d}",
              flush=True)
    path = write_csv(Path(args.out) / "table2.csv", ["dataset", "model", "paper_2080ti_s_per_iter",
                             "naive_s_per_iter", "ours_s_per_iter", "ours_total_s", "iterations", "merges"], rows)
    print(f"table: {path}\n(naive s/it = one full distance pass over all groups, which the official loop "
          "repeats every iteration; ours s/it = our total time / iterations)")


def cmd_guided(args) -> None:
    loaded, evaluator = _loaded_and_evaluator(args)
    sd, arch = loaded.state_dict, loaded.arch.name
    groups = channel_groups(arch, sd)
    group = next((g for g in groups if g.members[0].key == f"{args.layer}.weight"), None)
    if group is None:
        raise IFMError(f"--layer {args.layer} is no merged conv of {arch}; e.g. "
                       + ", ".join(g.members[0].key[:-len('.weight')] for g in groups[:4]))
    result = iterative_feature_merging(sd, groups, beta=args.beta, device="cpu")
    clusters = sorted(result.clusters[group.name], key=len, reverse=True)[: args.groups]
    if not clusters or len(clusters[0]) < 2:
        raise IFMError(f"no equivalent features in {args.layer} at beta={args.beta}; try a larger --beta")
    data = evaluator.data
    idx = datasets.spread_indices(len(data), args.images)
    images = data.images[idx].float() / 255
    model = model_for_state_dict(arch, sd)
    layer = _activation_after(model, args.layer)
    maps = [(f"{len(c)} features", figures.guided_backprop(model, layer, c, images)) for c in clusters]
    print(f"{args.layer}: {len(result.clusters[group.name])} merged features; groups shown: "
          + "; ".join(str(c[:8]) + ("..." if len(c) > 8 else "") for c in clusters))
    print(f"figure: {figures.plot_guided_grid(images, maps, Path(args.out) / 'guided_backprop.png')}")


def _activation_after(model: torch.nn.Module, conv: str) -> str:
    """Name of the first ReLU module after ``conv`` (the feature maps Z), else the conv itself."""
    names = [n for n, _ in model.named_modules()]
    after = names[names.index(conv) + 1:] if conv in names else []
    return next((n for n in after if isinstance(model.get_submodule(n), torch.nn.ReLU)), conv)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn, help_text, results=False, model=False, data=False):
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(fn=fn)
        p.add_argument("--out", default="figures")
        if results:
            p.add_argument("--results", default="results/sweep.jsonl")
        if model:
            p.add_argument("--arch", default="VGG16", help="VGG11..19, ResNet18..50, or torchvision names")
            p.add_argument("--model_param", required=True)
        if data:
            p.add_argument("--data_root", default="data/cifar10")
            p.add_argument("--eval_samples", type=int, default=None)
            p.add_argument("--device", default=None)
            p.add_argument("--no_progress", action="store_true")
        return p

    p = add("fig3a", cmd_fig3a, "accuracy vs remaining parameters % (also Fig. 4(a)/(b))", results=True)
    p.add_argument("--name", default="fig3a")
    p.add_argument("--title", default="IFM: accuracy vs remaining parameters")
    p = add("fig3b", cmd_fig3b, "accuracy vs parameters at the largest β keeping 95% accuracy", results=True)
    p.add_argument("--fraction", type=float, default=0.95)
    p = add("fig5a", cmd_fig5a, "feature complexity of every layer at a β", results=True)
    p.add_argument("--beta", type=float, default=0.1)
    p = add("fig2a", cmd_fig2a, "distance heatmaps (Fig. 2(a): last layer; Fig. 7: first 12)", model=True)
    p.add_argument("--layers", default="last", help="last, first12, all, or group indices 0,1,2")
    p = add("fig2b", cmd_fig2b, "accuracy along θ -> π(θ), equivalent vs random features", model=True, data=True)
    p.add_argument("--betas", type=float, nargs="+", default=[0.1])
    p.add_argument("--lambdas", default="0,0.25,0.5,0.75,1")
    p.add_argument("--seed", type=int, default=0)
    p = add("table2", cmd_table2, "time per IFM iteration (ours and naive) next to the paper's Table 2")
    p.add_argument("--models", nargs="+", default=TABLE2_MODELS, help="dataset:arch, e.g. cifar10:VGG16")
    p.add_argument("--model_param", default=None, help="weights for a single model (default: random init)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--device", default=None)
    p = add("guided", cmd_guided, "guided back-propagation of groups of equivalent features", model=True, data=True)
    p.add_argument("--layer", default="features.24", help="a merged conv, e.g. features.24 of VGG16")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--groups", type=int, default=3)
    p.add_argument("--images", type=int, default=6)
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except IFMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
