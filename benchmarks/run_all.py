"""Run the benchmarks and print one table: `python benchmarks/run_all.py [NAME ...] [--quick]`.

NAME picks benchmarks (local, llm, queue, panel, preflight, safety, budget, postgres, fleet,
peers, cost; all by default).
`--quick` runs fewer rounds and a 128 MB log instead of 1 GB; `--log-mb` sets that size.
`python3 run.py bench ...` installs the project into .venv and runs this.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import bench_budget
import bench_fleet
import bench_llm_scaling
import bench_local_overhead
import bench_panel
import bench_peers
import bench_postgres
import bench_preflight
import bench_queue_growth
import bench_safety_corpus
import bench_task_cost
from benchlib import Figure, load_average, print_machine, print_table

BENCHMARKS: dict[str, Callable[[argparse.Namespace], list[Figure]]] = {
    "local": lambda args: bench_local_overhead.run(args.quick),
    "llm": lambda args: bench_llm_scaling.run(args.quick),
    "queue": lambda args: bench_queue_growth.run(args.quick),
    "panel": lambda args: bench_panel.run(args.quick, args.log_mb),
    "preflight": lambda args: bench_preflight.run(args.quick),
    "safety": lambda args: bench_safety_corpus.run(args.quick),
    "budget": lambda args: bench_budget.run(args.quick),
    "postgres": lambda args: bench_postgres.run(args.quick),
    "fleet": lambda args: bench_fleet.run(args.quick),
    "peers": lambda args: bench_peers.run(args.quick),
    "cost": lambda args: bench_task_cost.run(args.quick),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names",
        nargs="*",
        choices=[[], *BENCHMARKS],
        metavar="NAME",
        help=f"any of {', '.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller log")
    parser.add_argument("--log-mb", type=int, help="the large log's size (default 1024)")
    args = parser.parse_args()
    print("machine:")
    print_machine()
    print(f"  before     {load_average()}")
    figures: list[Figure] = []
    for name in args.names or list(BENCHMARKS):
        print(f"\n== {name} ==", flush=True)
        start = time.monotonic()
        figures.extend(BENCHMARKS[name](args))
        print(f"  ({time.monotonic() - start:.0f} s)", flush=True)
    print(f"\nafter: {load_average()}\n")
    print_table(figures)


if __name__ == "__main__":
    main()
