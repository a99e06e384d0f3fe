"""The accuracy-vs-parameters frontier: IFM (β allocation, uniform widths; with and without the data-free
correction), k-means clusters (Model Folding), L1 and random pruning, and BN re-estimation on data as a reference,
all at the same parameter budgets. Resumable (one record per method and budget in --results); writes
``frontier.csv``, ``frontier.png`` (every method), ``frontier_short.png`` (the few that make the point) and
``frontier.md`` to --out.

    python scripts/compare_methods.py --vgg_name VGG11 --model_param ../shared/checkpoints/vgg11_cifar10_s0.pt \\
        --data_root ../shared/data/cifar10 --budgets 75 56 42 25 12 6.3 --out figures/frontier_vgg11
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ifm.experiments.cli import cli_main  # noqa: E402
from ifm.experiments.compare import PAPER_BUDGETS, format_frontier, frontier, methods, write_frontier  # noqa: E402
from ifm.errors import IFMError  # noqa: E402
from ifm.experiments.io import atomic_write, writable_location  # noqa: E402
from ifm.experiments.run import from_args  # noqa: E402
from ifm.experiments.arguments import merge_argument_parser  # noqa: E402


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--family", default="vgg", choices=["vgg", "resnet"])
    known, _ = pre.parse_known_args(argv)
    parser = merge_argument_parser("cifar10", known.family, description=__doc__, parents=[pre],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=list(PAPER_BUDGETS),
                        help="percent of the parameters to keep")
    parser.add_argument("--estimator", default="weights", choices=["rows", "weights"],
                        help="the correlation estimate of the data-free correction")
    parser.add_argument("--recalibrate", type=int, default=2000,
                        help="training images for the BN re-estimation reference (0: leave it out)")
    parser.add_argument("--synthetic", type=int, default=64,
                        help="images synthesised from the original BN statistics for the data-free BN re-estimation "
                             "(0: leave those methods out)")
    parser.add_argument("--distill_budgets", type=float, nargs="+", default=None,
                        help="with --distill: the budgets the distilled methods run at (default: all of --budgets)")
    parser.add_argument("--replot", action="store_true",
                        help="run nothing: tabulate and draw the runs already in --results")
    parser.add_argument("--out", default="figures/frontier")
    parser.set_defaults(results="results/compare_methods.jsonl", seeds=2)
    args = parser.parse_args(argv)
    return cli_main(lambda: compare(args))


def compare(args: argparse.Namespace) -> None:
    if any(not 0 < b <= 100 for b in args.budgets):
        raise IFMError(f"--budgets are percentages of the parameters to keep, in (0, 100]; got {args.budgets}")
    writable_location(Path(args.out) / "frontier.csv", "--out")  # outputs first, before any work
    spec, options = from_args(args)
    if args.distill_budgets and not args.distill:
        raise IFMError("--distill_budgets needs --distill STEPS (the distilled methods are only run with it)")
    if args.distill_budgets and not set(args.distill_budgets) <= set(args.budgets):
        raise IFMError(f"--distill_budgets must be among --budgets {args.budgets}; got {args.distill_budgets}")
    compared = methods(spec, args.estimator, args.recalibrate, args.synthetic, args.distill_budgets)
    curves = frontier(spec, options, args.budgets, compared, run_missing=not args.replot)
    table, figure, short = write_frontier(curves, compared, args.out, f"{spec.arch}: accuracy vs parameters kept")
    text = format_frontier(curves, args.budgets)
    atomic_write(Path(args.out) / "frontier.md", lambda tmp: Path(tmp).write_text(text + "\n"))
    print("\naccuracy % (params kept %)\n" + text)
    print(f"figures: {figure} (every method), {short} (the headline ones)\ntable: {table}")


if __name__ == "__main__":
    sys.exit(main())
