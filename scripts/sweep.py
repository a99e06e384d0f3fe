"""β sweep for any model and checkpoint: one self-merge run per β, appended to one results file.

    python scripts/sweep.py --family vgg --vgg_name VGG11 --model_param ckpt.pt --data_root data/cifar10 \\
        --betas paper --eval_samples 2000
    python scripts/sweep.py --dataset imagenet --family resnet --arch resnet50 --weights IMAGENET1K_V2 --betas paper

β values already in the results file (same model, checkpoint content and settings) are skipped: an
interrupted sweep restarted with the same command loses nothing and repeats nothing. ``--shard k/N``
runs every N-th β (a cluster job array splits one sweep; all shards append safely to one results
file). All other arguments are those of the ``*_self_merge.py`` scripts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ifm.experiments.cli import cli_main  # noqa: E402
from ifm.experiments.run import from_args  # noqa: E402
from ifm.experiments.arguments import merge_argument_parser  # noqa: E402
from ifm.experiments.sweep import format_sweep_table, parse_betas, shard_of, sweep  # noqa: E402


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset", default="cifar10", choices=["cifar10", "imagenet"])
    pre.add_argument("--family", default="vgg", choices=["vgg", "resnet"])
    known, _ = pre.parse_known_args(argv)
    parser = merge_argument_parser(known.dataset, known.family, description=__doc__, parents=[pre],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--betas", nargs="+", default=["paper"],
                        help="'paper' (App. D grid), 'official' (+ 0.22..0.3) or numbers")
    parser.add_argument("--shard", default=None, metavar="k/N",
                        help="run every N-th beta starting at the k-th (job arrays; shards share --results)")
    parser.set_defaults(results="results/sweep.jsonl")
    args = parser.parse_args(argv)

    def run() -> None:
        spec, options = from_args(args)
        records = sweep(spec, options, shard_of(parse_betas(args.betas), args.shard))
        if not records:
            print(f"no beta falls in shard {args.shard}")
            return
        before = next((r["acc_before"] for r in records if r.get("acc_before") is not None), None)
        print(f"\n{records[0]['model']} {records[0]['checkpoint']}"
              + (f" (original accuracy {before:.2f}%)" if before is not None else ""))
        print(format_sweep_table(records))
        print(f"results: {options.results}")

    def interrupted() -> str:
        from ifm.experiments.io import read_jsonl
        results = getattr(args, "results", "results/sweep.jsonl")
        kept = sum(1 for _ in read_jsonl(results))
        return f"{kept} records kept in {results}; run the same command again to resume"
    return cli_main(run, interrupted)


if __name__ == "__main__":
    sys.exit(main())
