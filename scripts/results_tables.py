"""Regenerate the measured tables of README.md and docs/*.md from the files in measured/.

    python scripts/results_tables.py            # exit 1 and name the files whose tables are out of date
    python scripts/results_tables.py --write    # rewrite them in place

A generated table sits between ``<!-- table: NAME -->`` and ``<!-- /table -->``; see ifm/experiments/tables.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ifm.experiments.cli import cli_main  # noqa: E402
from ifm.experiments.io import atomic_write  # noqa: E402
from ifm.experiments.tables import documents, refresh  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite out-of-date tables in place")
    parser.add_argument("--measured", default=str(ROOT / "measured"), help="the folder of measured runs")
    args = parser.parse_args(argv)

    def run() -> int:
        stale = []
        for path in documents(ROOT):
            text = path.read_text()
            fresh = refresh(text, Path(args.measured))
            if fresh != text:
                stale.append(path)
                if args.write:
                    atomic_write(path, lambda tmp: Path(tmp).write_text(fresh))
        for path in stale:
            print(f"{'rewrote' if args.write else 'out of date'}: {path.relative_to(ROOT)}")
        return 1 if stale and not args.write else 0
    return cli_main(run)


if __name__ == "__main__":
    sys.exit(main())
