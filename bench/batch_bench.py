"""`make bench` (second part): `sentmtl batch` on 20,000 texts against `sentmtl embed --file` and
`sentmtl predict --file`, and the Ray engine against the local one, as whole commands timed side by
side in one run (alternating, BENCH_BATCH_ROUNDS rounds; the median). Writes bench/batch.md (quoted in
the README) and bench/batch.json (read by docs/SCALE.md).

Not a test: timings on shared machines are noisy, so this reports, it does not assert.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BIN, log, machine, sentences, write_results  # noqa: E402

N = int(os.environ.get("BENCH_BATCH_N", "20000"))
ROUNDS = int(os.environ.get("BENCH_BATCH_ROUNDS", "2"))
ENV = dict(os.environ, SENTMTL_NO_PROGRESS="1")


def timed(cmd: list[str], out: Path | None = None) -> dict:
    """Wall time and peak RSS of one command (its children, Ray's actors among them, included)."""
    if out is not None and out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    t = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        _, status, usage = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"bench: {' '.join(cmd[:3])}… failed: {err.read().decode()[-500:]}")
    return {"s": dt, "rss_mb": usage.ru_maxrss / 1024}  # the command's own process (not Ray's actors)


def main() -> None:
    exe = str(BIN / "sentmtl")
    try:
        import ray  # noqa: F401

        has_ray = True
    except ImportError:
        has_ray = False
        log("note: Ray is not installed: the Ray engine is not measured (make setup installs it)")
    work = Path(tempfile.mkdtemp(prefix="sentmtl-batch-bench-"))
    try:
        src = work / "in.txt"
        src.write_text("\n".join(sentences(N)) + "\n", encoding="utf-8")
        out = work / "out"
        cases = {
            "embed --file (npy)": (
                [exe, "embed", "--file", str(src), "--format", "npy", "--output", str(work / "e.npy")],
                None,
            ),
            "batch local, embed": ([exe, "batch", str(src), str(out), "--tasks", "embed"], out),
            "predict --file (jsonl), all heads": (
                [exe, "predict", "--file", str(src), "--format", "jsonl", "--output", str(work / "p.jsonl")],
                None,
            ),
            "batch local, embed + all heads": ([exe, "batch", str(src), str(out)], out),
            "batch local, embed, int8": (
                [exe, "batch", str(src), str(out), "--tasks", "embed", "--backend", "onnx-int8"],
                out,
            ),
            "batch local, embed, 1 thread": (
                [exe, "batch", str(src), str(out), "--tasks", "embed", "--threads", "1"],
                out,
            ),
            "batch local, embed, int8, 1 thread": (
                [exe, "batch", str(src), str(out), "--tasks", "embed", "--backend", "onnx-int8", "--threads", "1"],
                out,
            ),
        }
        if has_ray:
            cases["batch ray, 2 workers, embed"] = (
                [
                    exe,
                    "batch",
                    str(src),
                    str(out),
                    "--tasks",
                    "embed",
                    "--engine",
                    "ray",
                    "--workers",
                    "2",
                    "--shard-rows",
                    "2500",
                ],
                out,
            )
            cases["batch ray, 2 workers, embed + all heads"] = (
                [exe, "batch", str(src), str(out), "--engine", "ray", "--workers", "2", "--shard-rows", "2500"],
                out,
            )
        times: dict[str, list[float]] = {k: [] for k in cases}
        rss: dict[str, float] = {}
        for r in range(ROUNDS):
            for name, (cmd, target) in cases.items():
                m = timed(cmd, target)
                times[name].append(m["s"])
                rss[name] = max(rss.get(name, 0.0), m["rss_mb"])
                log(f"  round {r + 1}: {name}: {times[name][-1]:.1f} s ({N / times[name][-1]:.0f} rows/s)")
        size = sum(p.stat().st_size for p in out.glob("part-*.parquet")) if out.exists() else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: N / v for k, v in med.items()}

    def ratio(a: str, b: str) -> str:
        per_round = [tb / ta for ta, tb in zip(times[a], times[b])]
        rng = f" (range {min(per_round):.2f}-{max(per_round):.2f})" if ROUNDS > 1 else ""
        return f"{med[b] / med[a]:.2f}x{rng}"

    def verdict(x: float, goal: float) -> str:
        return f">= {goal}x: {'met' if x >= goal else 'NOT met'}"

    rows = [
        (
            "local engine, embed",
            f"{rate['batch local, embed']:,.0f} rows/s",
            f"{ratio('batch local, embed', 'embed --file (npy)')} `sentmtl embed --file` ({rate['embed --file (npy)']:,.0f} rows/s)",
            verdict(med["embed --file (npy)"] / med["batch local, embed"], 0.95),
        ),
        (
            "local engine, embed + cls, sent, ner",
            f"{rate['batch local, embed + all heads']:,.0f} rows/s",
            f"{ratio('batch local, embed + all heads', 'predict --file (jsonl), all heads')} `sentmtl predict --file` "
            f"({rate['predict --file (jsonl), all heads']:,.0f} rows/s, which writes no embeddings)",
            "",
        ),
    ]
    if has_ray:
        rows += [
            (
                "Ray engine, 2 workers, embed",
                f"{rate['batch ray, 2 workers, embed']:,.0f} rows/s",
                f"{ratio('batch ray, 2 workers, embed', 'batch local, embed')} the local engine (Ray's start-up included)",
                verdict(med["batch local, embed"] / med["batch ray, 2 workers, embed"], 0.8),
            ),
            (
                "Ray engine, 2 workers, embed + all heads",
                f"{rate['batch ray, 2 workers, embed + all heads']:,.0f} rows/s",
                f"{ratio('batch ray, 2 workers, embed + all heads', 'batch local, embed + all heads')} the local engine",
                "",
            ),
        ]
    rows += [
        (
            "local engine, embed, per core (1 thread)",
            f"{rate['batch local, embed, 1 thread']:,.0f} rows/s fp32, {rate['batch local, embed, int8, 1 thread']:,.0f} int8",
            f"int8 with 2 threads: {rate['batch local, embed, int8']:,.0f} rows/s; peak memory of one "
            f"1-thread process (about one Ray actor): {rss['batch local, embed, 1 thread']:.0f} MB",
            "",
        )
    ]
    write_results(
        "batch",
        f"Measured by `make bench` on {time.strftime('%Y-%m-%d')} ({machine()}): {N:,} short sentences, whole commands "
        f"(start-up, model load and output writing included), each run {ROUNDS} times alternating with the others; "
        f"medians. The embed + all heads output was {size / 1e6:.0f} MB of parquet.",
        ["measure", "sentmtl batch", "ratio against the peer, same run", "goal"],
        rows,
        {"n": N, "rounds": ROUNDS, "seconds": times, "rows_per_s": rate, "peak_rss_mb": rss, "parquet_bytes": size},
    )


if __name__ == "__main__":
    main()
