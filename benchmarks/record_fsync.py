"""What syncing a record to disk costs: N result.json-sized records written as hdr writes
them (`write_atomic`: file synced, renamed, folder synced), then unsynced (sync=False).

    .venv/bin/python benchmarks/record_fsync.py [--records 200] [--dir FOLDER]

FOLDER (default: a temporary folder) should sit on the disk that holds the runs (outputs/):
the cost is the disk's, far more than the CPU's.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from hdr.utils import cpu_description, write_atomic

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--records", type=int, default=200)
parser.add_argument("--dir", help="where to write (default: a temporary folder)")
args = parser.parse_args()

record = json.dumps({f"field_{i}": "x" * 40 for i in range(25)}, indent=2)  # 1.4 kB

with tempfile.TemporaryDirectory(dir=args.dir) as folder:
    folder = os.path.realpath(folder)
    mounts = [ln.split() for ln in Path("/proc/mounts").read_text().splitlines()]
    mount = max((m for m in mounts if folder.startswith(m[1])), key=lambda m: len(m[1]))
    print(f"{cpu_description()}; {folder} on {mount[2]} ({mount[0]})")
    for sync in (True, False):
        start = time.perf_counter()
        for i in range(args.records):
            write_atomic(Path(folder) / str(sync) / f"run_{i}" / "result.json", record, sync)
        ms = 1000 * (time.perf_counter() - start) / args.records
        name = "synced" if sync else "unsynced"
        print(f"{name:>8}: {ms:.3f} ms per record ({args.records} of {len(record)} B)")
