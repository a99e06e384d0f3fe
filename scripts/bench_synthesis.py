"""Benchmark: what one image costs in ``--synthetic_bn`` / ``--distill``'s image synthesis (:mod:`ifm.synthesis`), and
which ways of running the same optimisation make it cheaper on this machine.

For each variant (images optimised together per chunk; memory layout; autocast dtype) it times ``--steps`` steps
of the library's synthesis (forward, the BN-statistics loss, backward, Adam) and prints the seconds per image and step, the
projected cost of ``--images`` images at the library's iteration count, and the ratio to the library's setting
(chunks of 64, contiguous, float32; below 1: cheaper).

    python scripts/bench_synthesis.py --arch VGG11 --model_param ../shared/checkpoints/vgg11_cifar10_s0.pt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ifm import synthesis  # noqa: E402
from ifm.experiments.loading import load_model  # noqa: E402
from ifm.experiments.run import RunSpec  # noqa: E402


def seconds_per_image_step(model: torch.nn.Module, input_size: tuple[int, ...], chunk: int, steps: int,
                           channels_last: bool, dtype: torch.dtype) -> float:
    """Mean seconds per image and step of :func:`ifm.synthesis.synthesize_images` on one chunk of ``chunk`` images,
    over ``steps`` steps after a warm-up step; the model in the given memory layout, under autocast to ``dtype``."""
    times = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    try:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            synthesis.synthesize_images(model.to(memory_format=fmt), input_size, chunk, iterations=steps + 1,
                                        chunk=chunk, progress=lambda *_: times.append(time.perf_counter()))
    finally:
        model.to(memory_format=torch.contiguous_format)
    return (times[-1] - times[0]) / steps / chunk


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="VGG11")
    parser.add_argument("--model_param", required=True)
    parser.add_argument("--chunks", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--images", type=int, default=64, help="the image count the projected cost is for")
    parser.add_argument("--bf16", action="store_true", help="also time bfloat16 autocast (slow without native bf16)")
    args = parser.parse_args(argv)
    loaded = load_model(RunSpec(arch=args.arch, model_param=args.model_param))
    model = loaded.model.eval().requires_grad_(False)
    size = tuple(loaded.arch.input_size)
    library = (synthesis.CHUNK, False, torch.float32)  # the reference: timed first
    variants = [library] + [(c, False, torch.float32) for c in args.chunks if c != synthesis.CHUNK] \
        + [(synthesis.CHUNK, True, torch.float32)]
    if args.bf16:
        variants.append((synthesis.CHUNK, False, torch.bfloat16))
    print(f"{args.arch}, {torch.get_num_threads()} threads, torch {torch.__version__}; the library: chunks of "
          f"{synthesis.CHUNK}, {synthesis.ITERATIONS} steps")
    print(f"{'chunk':>5} {'layout':>13} {'dtype':>8} {'ms/img/step':>11} {f'{args.images} images':>12} {'ratio':>6}")
    reference = None
    for chunk, channels_last, dtype in variants:
        cost = seconds_per_image_step(model, size, chunk, args.steps, channels_last, dtype)
        reference = reference or cost
        total = cost * args.images * synthesis.ITERATIONS
        ratio = f"{cost / reference:.2f}"
        print(f"{chunk:>5} {'channels-last' if channels_last else 'contiguous':>13} {str(dtype)[6:]:>8} "
              f"{cost * 1e3:>11.3f} {total:>10.0f} s {ratio:>6}", flush=True)


if __name__ == "__main__":
    main()
