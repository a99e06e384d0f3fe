"""Training throughput of CIFAR models with the project's training step: images/s and achieved TFLOP/s
(3x the forward FLOPs per image: forward, input gradients, weight gradients), per precision mode.

    python scripts/bench_train.py --model VGG11 --width 0.25 --device cpu
    python scripts/bench_train.py --model VGG11 VGG16 --modes fp32 bf16 fast --device cuda   # on a GPU
    python scripts/bench_train.py --model VGG11 VGG13 VGG16 VGG19 --together --device cuda   # one stream each

Modes: ``fp32`` (eager), ``bf16`` (bf16 autocast + channels_last), ``fast`` (bf16 + channels_last + the
step replayed from a CUDA graph), ``compile`` (fast + torch.compile). On the CPU a CUDA graph is not used.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from ifm.device import pick_device  # noqa: E402
from ifm.metrics import count_flops  # noqa: E402
from ifm.experiments.train import TrainStep, augment  # noqa: E402

MODES = {"fp32": {}, "bf16": dict(amp=True, channels_last=True),
         "fast": dict(amp=True, channels_last=True, cuda_graph=True),
         "compile": dict(amp=True, channels_last=True, cuda_graph=True, compile=True)}


def make_step(name: str, width: float, device: torch.device, mode: str) -> TrainStep:
    model = models.create_model(name, width=width).to(device)
    if MODES[mode].get("channels_last"):
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return TrainStep(model, opt, device, **MODES[mode])


def images_per_second(steps_by_model: list[TrainStep], device: torch.device, batch_size: int, steps: int) -> float:
    """Images/s of each model when all of them train step by step in turn (each on its own stream)."""
    data = augment(torch.randint(0, 256, (batch_size * 8, 3, 32, 32), dtype=torch.uint8, device=device),
                   ["crop", "flip"], torch.Generator().manual_seed(0))
    labels = torch.randint(0, 10, (batch_size * 8,), device=device)
    streams = [torch.cuda.Stream(device) if device.type == "cuda" else None for _ in steps_by_model]

    def run(n: int) -> None:
        for i in range(n):
            part = slice(i % 8 * batch_size, (i % 8 + 1) * batch_size)
            for step, stream in zip(steps_by_model, streams):
                if stream is None:
                    step(data[part], labels[part])
                else:
                    with torch.cuda.stream(stream):
                        step(data[part], labels[part])
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run(5)  # warm-up: cuDNN plans, graph capture, compilation
    start = time.perf_counter()
    run(steps)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["VGG11"])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--modes", nargs="+", default=["fp32"], choices=list(MODES))
    parser.add_argument("--together", action="store_true", help="also all models at once, one CUDA stream each")
    parser.add_argument("--epochs", type=int, default=150, help="for the projected time of a full training")
    args = parser.parse_args()
    device = pick_device(args.device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    flops = {name: 3 * count_flops(models.create_model(name, width=args.width), (3, 32, 32)) for name in args.model}
    print(f"{'model':9s} {'mode':8s} {'images/s':>10s} {'TFLOP/s':>8s} {f'{args.epochs} epochs':>11s}")
    for mode in args.modes:
        for name in args.model:
            rate = images_per_second([make_step(name, args.width, device, mode)], device, args.batch_size, args.steps)
            print(f"{name:9s} {mode:8s} {rate:10.0f} {rate * flops[name] / 1e12:8.3g} "
                  f"{50_000 * args.epochs / rate / 60:9.1f} min", flush=True)
        if args.together and len(args.model) > 1:
            steps = [make_step(name, args.width, device, mode) for name in args.model]
            rate = images_per_second(steps, device, args.batch_size, args.steps)
            total = sum(flops.values())
            print(f"{'together':9s} {mode:8s} {rate:10.0f} {rate * total / 1e12:8.3g} "
                  f"{50_000 * args.epochs / rate / 60:9.1f} min  (images/s of each of {len(steps)} models)",
                  flush=True)


if __name__ == "__main__":
    main()
