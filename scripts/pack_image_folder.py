"""Pack an ImageFolder tree (e.g. CIFAR-10 as JPEGs) into one file, and unpack it byte for byte.

One file copies to a GPU or cluster machine much faster than 60,000 small ones:

    python scripts/pack_image_folder.py pack   ../shared/data/cifar10 cifar10.pack
    python scripts/pack_image_folder.py unpack cifar10.pack /tmp/cifar10
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

MAGIC = b"IFMPACK1"


def pack(root: Path, out: Path) -> int:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"error: no files under {root}")
    index = [[str(p.relative_to(root)), p.stat().st_size] for p in files]
    header = json.dumps(index).encode()
    with open(out, "wb") as handle:
        handle.write(MAGIC + struct.pack("<Q", len(header)) + header)
        for p in files:
            handle.write(p.read_bytes())
    return len(files)


def unpack(pack_file: Path, root: Path) -> int:
    with open(pack_file, "rb") as handle:
        if handle.read(8) != MAGIC:
            raise SystemExit(f"error: {pack_file} is not a pack made by this script")
        (size,) = struct.unpack("<Q", handle.read(8))
        index = json.loads(handle.read(size))
        for name, length in index:
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(handle.read(length))
    return len(index)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    n = (pack if args.action == "pack" else unpack)(args.source, args.target)
    print(f"{args.action}ed {n} files: {args.source} -> {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
