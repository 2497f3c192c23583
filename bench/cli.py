"""How fast the command line answers, process start included, against a bare interpreter.

Run: ``python bench/cli.py [--runs N] [--bytecode-cache]``. Each command runs N times (default
10) in a fresh process, the commands taking turns; prints the median wall and CPU time of each
next to the baselines measured in the same run: ``python -c pass`` (the interpreter alone) and
importing every module the command line imported at its top before its imports moved into the
commands (the old ``import core.cli``). Target: ``--help`` and ``stats sample-size`` within
0.3 s wall.

The processes inherit the environment; where it sets PYTHONDONTWRITEBYTECODE (as the
development machines do) every run compiles the project's modules again. ``--bytecode-cache``
gives the runs a bytecode cache of their own in a temporary folder, as an ordinary install has.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 0.3

# What core/cli.py imported at its top before each command imported its own modules, with the
# numpy and scipy that core.stats then imported at its top.
OLD_CLI_IMPORTS = (
    "import numpy, scipy.optimize, scipy.stats, core.stats, core.abtest, core.access, "
    "core.backup, core.consent, core.cycles, core.datasets, core.demo, core.documents, "
    "core.errors, core.evals, core.generation, core.ingest, core.lint, core.paths, "
    "core.plan_files, core.plan_versions, core.privacy, core.promotion, core.retention, "
    "core.settings, core.store"
)

COMMANDS: dict[str, list[str]] = {
    "python -c pass (baseline)": ["-c", "pass"],
    "old `import core.cli` (every module)": ["-c", OLD_CLI_IMPORTS],
    "python -m core --help": ["-m", "core", "--help"],
    "python -m core stats sample-size": [
        "-m",
        "core",
        "stats",
        "sample-size",
        "--baseline",
        "0.1",
        "--mde",
        "0.01",
    ],
}


def _run(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each command (10)")
    parser.add_argument(
        "--bytecode-cache", action="store_true", help="let the runs keep compiled modules"
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        # A store path of its own: none of these commands may open it.
        env = {**os.environ, "FLYWHEEL_DB": str(Path(folder) / "bench.duckdb")}
        if options.bytecode_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(folder) / "pycache")
        cache = "on" if options.bytecode_cache or not sys.dont_write_bytecode else "off"
        for args in COMMANDS.values():  # warm the file and bytecode caches, untimed
            _run(args, env)
        walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
        cpus: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for _ in range(options.runs):
            for name, args in COMMANDS.items():
                wall, cpu = _run(args, env)
                walls[name].append(wall)
                cpus[name].append(cpu)
        opened = (Path(folder) / "bench.duckdb").exists()
    wall_of = {name: statistics.median(times) for name, times in walls.items()}
    bare = wall_of["python -c pass (baseline)"]
    old = wall_of["old `import core.cli` (every module)"]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{sys.executable}: median of {options.runs} runs each, bytecode cache {cache}, "
        f"load average {load}"
    )
    for name, wall in wall_of.items():
        cpu = statistics.median(cpus[name])
        print(
            f"{name:<38} {wall:6.3f} s wall  {cpu:6.3f} s CPU  "
            f"{wall - bare:+6.3f} s over the bare interpreter"
        )
    for name in ("python -m core --help", "python -m core stats sample-size"):
        verdict = "met" if wall_of[name] <= TARGET_S else "NOT MET"
        print(
            f"{name}: {wall_of[name] / old:.3f}x the old import's wall; "
            f"target ≤ {TARGET_S} s: {verdict}"
        )
    print(f"store opened by any run: {'YES' if opened else 'no'}")


if __name__ == "__main__":
    main()
