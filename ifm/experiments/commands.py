"""The subcommands of ``scripts/reproduce.py``: the paper's figures and tables (Fig. 2(a)/(b), 3(a)/(b), 5(a), 7,
Table 2, guided back-propagation, equivalence) and the diagnoses (``diagnose``, ``epochs``, ``bn-mismatch``,
``controls``), each from a results file or a checkpoint, with its parser (:func:`main`)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import figures
from . import data as datasets
from .. import channel_groups, get_architecture, model_for_state_dict
from .cli import cli_main
from ..errors import IFMError
from .io import load_state_dict_file, read_jsonl, writable_folder, write_csv, write_json
from ..merge import iterative_feature_merging
from .evaluate import training_image_batches
from .plots import plot_accuracy_vs_params
from .run import RunOptions, RunSpec
from .evaluate import Evaluator
from .loading import load_model
from ..device import pick_device
from .planted import near_duplicate_state_dict


def _curves(results: str) -> dict[str, list[dict]]:
    """Curves of the results file, one per model, checkpoint and setting (see figures.curves_by_setting)."""
    curves = figures.curves_by_setting(list(read_jsonl(results)))
    if not curves:
        raise IFMError(f"no evaluated records in {results}: run scripts/sweep.py first")
    return curves


def cmd_fig3a(args) -> None:
    curves = _curves(args.results)
    title = args.title or (f"IFM: accuracy vs remaining parameters\n"
                           f"({figures.evaluated_subset([r for rs in curves.values() for r in rs])})")
    path = plot_accuracy_vs_params(curves, Path(args.out) / f"{args.name}.png", title=title)
    rows = []
    for label, records in curves.items():
        print(label + ": " + ", ".join(f"β={r['beta']:g} {r['params_pct']:.1f}% {r['acc_after']:.2f}%" for r in records))
        rows += [(label, r["model"], figures.checkpoint_label(r), r["beta"], r["n_merges"], r["params_pct"],
                  r["flops_pct"], r["acc_before"], r["acc_after"], r.get("acc_after_std", "")) for r in records]
    csv = write_csv(path.with_suffix(".csv"), ["curve", "model", "checkpoint", "beta", "n_merges", "params_pct",
                                               "flops_pct", "acc_before", "acc_after", "acc_after_std"], rows)
    print(f"figure: {path} (numbers: {csv})")


def cmd_fig3b(args) -> None:
    choices = {}
    print(f"{'model':32s} {'beta':>6} {'params':>12} {'params %':>9} {'acc before':>11} {'acc after':>10}")
    rows = []
    for label, records in _curves(args.results).items():
        chosen = figures.largest_beta_within(records, args.fraction)
        if chosen is None:
            print(f"{label:32s} no β keeps {100 * args.fraction:.0f}% of the original accuracy")
            continue
        choices[label] = chosen
        rows.append((label, chosen["beta"], chosen["params_after"], chosen["params_pct"], chosen["acc_before"],
                     chosen["acc_after"]))
        print(f"{label:32s} {chosen['beta']:>6g} {chosen['params_after']:>12,d} {chosen['params_pct']:>9.2f} "
              f"{chosen['acc_before']:>11.2f} {chosen['acc_after']:>10.2f}")
    write_csv(Path(args.out) / "fig3b.csv", ["model", "beta", "params", "params_pct", "acc_before",
                                                     "acc_after"], rows)
    if not choices:
        raise IFMError(f"no β keeps {100 * args.fraction:.0f}% of the original accuracy in {args.results}")
    print(f"figure: {figures.plot_accuracy_vs_count(choices, Path(args.out) / 'fig3b.png')}")


def cmd_fig5a(args) -> None:
    chosen = {}
    for label, records in _curves(args.results).items():
        match = [r for r in records if abs(r["beta"] - args.beta) < 1e-12]
        if match:
            chosen[label] = match[-1]
    if not chosen:
        raise IFMError(f"no record at beta={args.beta} in {args.results}: sweep that beta first")
    for label, r in chosen.items():
        print(f"{label}: {list(r['widths'].values())}")
    path = figures.plot_feature_complexity(chosen, Path(args.out) / "fig5a.png", args.beta)
    print(f"figure: {path} (and {path.with_suffix('.csv')})")


def _state_dict(args) -> tuple[str, dict]:
    """The checkpoint, checked against ``--arch`` (a VGG11 checkpoint is refused as a VGG16)."""
    get_architecture(args.arch)
    state_dict = load_state_dict_file(args.model_param)
    model_for_state_dict(args.arch, state_dict)  # IFMError naming the keys that do not fit
    return args.arch, state_dict


def _group_indices(spec: str, n_groups: int, arch: str) -> list[int]:
    named = {"last": [n_groups - 1], "first12": list(range(min(12, n_groups))), "all": list(range(n_groups))}
    if spec in named:
        if spec == "first12" and n_groups < 12:
            print(f"{arch} has {n_groups} merged layers, fewer than 12: showing all {n_groups}")
        return named[spec]
    try:
        chosen = [int(v) for v in spec.split(",")]
    except ValueError:
        raise IFMError(f"--layers takes last, first12, all or group indices like 0,3,7; got {spec!r}") from None
    bad = [k for k in chosen if not 0 <= k < n_groups]
    if bad:
        raise IFMError(f"--layers {bad[0]} is out of range: {arch} has {n_groups} merged layers (0..{n_groups - 1})")
    return chosen


def cmd_fig2a(args) -> None:
    arch, sd = _state_dict(args)
    groups = channel_groups(arch, sd)
    layers = _group_indices(args.layers, len(groups), arch)
    matrices = figures.normalized_distances(sd, arch, layers)
    stats = []
    for gi, (name, m) in zip(layers, matrices.items()):
        off = m[~torch.eye(m.shape[0], dtype=torch.bool)]
        layer = groups[gi].layer
        stats.append({"layer": layer, "group": name, "features": m.shape[0], "min": off.min().item(),
                      "median": off.median().item(), "max": off.max().item()})
        print(f"{layer}: {m.shape[0]} features, normalised distance min {off.min():.3g} median {off.median():.3g}")
    print("(IFM's Eq. 6 distances, exact float64 Gram bookkeeping, divided by the layer's largest; the minimum leaves "
          "the diagonal out: a channel's distance to itself is 0, but torch.cdist in float64 leaves ~1e-16 there)")
    name = "fig2a" if args.layers == "last" else "fig7" if args.layers == "first12" else "distances"
    titled = {groups[gi].layer: m for gi, m in zip(layers, matrices.values())}
    path = figures.plot_heatmaps(titled, Path(args.out) / f"{name}.png", title=f"{arch}, {Path(args.model_param).name}")
    write_json(path.with_suffix(".json"), stats)
    torch.save(titled, path.with_suffix(".pt"))
    print(f"figure: {path} (numbers: {path.with_suffix('.json')}; matrices: {path.with_suffix('.pt')})")


def _loaded_and_evaluator(args):
    spec = RunSpec(arch=args.arch, model_param=args.model_param, data_root=args.data_root,
                   eval_samples=args.eval_samples)
    options = RunOptions(batch_size=256, workers=2, progress=not args.no_progress)
    loaded = load_model(spec)
    return loaded, Evaluator(loaded, spec, options, pick_device(args.device))


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
    subset = figures.evaluated_subset([{"dataset": loaded.arch.dataset, "eval_samples": evaluator.total}])
    title = f"{loaded.arch.name}: interpolating θ and π(θ) ({subset})"
    print(f"figure: {figures.plot_interpolation(curves, Path(args.out) / 'fig2b.png', title)}")


TABLE2_MODELS = ["cifar10:VGG13", "cifar10:VGG16", "cifar10:ResNet18", "cifar10:ResNet50",
                 "imagenet:vgg13", "imagenet:vgg16", "imagenet:vgg19", "imagenet:resnet18", "imagenet:resnet50"]


def cmd_table2(args) -> None:
    device = str(pick_device(args.device))
    if args.model_param and len(args.models) != 1:
        raise IFMError("--model_param times one model: pass exactly one --models entry, e.g. --models cifar10:VGG16")
    weights = args.model_param or (f"near-duplicate channels ({100 - 100 * args.prototypes:.0f} % of each layer "
                                   f"noisy copies, seed 0)")
    print(f"device: {device}, β={args.beta}, {args.repeats} timed runs after a warm-up; weights: {weights}")
    print(f"{'dataset':9s} {'model':9s} {'paper 2080Ti s/it':>18s} {'naive s/it':>11s} {'ours s/it':>20s} "
          f"{'ours ms/merge':>14s} {'iters':>6s} {'merges':>7s}")
    rows, records = [], []
    for spec in args.models:
        dataset, _, name = spec.partition(":")
        if dataset not in ("cifar10", "imagenet") or not name:
            raise IFMError(f"--models takes dataset:arch, e.g. cifar10:VGG16 or imagenet:resnet50; got {spec!r}")
        arch = get_architecture(name)
        if args.model_param:
            sd = load_state_dict_file(args.model_param)
            model_for_state_dict(arch, sd)  # IFMError naming the keys that do not fit
        else:
            sd = near_duplicate_state_dict(name, prototypes=args.prototypes,
                                           num_classes=10 if dataset == "cifar10" else 1000)
        t = figures.time_per_iteration(sd, name, args.beta, device, args.repeats)
        paper = figures.PAPER_TABLE2.get((dataset, name), "-")
        ours = f"{t['ours_per_iteration_s']:.4f} ± {t['ours_per_iteration_std']:.4f}"
        per_merge = "-" if t["ours_per_merge_s"] is None else (f"{1e3 * t['ours_per_merge_s']:.3f} ± "
                                                                f"{1e3 * t['ours_per_merge_std']:.3f}")
        note = "0 merges: nothing to time but the distance pass; raise --beta" if t["merges"] == 0 else ""
        rows.append((dataset, name, paper, t["naive_per_iteration_s"], t["ours_per_iteration_s"],
                     t["ours_per_iteration_std"], t["ours_per_merge_s"], t["ours_per_merge_std"], t["total_s"],
                     t["iterations"], t["merges"], note))
        records.append({"dataset": dataset, "model": name, "paper_2080ti_s_per_iter": paper, "weights": weights,
                        "beta": args.beta, "device": device, **t})
        print(f"{dataset:9s} {name:9s} {paper:>18s} {t['naive_per_iteration_s']:>11.3f} {ours:>20s} "
              f"{per_merge:>14s} {t['iterations']:>6d} {t['merges']:>7d}  {note}", flush=True)
    path = write_csv(Path(args.out) / "table2.csv", ["dataset", "model", "paper_2080ti_s_per_iter",
                                                     "naive_s_per_iter", "ours_s_per_iter", "ours_s_per_iter_std",
                                                     "ours_s_per_merge", "ours_s_per_merge_std", "ours_total_s",
                                                     "iterations", "merges", "note"], rows)
    write_json(path.with_suffix(".json"), records)
    print(f"table: {path} (and {path.with_suffix('.json')})\n(naive s/it = one full distance pass over all groups, "
          "which the official loop repeats every iteration; ours = our total time / iterations or / merges, "
          "mean ± std over the timed runs)")


def cmd_guided(args) -> None:
    loaded, evaluator = _loaded_and_evaluator(args)
    sd, arch = loaded.state_dict, loaded.arch.name
    groups = channel_groups(arch, sd)
    group = next((g for g in groups if g.layer == args.layer), None)
    if group is None:
        raise IFMError(f"--layer {args.layer} is no merged conv of {arch}; e.g. "
                       + ", ".join(g.layer for g in groups[:4]))
    result = iterative_feature_merging(sd, groups, beta=args.beta, device="cpu")
    clusters = sorted(result.clusters[group.name], key=len, reverse=True)[: args.groups]
    if not clusters or len(clusters[0]) < 2:
        raise IFMError(f"no equivalent features in {args.layer} at beta={args.beta}; try a larger --beta")
    data = evaluator.data
    pool = torch.arange(len(data))
    if args.image_class is not None:
        if args.image_class not in data.classes:
            raise IFMError(f"--class {args.image_class!r} is not a class of the data; choose one of "
                           + ", ".join(data.classes))
        pool = pool[data.labels == data.classes.index(args.image_class)]
    idx = pool[datasets.spread_indices(len(pool), args.images)]
    images = data.images[idx].float() / 255
    model = model_for_state_dict(arch, sd)
    layer = _activation_after(model, args.layer)

    def row_label(cluster):
        shown = ", ".join(map(str, cluster[:6])) + (", ..." if len(cluster) > 6 else "")
        return f"{args.layer} β={args.beta:g}\n{len(cluster)} features\n[{shown}]"
    maps = [(row_label(c), figures.guided_backprop(model, layer, c, images)) for c in clusters]
    control = torch.randperm(group.width, generator=torch.Generator().manual_seed(0))[:len(clusters[0])].tolist()
    maps.append((f"{args.layer}\n{len(control)} random\nfeatures (control)",
                 figures.guided_backprop(model, layer, control, images)))
    print(f"{args.layer}: {len(result.clusters[group.name])} merged features; groups shown: "
          + "; ".join(str(c[:8]) + ("..." if len(c) > 8 else "") for c in clusters))
    path = figures.plot_guided_grid(images, maps, Path(args.out) / "guided_backprop.png",
                                    title=f"{arch}: guided back-propagation of groups of equivalent features"
                                          + (f" (class {args.image_class})" if args.image_class else ""))
    write_json(path.with_suffix(".json"), {"arch": arch, "checkpoint": args.model_param, "layer": args.layer,
                                           "hooked": layer, "beta": args.beta, "class": args.image_class,
                                           "image_indices": idx.tolist(), "clusters": clusters,
                                           "control": control})
    print(f"figure: {path} (and {path.with_suffix('.json')})")


def cmd_equivalence(args) -> None:
    from dataclasses import asdict

    from .equivalence import measure_equivalence, plot_equivalence
    from .selfmerge import merge_weights
    loaded, evaluator = _loaded_and_evaluator(args)
    if loaded.arch.dataset != "cifar10":
        raise IFMError("the equivalence measurement runs on CIFAR VGGs; use --arch VGG11/13/16/19")
    device = pick_device(args.device)
    train = datasets.load_cifar10(args.data_root, "train", progress=not args.no_progress)
    train = train.subset(datasets.spread_indices(len(train), args.train_samples))
    groups = channel_groups(loaded.arch, loaded.state_dict)
    merged = {}
    for beta in args.betas:
        result = merge_weights(loaded, beta, bn_mode=args.bn_mode, device="cpu")
        merged[beta] = (model_for_state_dict(loaded.arch, result.state_dict), result.clusters)
        print(f"β={beta:g}: {result.n_merges} merges")
    rows = measure_equivalence(loaded.model, merged, groups, evaluator.data, train, device, loaded.normalize,
                               debiased=args.debiased, progress=not args.no_progress)
    print(f"{'beta':>5} {'layer':12s} {'width':>9s} {'CKA':>6s} {'stitch':>7s} {'reverse':>8s} {'merged':>7s} "
          f"{'cluster r':>9s} {'random r':>8s}")
    for r in rows:
        corr = "-" if r.cluster_correlation is None else f"{r.cluster_correlation:.3f}"
        print(f"{r.beta:>5g} {r.layer:12s} {r.features_merged:>4d}/{r.features_original:<4d} {r.cka:>6.3f} "
              f"{r.stitched_acc:>7.2f} {r.reverse_stitched_acc:>8.2f} {r.merged_acc:>7.2f} {corr:>9s} "
              f"{r.random_pair_correlation:>8.3f}")
    print(f"original accuracy {rows[0].original_acc:.2f}% on {evaluator.total} test images; stitches fitted on "
          f"{len(train)} training images; BN {args.bn_mode}{', debiased CKA' if args.debiased else ''}")
    out = Path(args.out)
    csv = write_csv(out / "equivalence.csv", list(asdict(rows[0])), [list(asdict(r).values()) for r in rows])
    subset = figures.evaluated_subset([{"dataset": "cifar10", "eval_samples": evaluator.total}])
    path = plot_equivalence(rows, out / "equivalence.png",
                            title=f"{loaded.arch.name} ({Path(args.model_param).name}) vs IFM-merged, BN {args.bn_mode}"
                                  f" ({subset})")
    print(f"figure: {path} (numbers: {csv})")


def cmd_diagnose(args) -> None:
    from .diagnose import diagnose_checkpoint, format_diagnosis, write_diagnosis
    rows = diagnose_checkpoint(args.arch, args.model_param, args.data_root, args.images, args.stages,
                               not args.no_progress)
    print(format_diagnosis(rows))
    title = f"{args.arch}, {Path(args.model_param).name}" + (f": dead on {args.images} training images"
                                                             if args.data_root else "")
    written = write_diagnosis(rows, args.out, title)
    print("written: " + ", ".join(str(p) for p in written.values()))


def cmd_epochs(args) -> None:
    from .epochs import diagnose_epochs, sweep_epochs
    if args.sweep_epochs and not args.data_root:
        raise IFMError("--sweep_epochs evaluates on the test set: give --data_root too")
    diagnose_epochs(args.arch, args.run_dir, args.out, args.data_root, args.images)
    if args.sweep_epochs:
        rows = sweep_epochs(args.arch, args.run_dir, args.sweep_epochs, args.out, args.data_root, args.bn_modes,
                            args.betas, args.eval_samples, args.device)
        for r in rows:
            print(", ".join(f"{k} {v}" for k, v in r.items()))
    print(f"written: {Path(args.out) / 'epochs.csv'}, {Path(args.out) / 'epochs.png'}"
          + (f", {Path(args.out) / 'sweeps.csv'}, {Path(args.out) / 'sweeps.png'}" if args.sweep_epochs else ""))


def cmd_bn_mismatch(args) -> None:
    from dataclasses import asdict
    from .diagnose import batchnorm_mismatch, format_mismatch
    loaded = load_model(RunSpec(arch=args.arch, model_param=args.model_param))
    if loaded.arch.dataset != "cifar10":
        raise IFMError(f"bn-mismatch reads training images of CIFAR-10 models only, not {args.arch}'s")
    images, batches = training_image_batches(args.data_root, args.images, loaded.normalize, not args.no_progress)
    rows = batchnorm_mismatch(loaded.model, batches)
    print(format_mismatch(rows))
    records = [asdict(r) for r in rows]
    out = Path(args.out)
    written = [write_json(out / "bn_mismatch.json", {"checkpoint": args.model_param, "images": images,
                                                     "layers": records}),
               write_csv(out / "bn_mismatch.csv", list(records[0]), [list(r.values()) for r in records])]
    print("written: " + ", ".join(str(p) for p in written))


def cmd_controls(args) -> None:
    from .controls import ControlRun, measure, write_controls
    from .diagnose import diagnose_checkpoint, write_diagnosis
    runs = [ControlRun(name, changed, Path(folder)) for name, folder, changed in args.run]
    for run in runs:
        diagnosis = run.folder / "diagnose" / args.model
        finals = sorted((run.folder / "checkpoints" / args.model / "params").glob("model_epoch*.pt"),
                        key=lambda p: int(p.stem[len("model_epoch"):]))
        if not (diagnosis / "diagnose.json").exists() and finals:
            print(f"diagnose {run.name}: {finals[-1]}")
            write_diagnosis(diagnose_checkpoint(args.model, finals[-1], args.data_root, progress=not args.no_progress),
                            diagnosis, f"{args.model}, {finals[-1].name}")
    measured = [measure(run, args.model) for run in runs]
    written = write_controls(measured, args.out, args.model, args.seed_run)
    print((Path(args.out) / "summary.md").read_text())
    print("written: " + ", ".join(str(p) for p in written.values()))


def _activation_after(model: torch.nn.Module, conv: str) -> str:
    """The module whose output are the feature maps Z of ``conv``: the first ReLU module after it or, for
    models that call ReLU functionally (CIFAR ResNets), the BatchNorm after it (guided_backprop clamps
    its output at zero: that is the ReLU); else the conv itself."""
    names = [n for n, _ in model.named_modules()]
    after = names[names.index(conv) + 1:] if conv in names else []
    for kind in (torch.nn.ReLU, torch.nn.BatchNorm2d):
        found = next((n for n in after[:3] if isinstance(model.get_submodule(n), kind)), None)
        if found:
            return found
    return conv


def main(argv=None, description: str | None = None) -> int:
    """``scripts/reproduce.py``: parse the subcommand and its arguments, run it (one ``error:`` line on bad input)."""
    parser = argparse.ArgumentParser(description=description or __doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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

    p = add("fig3a", cmd_fig3a, "accuracy vs remaining parameters %% (also Fig. 4(a)/(b))", results=True)
    p.add_argument("--name", default="fig3a")
    p.add_argument("--title", default=None, help="default: names the data set and the evaluated images")
    p = add("fig3b", cmd_fig3b, "accuracy vs parameters at the largest β keeping 95%% accuracy", results=True)
    p.add_argument("--fraction", type=float, default=0.95)
    p = add("fig5a", cmd_fig5a, "feature complexity of every layer at a β", results=True)
    p.add_argument("--beta", type=float, default=0.1)
    p = add("fig2a", cmd_fig2a, "distance heatmaps (Fig. 2(a): last layer; Fig. 7: first 12)", model=True)
    p.add_argument("--layers", default="last", help="last, first12, all, or group indices 0,1,2")
    p = add("fig2b", cmd_fig2b, "accuracy along θ -> π(θ), equivalent vs random features", model=True, data=True)
    p.add_argument("--betas", type=float, nargs="+", default=[0.1])
    p.add_argument("--lambdas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    p.add_argument("--seed", type=int, default=0)
    p = add("table2", cmd_table2, "time per IFM iteration (ours and naive) next to the paper's Table 2")
    p.add_argument("--models", nargs="+", default=TABLE2_MODELS, help="dataset:arch, e.g. cifar10:VGG16")
    p.add_argument("--model_param", default=None,
                   help="weights of the one model in --models (default: random init with near-duplicate channels)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--prototypes", type=float, default=0.75,
                   help="generated weights: this fraction of each layer's channels is kept, the rest are noisy copies")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    p.add_argument("--device", default=None)
    p = add("guided", cmd_guided, "guided back-propagation of groups of equivalent features", model=True, data=True)
    p.add_argument("--layer", default="features.24", help="a merged conv, e.g. features.24 of VGG16")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--groups", type=int, default=3)
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--class", dest="image_class", default=None, help="show images of this class, e.g. truck")
    p = add("equivalence", cmd_equivalence, "CKA, linear stitching and cluster correlation of merged features",
            model=True, data=True)
    p.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.2])
    p.add_argument("--train_samples", type=int, default=2000, help="training images to fit the stitching maps")
    p.add_argument("--bn_mode", default="official", choices=["official", "fold"])
    p.add_argument("--debiased", action="store_true", help="debiased CKA (unbiased HSIC) instead of the plain one")
    p = add("diagnose", cmd_diagnose, "per layer: closest channels (normalised Eq. 6), dead channels, norm spread",
            model=True)
    p.add_argument("--data_root", default=None, help="count channels never positive on training images (CIFAR-10)")
    p.add_argument("--images", type=int, default=1000, help="training images for the dead-channel count")
    p.add_argument("--stages", type=int, nargs="+", default=None, help="ResNets: stages to diagnose (default all)")
    p.add_argument("--no_progress", action="store_true")
    p = add("epochs", cmd_epochs, "a training followed epoch by epoch: every kept checkpoint diagnosed, and β "
            "sweeps at chosen epochs")
    p.add_argument("--arch", required=True, help="the trained model, e.g. VGG16")
    p.add_argument("--run_dir", required=True, help="its training run folder (params/model_epoch*.pt)")
    p.add_argument("--data_root", default=None, help="CIFAR-10: dead-channel counts, and the sweeps' test set")
    p.add_argument("--images", type=int, default=1000, help="training images for the dead-channel count")
    p.add_argument("--sweep_epochs", type=int, nargs="*", default=[], help="sweep β at these epochs (from 1)")
    p.add_argument("--bn_modes", nargs="+", default=["official", "fold", "repaired"],
                   choices=["official", "fold", "repaired"])
    p.add_argument("--betas", type=float, nargs="+", default=None, help="default: the official grid")
    p.add_argument("--eval_samples", type=int, default=None)
    p.add_argument("--device", default=None)
    p = add("bn-mismatch", cmd_bn_mismatch, "per BatchNorm of a (merged) checkpoint: its stored statistics against "
            "those on training images (is a data-free repair right?)", model=True)
    p.add_argument("--data_root", default="data/cifar10")
    p.add_argument("--images", type=int, default=1000, help="training images to measure on")
    p.add_argument("--no_progress", action="store_true")
    p = add("controls", cmd_controls, "compare reproductions that differ in one setting (precision, augmentation, "
            "seed): what moves IFM's result")
    p.add_argument("--run", nargs=3, action="append", required=True, metavar=("NAME", "FOLDER", "CHANGED"),
                   help="a reproduce_cifar10.py --out folder and what it changes; the first is the baseline")
    p.add_argument("--model", default="VGG11")
    p.add_argument("--seed_run", default=None, help="the run that changes only the seed: the noise level")
    p.add_argument("--data_root", default=None, help="also count channels never positive on training images")
    p.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)

    def run() -> None:
        writable_folder(args.out, "--out")  # before any work
        args.fn(args)
    return cli_main(run)

