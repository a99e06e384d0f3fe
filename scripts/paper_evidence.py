"""The paper-scale evidence a CPU cannot make, in one command for one GPU (issue: where the paper's mergeable
features come from). Trains VGG16 seeds 0 and 1, VGG16 flip only and ResNet18 with the paper's recipe together,
then sweeps and diagnoses them in order of importance until --minutes are spent (a second call continues), and
packs the results without checkpoints into one archive:

    python scripts/paper_evidence.py --data_root data/cifar10 --out evidence --archive evidence.tar.gz   # one GPU
    python scripts/paper_evidence.py --data_root data/cifar10 --out ev_smoke --profile smoke --device cpu

On the device machine (64 MiB travel, 8 files back): pack CIFAR-10 with scripts/pack_image_folder.py, unpack it
there, run with --out /tmp/evidence --archive $OUT/evidence.tar.gz, then unpack the archive into measured/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ifm.device import configure_threads  # noqa: E402
from ifm.experiments.cli import cli_main  # noqa: E402
from ifm.experiments.evidence import EVIDENCE_PROFILES, run_evidence  # noqa: E402
from ifm.experiments.io import writable_folder, writable_location  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True, help="CIFAR-10: cifar-10-batches-py or ImageFolder train/+test/")
    parser.add_argument("--out", required=True, help="working folder (checkpoints included; a second call resumes)")
    parser.add_argument("--archive", default=None, help="write the results without checkpoints here (.tar.gz)")
    parser.add_argument("--profile", default="gpu", choices=sorted(EVIDENCE_PROFILES))
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    parser.add_argument("--minutes", type=float, default=8.0,
                        help="time budget of the call; what does not fit is listed and left for the next call")
    args = parser.parse_args(argv)
    configure_threads()

    def run() -> None:
        writable_folder(args.out, "--out")
        if args.archive:
            writable_location(args.archive, "--archive")
        run_evidence(args.profile, args.data_root, args.out, args.device, args.precision, args.minutes,
                     archive=args.archive)
        print((Path(args.out) / "evidence.md").read_text())
    return cli_main(run)


if __name__ == "__main__":
    sys.exit(main())
