"""Training throughput (images/s) of a CIFAR model on a device, with the project's training step.

    python scripts/bench_train.py --model VGG11 --width 0.25 --device cpu
    python scripts/bench_train.py --model VGG16 --amp --channels_last     # on a GPU
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from ifm.selfmerge import pick_device  # noqa: E402
from ifm.train import augment, train_step, training_inputs  # noqa: E402


def images_per_second(model_name: str, width: float, device: torch.device, batch_size: int, steps: int,
                      amp: bool, channels_last: bool) -> float:
    model = models.create_model(model_name, width=width).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    data = torch.randint(0, 256, (batch_size * 4, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch_size * 4,), device=device)
    gen = torch.Generator().manual_seed(0)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")

    def step(i: int) -> None:
        idx = torch.arange(i % 4 * batch_size, (i % 4 + 1) * batch_size, device=device)
        x = training_inputs(augment(data[idx], ["crop", "flip"], gen), None, channels_last)
        train_step(model, opt, scaler, x, labels[idx], amp)

    for i in range(3):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["VGG11"])
    parser.add_argument("--width", type=float, nargs="+", default=[1.0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--epochs", type=int, default=150, help="for the projected time of a full training")
    args = parser.parse_args()
    device = pick_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, amp={args.amp}, "
          f"channels_last={args.channels_last}")
    for name in args.model:
        for width in args.width:
            rate = images_per_second(name, width, device, args.batch_size, args.steps, args.amp, args.channels_last)
            minutes = 50_000 * args.epochs / rate / 60
            print(f"{name:9s} width {width:<5} {rate:10.0f} images/s   {args.epochs} epochs of CIFAR-10: {minutes:8.1f} min")


if __name__ == "__main__":
    main()
