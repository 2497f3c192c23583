"""Local training benchmark: ``python bench/train.py [--rows N] [--repeat N] [--max-steps N]``.

On a tiny Llama built on the fly (tests/tiny_lm.py: a word-level tokenizer and random weights,
nothing downloaded) and an N-row chat export (default 1,000), it runs, alternating, --repeat
times each (default 2), in fresh processes:
  ours   Flywheel's local LoRA job (python -m core.training.worker JOB_DIR): TRL SFTTrainer +
         PEFT with progress, metrics, events and checkpoints written to the job directory,
         weights hashed at the end
  bare   bench/bare_sft.py: a bare TRL SFTTrainer + PEFT script with the same model, data and
         settings
and prints the median wall time of each (process start to exit, imports included), the
training throughput (trained tokens per second), the ratio ours / bare (target ≤ 1.10x) and
the peak RSS of each process, and the CPU-time ratio (steadier than wall time on a shared
machine). On a machine with a GPU both use it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "bench" / "out" / "train"

from core.plan import LocalTraining  # noqa: E402
from core.training.local import LocalJob, _worker_env  # noqa: E402


def _run(command: list[str]) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds, peak RSS in MB, and stdout of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, env=_worker_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    out = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{command} failed with status {status}")
    return wall, usage.ru_utime + usage.ru_stime, int(usage.ru_maxrss / 1024), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=0, help="0 = one epoch")
    args = parser.parse_args()

    from tiny_lm import build_tiny_lm, write_export

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    model = build_tiny_lm(OUT / "tiny-model")
    export = write_export(OUT / "train.jsonl", args.rows)
    settings = LocalTraining(
        base_model=str(model),
        epochs=1,
        learning_rate=1e-3,
        batch_size=8,
        max_seq_length=128,
        save_steps=50,
    ).model_dump(mode="json")

    def job_spec(name: str) -> Path:
        job = LocalJob(OUT / name)
        shutil.rmtree(job.path, ignore_errors=True)
        job.write_spec(
            {
                "job_id": name,
                "base_model": str(model),
                "settings": settings,
                "max_steps": args.max_steps or None,
                "train_file": str(export),
                "validation_file": None,
                "model_name": name,
            }
        )
        return job.path

    ours: list[tuple[float, float, int, int]] = []
    bare: list[tuple[float, float, int, int]] = []
    for n in range(args.repeat):
        folder = job_spec(f"ours-{n}")
        wall, cpu, rss, _ = _run([sys.executable, "-m", "core.training.worker", str(folder)])
        state = LocalJob(folder).state()
        assert state["status"] == "succeeded", state
        ours.append((wall, cpu, rss, int(state["trained_tokens"])))
        folder = job_spec(f"bare-{n}")
        wall, cpu, rss, out = _run([sys.executable, "bench/bare_sft.py", str(folder / "spec.json")])
        bare.append((wall, cpu, rss, int(out.strip().splitlines()[-1])))

    def line(name: str, runs: list[tuple[float, float, int, int]]) -> tuple[float, float]:
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        tokens = runs[0][3]
        print(
            f"{name:<6}: {wall:7.2f} s wall, {cpu:7.2f} s CPU (medians of {len(runs)}), "
            f"{tokens:,} tokens, {tokens / wall:8.1f} tokens/s, "
            f"peak RSS {max(r[2] for r in runs):,} MB"
        )
        return wall, cpu

    device = "cuda" if _cuda() else "cpu"
    print(f"tiny Llama, {args.rows:,}-row export, 1 epoch of batch 8, on {device}")
    ours_wall, ours_cpu = line("ours", ours)
    bare_wall, bare_cpu = line("bare", bare)
    print(
        f"ours / bare: {ours_wall / bare_wall:.3f}x wall time (target ≤ 1.10x), "
        f"{ours_cpu / bare_cpu:.3f}x CPU time"
    )
    print(f"this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


if __name__ == "__main__":
    main()
