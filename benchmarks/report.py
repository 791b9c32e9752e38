"""Run the benchmarks and rebuild ``benchmarks/results/README.md`` (one table of ratios) + PNG plots.

    python -m benchmarks.report                     # every benchmark (what `make bench` runs)
    python -m benchmarks.report --only data,flops   # a selection; the table keeps the others' last results
    python -m benchmarks.report --no-run            # rebuild the table and plots from the JSON files
    python -m benchmarks.report --quick --results-dir DIR   # smoke budget, tiny sizes, results elsewhere

Each benchmark runs as its own process (``python -m benchmarks.<module>``) and writes
``<results>/<name>.json``. Every row of the main table says its baseline, the command, the date,
the machine and the load average during the run (the machine is shared: ratios come from
interleaved repetitions against a baseline measured in the same run).

The ViT-g step is not re-run (it needs libaio-dev and ~10 GB per rank): its recorded
``vit_g_step.json`` (our 1-rank run) is compared with an outside figure for the official code on
1 rank that no code in this repository measures. Those rows go to a second table that says so;
they are not part of the "measured in one run" claim.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT, load_avg, machine, now

# name -> (module, full-run args, quick args); run in this order (quick data reads the quick shards).
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "sharding": ("bench_shard", [], ["--quick", "--keep", "{results}/tmp_quick_shards"]),
    # planning a synthetic 1M-row manifest (no video read): SQLite plan vs the in-memory lists before it
    "shard_plan": ("bench_shard_plan", [], ["--quick"]),
    # shard.remux: stream copy of H.264 sources within the limits vs decoding and re-encoding them
    "ingest": ("bench_ingest", [], ["--quick"]),
    "data_loading": ("bench_data", ["--profile"], ["--quick", "--shards", "{results}/tmp_quick_shards"]),
    # the fine-tuning augmentation (official VideoMAE V2 vs the pre-training crop) on the same shards
    "data_loading_finetune": ("bench_data", ["--finetune", "--views", "2", "--batch", "8", "--clips", "16",
                                             "--reps", "4"],
                              ["--finetune", "--quick", "--shards", "{results}/tmp_quick_shards"]),
    # 1 thread: on a small shared machine 2 threads straggle behind other jobs (and bench_model's
    # earlier record used 1); flops times its step and matmul at the same count.
    "model_step": ("bench_model", ["--reps", "5", "--threads", "1"], ["--quick"]),
    "flops": ("bench_flops", ["--threads", "1", "--model-step", "{results}/model_step.json"],
              ["--quick", "--model-step", "{results}/model_step.json"]),
    "zero_memory": ("bench_zero", [], ["--quick"]),
    "handoff": ("bench_handoff", [], ["--quick"]),
    "startup": ("bench_startup", [], ["--quick"]),
    # decord2 3.4.0 vs decord 0.6.0 vs PyAV: frames on every fixture video, bad-file handling, speed
    "decoders": ("bench_decoders", [], ["--quick"]),
}
ALIASES = {"remux": "ingest", "hand-off": "handoff", "shard": "sharding", "plan": "shard_plan", "data": "data_loading", "model": "model_step", "zero": "zero_memory",
           "augment": "data_loading_finetune", "decord": "decoders"}
VIT_G = "vit_g_step"
VIT_G_LABEL = "zero3-bf16-nvme-optimizer-1rank"
VIT_G_COMMAND = ("make vit-g-step RANKS=1  (python -m benchmarks.vit_g_step --config "
                 f"jobs/configs/pretrain/vit_g_offload.toml --ranks 1 --steps 3 --label {VIT_G_LABEL})")
OUTSIDE = ("OUTSIDE FIGURE, not re-measured: official VideoMAE V2 model code, ZeRO-3 + NVMe optimizer, 1 rank, "
           "as reported in issue 4 (no code in this repository measures it)")


def run_one(name: str, results: Path, quick: bool) -> float:
    module, full, fast = BENCHMARKS[name]
    args = [a.format(results=results) for a in (fast if quick else full)]
    out = results / f"{name}.json"
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *args, "--out", str(out)]
    shown = " ".join(["python -m", f"benchmarks.{module}", *args]).replace(f"{ROOT}/", "")  # repo-relative
    print(f"\n=== {name}: {shown}", flush=True)
    before, start = load_avg(), time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    data = json.loads(out.read_text())
    data["command"] = shown  # without the --out the report adds
    if "date" not in data:  # bench_model writes no run facts of its own
        data.update(benchmark=name, date=now(), command=shown, wall_s=round(time.time() - start, 1),
                    load_avg_before=before, load_avg_after=load_avg(), machine=machine())
    out.write_text(json.dumps(data, indent=1) + "\n")
    return time.time() - start


# ------------------------------------------------------------------------------------------------
# Rows of the table


def _machine_text(m: dict[str, Any]) -> str:
    cores = m.get("cores") or m.get("cpus")
    mem = m.get("memory_gib") or m.get("memory_gb")
    return f"{cores} cores, {mem} GiB" + (f", {m['cpu']}" if m.get("cpu") else "")


def vit_g_figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Our recorded 1-rank ViT-g step against the outside 1-rank figure: 1 rank x 1 clip on both sides."""
    run = next(r for r in data["runs"] if r["label"] == VIT_G_LABEL)
    base = data["baseline_issue_4"]["zero3_nvme_optimizer_1rank"]
    peak = max(run["peak_rss_gb_per_rank"])
    ours = (f"ours recorded by vit_g_step: {run['ranks']} rank x {run['micro_batch']} clip, "
            f"{run['threads_per_rank']} threads; median of {len(run['per_rank'][0]['steps']) - 1} steps after the "
            "first; the outside figure's thread count is not known")
    return [
        {"name": "ViT-g (1B) pre-training step, ZeRO-3 bf16 + NVMe optimizer, 1 rank: s/step",
         "ratio": base["step_s"] / run["step_s"], "ours": run["step_s"], "baseline": base["step_s"], "unit": "s/step, 1 clip (ratio = baseline / ours)",
         "baseline_name": OUTSIDE, "detail": ours, "outside": True},
        {"name": "ViT-g (1B) step, 1 rank: peak RSS", "ratio": base["peak_rss_gb"] / peak, "ours": peak,
         "baseline": base["peak_rss_gb"], "unit": "GB (ratio = baseline / ours)", "baseline_name": OUTSIDE,
         "detail": f"{ours}; kernel ru_maxrss high-water mark", "outside": True},
    ]


def _git_date(path: Path) -> str:
    try:  # read-only: when the recorded result was committed
        out = subprocess.run(["git", "log", "-1", "--format=%cs", "--", str(path)], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "recorded earlier"


def collect(results: Path) -> list[dict[str, Any]]:
    """Every figure with its run facts, in table order."""
    rows = []
    for name in BENCHMARKS:
        path = results / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        figs = data.get("figures", [])
        load, after = data.get("load_avg_before") or [], data.get("load_avg_after") or []
        for f in figs:
            rows.append({**f, "benchmark": name, "command": data.get("command", ""), "date": data.get("date", ""),
                         "machine": _machine_text(data.get("machine", {})),
                         "load": ("/".join(f"{x:.1f}" for x in load[:3]) if load else "")
                                 + (f" -> {after[0]:.1f}" if after else "")})
    vit_g = RESULTS / f"{VIT_G}.json"
    if vit_g.exists():
        data = json.loads(vit_g.read_text())
        for f in vit_g_figures(data):
            rows.append({**f, "benchmark": VIT_G, "command": VIT_G_COMMAND,
                         "date": data.get("recorded_on", _git_date(vit_g)) + ", ours not re-run",
                         "machine": _machine_text(data.get("machine", {})), "load": "shared"})
    return rows


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


HEADER = ("| benchmark | figure | ratio | ours | baseline | unit | baseline is | detail | command | date | machine "
          "| load 1/5/15 at start -> 1 min at end |")


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [HEADER, "|---|---|---:|---:|---:|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["benchmark"], r["name"], f"**{r['ratio']:.2f}**" if r["ratio"] >= 0.01 else f"**{r['ratio']:.3f}**",
                 _num(r["ours"]), _num(r["baseline"]), r["unit"], r["baseline_name"], r.get("detail", ""),
                 f"`{r['command']}`", r["date"], r["machine"], r["load"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return lines


def markdown(rows: list[dict[str, Any]], results: Path) -> str:
    measured = [r for r in rows if not r.get("outside")]
    outside = [r for r in rows if r.get("outside")]
    lines = ["# Benchmark results", "",
             "Written by `make bench` (`python -m benchmarks.report`). Every figure in the first table is a **ratio "
             "measured in one run against a baseline on the same machine and data**: ours and the baseline run in "
             "interleaved rounds, the ratio is taken per round and the median over rounds is shown, because the "
             "machine is shared with other jobs (the load averages at the start and the 1-minute load at the end "
             "of each run are in the last column). "
             "Ratios > 1 favour ours, except the ZeRO rows (measured / estimated: 1 = the plan is right) and the "
             "FLOP/s rows (achieved / matmul ceiling). Details, every repetition and the profiles are in the JSON "
             "next to this file.", "", *_table(measured)]
    if outside:
        lines += ["", "## Against an outside figure (not measured in one run)", "",
                  "The baseline of these rows was typed in from an earlier report (issue 4); no code in this "
                  "repository measures it and `make bench` does not re-run either side. Ours is our own recorded "
                  "run (same model, input, ZeRO stage, precision and offload, 1 rank x 1 clip on both sides). "
                  "Read them as indications, not as ratios measured in one run.", "", *_table(outside)]
    lines += ["", "Plots: " + ", ".join(f"[{p.name}]({p.name})" for p in sorted(results.glob("*.png"))), ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], results: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for bench in dict.fromkeys(r["benchmark"] for r in rows):
        sub = [r for r in rows if r["benchmark"] == bench]
        fig, ax = plt.subplots(figsize=(11, 0.8 + 0.45 * len(sub)))
        names = [r["name"] for r in sub]
        ratios = [r["ratio"] for r in sub]
        ax.barh(range(len(sub)), ratios, color=["tab:green" if x >= 1 else "tab:orange" for x in ratios])
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(sub)), [n[:80] for n in names], fontsize=7)
        ax.invert_yaxis()
        for i, x in enumerate(ratios):
            ax.text(x, i, f" {x:.2f}", va="center", fontsize=8)
        ax.set_xlabel("ratio")
        outside = " - baseline: outside figure, not re-measured" if sub[0].get("outside") else ""
        ax.set_title(f"{bench} ({sub[0]['date']}){outside}", fontsize=9)
        fig.tight_layout()
        path = results / f"{bench}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help=f"comma-separated: {', '.join(BENCHMARKS)} (or data, model, shard, zero)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (smoke test)")
    p.add_argument("--no-run", action="store_true", help="only rebuild README.md and the plots")
    p.add_argument("--results-dir", default="", help=f"default {RESULTS} ({RESULTS}/tmp/quick with --quick)")
    args = p.parse_args(argv)
    # smoke results never replace the real ones
    results = Path(args.results_dir) if args.results_dir else RESULTS / "tmp" / "quick" if args.quick else RESULTS
    results.mkdir(parents=True, exist_ok=True)
    chosen = [ALIASES.get(n, n) for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    failed = []
    if not args.no_run:
        for name in BENCHMARKS:  # registry order: quick data needs the quick shards
            if name in chosen:
                try:
                    secs = run_one(name, results, args.quick)
                except subprocess.CalledProcessError as exc:  # the others still run; the table keeps its last result
                    failed.append(name)
                    print(f"=== {name}: FAILED (exit {exc.returncode})", flush=True)
                else:
                    print(f"=== {name}: {secs:.0f} s", flush=True)
    rows = collect(results)
    plot(rows, results)
    (results / "README.md").write_text(markdown(rows, results))
    print(f"\n{len(rows)} figures -> {results / 'README.md'}")
    for r in rows:
        print(f"  {r['ratio']:7.3f}  {r['name']}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
