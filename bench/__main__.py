"""The relay benchmark: ``python -m bench`` (see bench/README section in RESULTS.md).

Starts the fast fake upstream, then each relay in its own process, drives the
same scenarios against each with websocket clients in this process, and writes
the tables into ``bench/RESULTS.md`` (between the ``results`` markers). The
relay's CPU time and memory are read with psutil from its process. Everything
runs on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from bench.load import RELAYS, bench
from bench.report import RESULTS, report, write_results
from bench.scenarios import FULL, QUICK, Result
from bench.upstream import run


# Only the command line is here. The rest: bench.scenarios (what runs), bench.processes
# (starting the servers), bench.load (driving and timing them), bench.report (the tables).
def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny scenarios (for the test suite)")
    parser.add_argument("--relays", default=",".join(RELAYS), help=f"comma-separated: {RELAYS}")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the Markdown file to update")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    parser.add_argument("--only", help="run only the scenarios whose name contains this text")
    args = parser.parse_args()
    relays = [r for r in args.relays.split(",") if r]
    unknown = set(relays) - set(RELAYS)
    if unknown:
        parser.error(f"unknown relays: {sorted(unknown)}")
    scenarios = QUICK if args.quick else FULL
    if args.only:
        scenarios = [s for s in scenarios if args.only in s.name]
    holder: list[list[Result]] = []

    async def go() -> None:
        holder.append(await bench(relays, scenarios))

    run(go())
    results = holder[0]
    command = "python -m bench" + (" --quick" if args.quick else "")
    write_results(report(results, command), args.output)
    if args.json:
        args.json.write_text(
            json.dumps(
                [{**asdict(r), "tokens_per_cpu_s": r.tokens_per_cpu_s} for r in results], indent=1
            )
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
