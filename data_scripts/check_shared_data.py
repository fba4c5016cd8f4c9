"""Check a copy of the shared development/training data against its MANIFEST.tsv (sha256 per file).

    python data_scripts/check_shared_data.py [../shared/data] [--subset dev/3d]

The data stays where it is: volseg never copies it into the repository.  This only reads it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from volseg.provenance import file_sha256


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--subset", default="", help="only paths starting with this, e.g. dev/3d")
    a = p.parse_args()
    root = Path(a.root)
    manifest = root / "MANIFEST.tsv"
    if not manifest.is_file():
        print(f"no MANIFEST.tsv under {root}", file=sys.stderr)
        return 2
    bad = checked = 0
    for line in manifest.read_text().splitlines()[1:]:
        rel, size, digest = line.split("\t")
        if not rel.startswith(a.subset):
            continue
        f = root / rel
        checked += 1
        if not f.is_file() or f.stat().st_size != int(size) or file_sha256(f) != digest:
            bad += 1
            print(f"MISMATCH {rel}")
    print(f"{checked} files checked, {bad} mismatched")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
