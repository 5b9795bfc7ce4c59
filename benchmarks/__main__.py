"""``scripts/bench``: the pipeline's throughput (benchmarks/pipeline.py), or with ``--memory``
the daemons' peak memory (benchmarks/memory.py). See benchmarks/README.md."""

from __future__ import annotations

import sys

from benchmarks import memory, pipeline
from benchmarks.harness import run_bench


def main(argv: list[str] | None = None) -> int:
    args = pipeline.parse_args(argv)
    if args.memory:
        return run_bench(args, memory.MemoryCheck, "memory", memory.render)
    return run_bench(args, pipeline.Bench, "pipeline", pipeline.render)


if __name__ == "__main__":
    sys.exit(main())
