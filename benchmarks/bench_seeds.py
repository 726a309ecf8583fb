"""Seeds run one after another against seeds run in processes (``--jobs``).

``python benchmarks/bench_seeds.py [CONFIG] [--seeds 0 1 2 3 4] [--jobs 2] [--set KEY=VALUE ...]``

Runs ``run_experiment.py CONFIG --seeds ... --quiet`` twice in fresh processes started
in the current folder (a relative CONFIG or ``--set`` path means what it means to
``run_experiment.py`` run from there), the runs written to a temporary folder: once
with ``--jobs 1`` and once with ``--jobs N`` (default: the machine's cores), and prints
both wall times and their ratio. The two give the same numbers (``tests/test_seeds.py``
checks it); what differs is only how the seeds share the cores. Default:
``configs/compare_mechanisms.toml``, seeds 0-4.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arguments import integer

ROOT = Path(__file__).resolve().parents[1]


def timed_seeds(config: str, seeds: list[int], jobs: int, overrides: list[str], out: Path) -> float:
    """Wall seconds of one ``--seeds`` invocation with ``jobs`` processes, runs under ``out``."""
    command = [sys.executable, str(ROOT / "run_experiment.py"), config, "--quiet", "--seeds", *map(str, seeds),
               "--jobs", str(jobs), f"--set=experiment.output_dir='{out}'", *(f"--set={o}" for o in overrides)]
    start = time.perf_counter()
    status = subprocess.run(command, stdout=subprocess.DEVNULL).returncode
    if status:  # run_experiment has said why on stderr
        sys.exit(status)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs" / "compare_mechanisms.toml"),
                        help="the experiment's config (default: configs/compare_mechanisms.toml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="the seeds run (default: 0-4)")
    parser.add_argument("--jobs", type=integer(1), default=os.cpu_count() or 1,
                        help="processes of the second invocation (default: the machine's cores)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for both invocations, as run_experiment.py's --set")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        one = timed_seeds(args.config, args.seeds, 1, args.overrides, Path(folder) / "one")
        many = timed_seeds(args.config, args.seeds, args.jobs, args.overrides, Path(folder) / "many")
    print(f"{Path(args.config).name}, seeds {' '.join(map(str, args.seeds))}, {os.cpu_count()} cores")
    print(f"  --jobs 1          {one:7.1f} s")
    print(f"  --jobs {args.jobs:<10d} {many:7.1f} s   --jobs 1 / --jobs {args.jobs}: {one / many:.2f}x "
          f"({'faster' if one > many else 'not faster'} in processes)")


if __name__ == "__main__":
    main()
