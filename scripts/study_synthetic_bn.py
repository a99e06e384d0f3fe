"""The study behind ``--synthetic_bn``'s settings (``measured/synthetic_study/``): synthesise calibration images from a
network's BN statistics with a chosen schedule and variant, then for each case merge with uniform widths (β 0.999,
``max_ratio`` r), apply a closed-form correction, and print the accuracy before (``datafree``) and after the BN
statistics are re-estimated on the images (``recal``), one JSON line per case.

    python scripts/study_synthetic_bn.py --iters 500 --cos                     # the adopted setting
    python scripts/study_synthetic_bn.py --iters 100 --cases 0.5:official:weights  # a constant lr, 100 steps
    python scripts/study_synthetic_bn.py --real 64                             # the same on 64 training images

The loss is the library's (:func:`ifm.synthesis.statistics_loss`); the variants (random shifts and flips, a
cross-entropy term towards fixed labels as DeepInversion, total variation) are the study's only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ifm.architectures import model_for_state_dict  # noqa: E402
from ifm.batchnorm import batch_norm_layers, recalibrate_bn  # noqa: E402
from ifm.correction import correct_merged  # noqa: E402
from ifm.discovery import channel_groups  # noqa: E402
from ifm.experiments.evaluate import Evaluator  # noqa: E402
from ifm.experiments.loading import load_model  # noqa: E402
from ifm.experiments.run import RunOptions, RunSpec  # noqa: E402
from ifm.experiments.selfmerge import merge_weights  # noqa: E402
from ifm.synthesis import statistics_loss  # noqa: E402


def synthesize(model: torch.nn.Module, args: argparse.Namespace, seed: int) -> torch.Tensor:
    """``args.b`` images optimised (Adam, ``args.lr``, cosine decay with ``args.cos``) until the BN statistics of
    ``model`` match, with the study's variants."""
    observed = []
    hooks = [bn.register_forward_pre_hook(lambda mod, inp: observed.append((mod, inp[0])))
             for bn in batch_norm_layers(model)]
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(args.b, 3, 32, 32, generator=generator).requires_grad_(True)
    labels = torch.arange(args.b) % 10
    optimiser = torch.optim.Adam([x], lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.iters) if args.cos else None
    start = time.perf_counter()
    try:
        for step in range(args.iters):
            observed.clear()
            optimiser.zero_grad()
            shown = x
            if args.jitter:
                dx, dy = torch.randint(-args.jitter, args.jitter + 1, (2,), generator=generator).tolist()
                shown = torch.roll(shown, (dx, dy), (2, 3))
                if torch.rand(1, generator=generator).item() < 0.5:
                    shown = shown.flip(3)
            out = model(shown)
            loss = statistics_loss(observed)
            total = loss
            if args.ce:
                total = total + args.ce * F.cross_entropy(out, labels)
            if args.tv:
                total = total + args.tv * ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
                                           + (x[..., 1:] - x[..., :-1]).abs().mean())
            total.backward()
            optimiser.step()
            if schedule is not None:
                schedule.step()
            if step % 100 == 0 or step == args.iters - 1:
                print(step, round(loss.item(), 3), round(time.perf_counter() - start, 1), flush=True)
    finally:
        for hook in hooks:
            hook.remove()
    return x.detach()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_param", default=str(ROOT.parent / "shared/checkpoints/vgg11_cifar10_s0.pt"))
    parser.add_argument("--data_root", default=str(ROOT.parent / "shared/data/cifar10"))
    parser.add_argument("--n", type=int, default=2000, help="test images, spread evenly")
    parser.add_argument("--b", type=int, default=64, help="images synthesised per batch")
    parser.add_argument("--batches", type=int, default=1, help="batches synthesised (seeds 0, 1, ...)")
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--cos", action="store_true", help="cosine decay of the learning rate (else constant)")
    parser.add_argument("--jitter", type=int, default=0, help="random shifts of up to this many pixels, and flips")
    parser.add_argument("--ce", type=float, default=0.0, help="weight of a cross-entropy term towards fixed labels")
    parser.add_argument("--tv", type=float, default=0.0, help="weight of a total-variation term")
    parser.add_argument("--real", type=int, default=0, help="re-estimate on this many training images instead")
    parser.add_argument("--load", default="", help="re-estimate on images saved with torch.save instead")
    parser.add_argument("--cases", default="0.5:official:weights,0.75:mean:rows",
                        help="max_ratio:rule:estimator of each merge, comma-separated")
    args = parser.parse_args(argv)
    spec = RunSpec(arch="VGG11", model_param=args.model_param, data_root=args.data_root, eval_samples=args.n,
                   beta=0.999)
    loaded = load_model(spec)
    evaluate = Evaluator(loaded, spec, RunOptions(progress=False, workers=0), torch.device("cpu"))
    original = model_for_state_dict(loaded.arch, loaded.state_dict).eval()
    for p in original.parameters():
        p.requires_grad_(False)
    if args.real:
        batches = [(x, None) for x, _ in evaluate.train_batches(args.real)]
    elif args.load:
        batches = [(torch.load(args.load), None)]
    else:
        batches = [(synthesize(original, args, seed), None) for seed in range(args.batches)]
    for case in args.cases.split(","):
        ratio, rule, estimator = case.split(":")
        merged = merge_weights(loaded, 0.999, max_ratio=float(ratio), rule=rule)
        groups = channel_groups(loaded.arch, loaded.state_dict, None, rule=rule, graph=loaded.graph)
        state = correct_merged(loaded.state_dict, merged.state_dict, groups, merged.clusters, rule,
                               loaded.graph.batch_norms, estimator)
        model = model_for_state_dict(loaded.arch, state)
        before = evaluate(model, "data-free").accuracy
        recalibrate_bn(model, batches)
        after = evaluate(model, "re-estimated").accuracy
        print(json.dumps({"args": vars(args), "r": float(ratio), "rule": rule, "est": estimator,
                          "datafree": round(before, 2), "recal": round(after, 2)}), flush=True)


if __name__ == "__main__":
    main()
