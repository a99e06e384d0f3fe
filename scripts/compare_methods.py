"""Compare IFM (official), IFM with folded BN, IFM + BN recalibration, L1 and random pruning.

Every method runs over the same β grid on the same checkpoint (the pruning baselines at IFM's
official widths for that β), appending to one results file (resumable like scripts/sweep.py); then
a figure of accuracy against remaining parameters and a table at equal widths are written.

    python scripts/compare_methods.py --vgg_name VGG11 --model_param ../shared/checkpoints/vgg11_cifar10_s0.pt \\
        --data_root ../shared/data/cifar10 --eval_samples 2000 --recalibrate 2000 --betas 0.05 0.1 0.15 0.2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ifm.cli import cli_main  # noqa: E402
from ifm.io import write_csv  # noqa: E402
from ifm.plots import plot_accuracy_vs_params  # noqa: E402
from ifm.run import RunSpec, from_args  # noqa: E402
from ifm.selfmerge import merge_argument_parser  # noqa: E402
from ifm.sweep import check_sweep, parse_betas, sweep  # noqa: E402


def variants(spec: RunSpec, recalibrate: int) -> dict[str, RunSpec]:
    """The compared methods, each a variant of the official IFM run."""
    spec = spec.replace(method="ifm", bn_mode="official", recalibrate_bn=0)
    return {"IFM (official)": spec,
            "IFM (fold BN)": spec.replace(bn_mode="fold"),
            f"IFM + BN recalibration ({recalibrate})": spec.replace(recalibrate_bn=recalibrate),
            "L1 pruning": spec.replace(method="l1"),
            f"random pruning ({spec.seeds} seeds)": spec.replace(method="random")}


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--family", default="vgg", choices=["vgg", "resnet"])
    known, _ = pre.parse_known_args(argv)
    parser = merge_argument_parser("cifar10", known.family, description=__doc__, parents=[pre],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--betas", nargs="+", default=["0.05", "0.1", "0.15", "0.2"])
    parser.add_argument("--recalibrate", type=int, default=2000, help="training images for BN recalibration")
    parser.add_argument("--out", default="figures")
    parser.set_defaults(results="results/compare_methods.jsonl")
    args = parser.parse_args(argv)
    return cli_main(lambda: compare(args))


def compare(args: argparse.Namespace) -> None:
    betas = parse_betas(args.betas)
    spec, options = from_args(args)
    methods = variants(spec, args.recalibrate)
    for variant in methods.values():  # every method's settings, before the first one runs
        check_sweep(variant, options, betas)
    curves = {}
    for label, variant in methods.items():
        print(f"== {label}")
        curves[label] = sweep(variant, options, betas)
    rows = []
    print(f"\n{'beta':>5} {'method':38s} {'params %':>9} {'accuracy':>9}")
    for beta in betas:
        for label, records in curves.items():
            r = next(r for r in records if r["beta"] == beta)
            spread = f" ± {r['acc_after_std']:.2f}" if "acc_after_std" in r else ""
            print(f"{beta:>5g} {label:38s} {r['params_pct']:>9.2f} {r['acc_after']:>8.2f}%{spread}")
            rows.append((beta, label, r["params_pct"], r["acc_after"], r.get("acc_after_std", "")))
    out = Path(args.out)
    write_csv(out / "compare_methods.csv", ["beta", "method", "params_pct", "acc_after", "acc_after_std"], rows)
    path = plot_accuracy_vs_params(curves, out / "compare_methods.png", title="IFM variants vs channel pruning")
    print(f"figure: {path}\ntable: {out / 'compare_methods.csv'}")


if __name__ == "__main__":
    sys.exit(main())
