"""Train a CIFAR-10 model from a YAML config.

    python train_model.py --cfg cfg/vgg16_training.yml --prefix model_a
    python train_model.py --cfg cfg/vgg11_training.yml --prefix quick --data_root ../shared/data/cifar10 \\
        --set train.epochs=1 data.subset=5000 model.width=0.25
    torchrun --nproc_per_node 4 train_model.py --cfg cfg/vgg16_training.yml --prefix ddp   # several GPUs

Under torchrun the model trains with DistributedDataParallel; the config's batch size stays the global
batch (each rank takes its share), and rank 0 evaluates and writes the run folder.
"""
import argparse
import sys
from pathlib import Path

from ifm.experiments.cli import cli_main
from ifm.experiments.config import load_config, resume_config
from ifm.device import configure_threads
from ifm.errors import IFMError
from ifm.experiments.train import init_distributed, run_directory, train_from_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="a YAML config (see cfg/)")
    parser.add_argument("--prefix", default="model", help="run name: output/<date>/<prefix>_<cfg name>/")
    parser.add_argument("--data_root", default=None, help="shortcut for --set data.root=...")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys")
    parser.add_argument("--resume", action="store_true",
                        help="continue the newest run of this prefix and config, with the config it was started with "
                             "(--set may add epochs or change data.root/train.device)")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    configure_threads()
    overrides = list(args.set) + ([f"data.root={args.data_root}"] if args.data_root else [])
    return cli_main(lambda: train(args, overrides))


def train(args: argparse.Namespace, overrides: list[str]) -> None:
    config = load_config(args.cfg, overrides)
    if args.resume:  # the run's own config.yml, not the YAML file (which may have changed since)
        saved = run_directory(config, Path(args.cfg).stem, args.prefix, resume=True) / "config.yml"
        if not saved.is_file():
            raise IFMError(f"cannot resume: {saved} is missing")
        config = resume_config(saved, overrides)
    distributed = init_distributed(config.train.device)
    run_dir, history = train_from_config(config, Path(args.cfg).stem, args.prefix, args.resume,
                                         progress=not args.no_progress)
    if distributed:
        import torch.distributed as dist
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return
    last = sorted((run_dir / "params").glob("model_epoch*.pt"), key=lambda p: int(p.stem[len("model_epoch"):]))
    print(f"run directory: {run_dir}")
    if last:
        print(f"last checkpoint: {last[-1]}")


if __name__ == "__main__":
    sys.exit(main())
