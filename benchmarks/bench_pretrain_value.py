"""Does our pre-training help downstream? Dual-masked MAE pre-training vs random init, same fine-tuning.

The real jobs, in-process (as the integration tests run them), on CPU:

    generate_synthetic (motion classes; unlabelled/train/val/test)  ->  pipeline.orchestration.sharding.shard
    per seed s (pre-training AND fine-tuning seed):
      jobs.pretrain   on the splits unlabelled+train (the MAE loss never reads labels)
      jobs.finetune   twice, identical recipe and seed: model.init=<pre-training run> / random init,
                      validated on val every ``--val-every`` steps (the candidate budgets)
      budget          chosen on the val curve only (:func:`select_and_test`): the first step with the
                      best val top-1; the job keeps exactly that checkpoint as ``export/best``
      jobs.evaluate   multi-view on val and, once, on test, at the chosen budget only

The candidate budgets come from one fine-tuning curve per init and seed: a budget of N steps means
"the weights after N steps of a ``--finetune-steps`` run" (its cosine schedule spans the whole run),
not a separate N-step run. Test is never read to choose anything.

Pre-training reads the same shard set as fine-tuning, splits ``unlabelled`` (videos that exist
only for pre-training) and ``train``: the loader yields the ``.cls`` label alongside each clip but
the MAE objective never uses it. Val/test videos are never seen by pre-training. The defaults are
the recipe that learns on 2 CPU cores (see ``results/pretrain_value.md``): the 4 translation
classes, 8 px patches, raw-pixel MAE targets.

Every run is appended to ``benchmarks/results/pretrain_value.json`` (nothing is dropped; every
budget's val row is kept) and the Markdown table ``pretrain_value.md`` is rebuilt from it.

    python -m benchmarks.bench_pretrain_value                       # 3 seeds, ~15 min of 2 cores per seed
    python -m benchmarks.bench_pretrain_value --seeds 0 --pretrain-steps 300 --tag reduced
    python -m benchmarks.bench_pretrain_value --quick               # smoke (tiny budgets, not recorded)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import command

REPO = Path(__file__).resolve().parents[1]
HAND_WRITTEN = "<!-- hand-written notes below: kept when the table above is regenerated -->"
RESULTS = REPO / "benchmarks" / "results"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="/tmp/tubelet-bench-pretrain-value")
    p.add_argument("--tag", default="default", help="name of this configuration in the results")
    p.add_argument("--classes", default="left,right,up,down", help="synthetic motion classes")
    p.add_argument("--per-class", type=int, default=50, help="labelled videos per class (train/val/test 0.6/0.2/0.2)")
    p.add_argument("--unlabelled-per-class", type=int, default=100, help="extra videos per class for pre-training only")
    p.add_argument("--texture", type=float, default=1.0, help="background texture (1 = the dataset's default, 0 = flat)")
    p.add_argument("--noise", type=float, default=2.0, help="per-frame sensor noise (0-255 levels)")
    p.add_argument("--video-size", type=int, default=64)
    p.add_argument("--video-frames", type=int, default=32)
    p.add_argument("--img-size", type=int, default=64, help="model / crop side")
    p.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    p.add_argument("--sampling-rate", type=int, default=4)
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--patch-size", type=int, default=8, help="0 = the model size's own (16)")
    p.add_argument("--target", choices=("raw", "normalized"), default="raw", help="MAE target pixels")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--cpus-per-worker", type=int, default=2)
    p.add_argument("--pretrain-steps", type=int, default=1000)
    p.add_argument("--pretrain-batch", type=int, default=16)
    p.add_argument("--pretrain-lr", type=float, default=1.5e-3)
    p.add_argument("--encoder-ratio", type=float, default=0.75)
    p.add_argument("--decoder-ratio", type=float, default=0.5)
    p.add_argument("--finetune-steps", type=int, default=300, help="the largest fine-tuning budget (one run)")
    p.add_argument("--val-every", type=int, default=25, help="steps between candidate budgets (validated on val)")
    p.add_argument("--finetune-batch", type=int, default=16)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--layer-decay", type=float, default=1.0)
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--repeated-aug", type=int, default=1, help="views per clip in a batch (both phases)")
    p.add_argument("--mixup", type=float, default=0.0, help="mixup/cutmix probability (0 = off)")
    p.add_argument("--eval-clips", type=int, default=2)
    p.add_argument("--eval-crops", type=int, default=2)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated: each seeds pre-training and fine-tuning")
    p.add_argument("--reuse-data", action="store_true", help="keep the shards already in --workdir")
    p.add_argument("--note", default="", help="free text kept with this configuration's results")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny budgets, results not recorded")
    a = p.parse_args(argv)
    if a.quick:
        a.per_class, a.unlabelled_per_class, a.pretrain_steps, a.finetune_steps, a.tag = 5, 5, 4, 4, "quick"
        a.pretrain_batch = a.finetune_batch = 4
        a.val_every, a.seeds = 2, "0"
    a.classes = a.classes.split(",")
    a.seeds = [int(x) for x in str(a.seeds).split(",") if x != ""]
    if not a.seeds or a.val_every < 1 or a.finetune_steps % a.val_every:
        p.error(f"--seeds {a.seeds} / --val-every {a.val_every}: give at least one seed and a --val-every that "
                f"divides --finetune-steps {a.finetune_steps} (e.g. --val-every 25 for 300)")
    return a


def _metric_history(uri: str, run_name: str, metric: str) -> dict[int, float]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tubelet")
    runs = client.search_runs(exp.experiment_id, filter_string=f"attributes.run_name = '{run_name}'")
    if not runs:
        return {}
    return {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, metric)}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def make_data(a: argparse.Namespace, work: Path) -> tuple[Path, dict[str, int]]:
    from pipeline.data.synthetic import generate_synthetic
    from pipeline.orchestration.sharding import ShardSection, shard

    out = work / "shards"
    if a.reuse_data and (out / "index.json").exists():
        return out, json.loads((work / "split_counts.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    total = a.per_class + a.unlabelled_per_class
    splits = {"unlabelled": a.unlabelled_per_class / total, "train": 0.6 * a.per_class / total,
              "val": 0.2 * a.per_class / total, "test": 0.2 * a.per_class / total}
    entries = generate_synthetic(work / "synthetic", num_per_class=total, classes=a.classes,
                                 frames=a.video_frames, size=(a.video_size, a.video_size), splits=splits,
                                 seed=0, workers=2, noise=a.noise, texture=a.texture)
    rows = ["uri,label,split"] + [f"{e.uri},{e.label},{e.split}" for e in entries]
    (work / "manifest.csv").write_text("\n".join(rows) + "\n")
    index, _ = shard(ShardSection(manifest=str(work / "manifest.csv"), output=str(out),
                                  max_short_side=a.video_size, videos_per_shard=32, progress=False))
    counts = {s: sum(e.split == s for e in entries) for s in splits}
    (work / "split_counts.json").write_text(json.dumps(counts))
    assert index["totals"]["samples"] == len(entries)
    return out, counts


def _size(a: argparse.Namespace) -> list[str]:
    return [f"model.name={a.model}", f"model.num_frames={a.num_frames}", f"model.img_size={a.img_size}",
            f"model.patch_size={a.patch_size}",
            f"data.sampling_rate={a.sampling_rate}", "data.num_workers=0"]


def _common(a: argparse.Namespace, work: Path, seed: int) -> list[str]:
    return [f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}", "tracking.system_metrics=false",
            f"scaling.num_workers={a.workers}", f"scaling.cpus_per_worker={a.cpus_per_worker}",
            f"run.seed={seed}", f"data.seed={seed}"]  # model init and data order / augmentation


def pretrain(a: argparse.Namespace, work: Path, shards: Path, name: str, seed: int) -> dict[str, Any]:
    from jobs.pretrain import run
    from pipeline.core.config import load_config
    from pipeline.train.job_configs import PretrainConfig

    if (work / "runs" / name).exists():
        shutil.rmtree(work / "runs" / name)  # a same-named run would resume, not restart
    cfg = load_config(PretrainConfig, REPO / "jobs/configs/pretrain/demo.toml", [
        f"data.shards={shards}", "data.split=unlabelled+train", f"run.output={work / 'runs'}", f"run.name={name}",
        *_size(a), f"model.normalize_target={str(a.target == 'normalized').lower()}",
        f"data.batch_size={a.pretrain_batch}", f"data.repeated_aug={a.repeated_aug}", f"optim.lr={a.pretrain_lr}",
        f"mask.encoder_ratio={a.encoder_ratio}", f"mask.decoder_ratio={a.decoder_ratio}",
        f"train.steps={a.pretrain_steps}", f"train.checkpoint_every={a.pretrain_steps}", "train.log_every=10",
        "train.image_every=0", *_common(a, work, seed)])
    t0 = time.perf_counter()
    assert run(cfg) == 0
    wall = time.perf_counter() - t0
    losses = _metric_history(f"sqlite:///{work / 'mlflow.db'}", name, "loss/train")
    steps = sorted(losses)
    k = max(1, min(3, len(steps) // 4))
    first, last = _mean([losses[s] for s in steps[:k]]), _mean([losses[s] for s in steps[-k:]])
    print(f"[bench] pre-training {name}: {a.pretrain_steps} steps in {wall:.0f}s, loss {first:.4f} -> {last:.4f}")
    return {"run": str(work / "runs" / name), "seed": seed, "steps": a.pretrain_steps, "batch_per_rank": a.pretrain_batch,
            "workers": a.workers, "clips_seen": a.pretrain_steps * a.pretrain_batch * a.workers,
            "lr": a.pretrain_lr, "encoder_ratio": a.encoder_ratio, "decoder_ratio": a.decoder_ratio,
            "target": a.target, "clips": "unlabelled+train",
            "loss_first": first, "loss_last": last, "loss_curve": {str(s): losses[s] for s in steps},
            "wall_s": round(wall, 1)}


def finetune(a: argparse.Namespace, work: Path, shards: Path, name: str, init: str, seed: int) -> dict[str, Any]:
    from jobs import finetune as job
    from pipeline.core.config import load_config
    from pipeline.train.job_configs import FinetuneConfig

    if (work / "runs" / name).exists():
        shutil.rmtree(work / "runs" / name)  # a same-named run would resume, not restart
    cfg = load_config(FinetuneConfig, REPO / "jobs/configs/finetune/demo.toml", [
        f"data.shards={shards}", f"run.output={work / 'runs'}", f"run.name={name}", *_size(a),
        f"model.init={init}", f"model.drop_path={a.drop_path}", f"data.batch_size={a.finetune_batch}",
        f"data.repeated_aug={a.repeated_aug}", f"model.num_classes={len(a.classes)}", f"optim.lr={a.finetune_lr}", f"optim.layer_decay={a.layer_decay}",
        f"mixup.prob={a.mixup}", f"train.steps={a.finetune_steps}", f"train.checkpoint_every={a.finetune_steps}",
        "finetune.val_split=val", f"finetune.val_every={a.val_every}", f"finetune.val_num_clips={a.eval_clips}",
        f"finetune.val_num_crops={a.eval_crops}", "finetune.keep=best",
        "train.log_every=10", "tracking.registered_model=", *_common(a, work, seed)])
    t0 = time.perf_counter()
    assert job.run(cfg) == 0
    wall = time.perf_counter() - t0
    uri = f"sqlite:///{work / 'mlflow.db'}"
    losses = _metric_history(uri, name, "loss/train")
    val = _metric_history(uri, name, "val_top1")
    steps = sorted(losses)
    k = max(1, min(5, len(steps) // 4))
    card = json.loads((Path(job.kept_folder(cfg)) / "model.json").read_text())
    print(f"[bench] fine-tuning {name}: {a.finetune_steps} steps in {wall:.0f}s, val_top1 per budget {val}")
    return {"run": str(work / "runs" / name), "init": init or "random", "seed": seed, "steps": a.finetune_steps,
            "batch_per_rank": a.finetune_batch, "workers": a.workers, "lr": a.finetune_lr,
            "layer_decay": a.layer_decay, "drop_path": a.drop_path, "mixup_prob": a.mixup,
            "loss_first": _mean([losses[s] for s in steps[:k]]), "loss_last": _mean([losses[s] for s in steps[-k:]]),
            "val_top1_per_budget": {str(s): v for s, v in sorted(val.items())},
            "kept": {"step": card["source"].get("step"), "metrics": card.get("metrics")}, "wall_s": round(wall, 1)}


def evaluate(a: argparse.Namespace, work: Path, shards: Path, name: str, split: str, seed: int) -> dict[str, Any]:
    from jobs import evaluate as job
    from pipeline.core.config import load_config
    from pipeline.train.job_configs import EvaluateConfig

    out = work / "eval" / f"{name}-{split}"
    cfg = load_config(EvaluateConfig, REPO / "jobs/configs/evaluate/demo.toml", [
        f"data.shards={shards}", f"data.split={split}", *_size(a), f"data.test_num_clips={a.eval_clips}",
        f"data.test_num_crops={a.eval_crops}", "data.batch_size=4", f"model.init={work / 'runs' / name}",
        f"run.output={out}", f"run.name={name}-{split}", *_common(a, work, seed)])
    t0 = time.perf_counter()
    assert job.run(cfg) == 0
    wall = time.perf_counter() - t0
    r = json.loads((out / "report.json").read_text())
    return {"top1": r["top1"], "top5": r.get("top5"), "num_videos": r["num_videos"],
            "views_per_video": r["views_per_video"], "per_class": r.get("per_class"), "wall_s": round(wall, 1)}


def choose_budget(val_curve: dict[int, float]) -> int:
    """The fine-tuning budget (steps) with the best val top-1; the smallest on a tie, as the job's
    ``export/best`` keeps the first best. Only the val curve goes in: test cannot sway it."""
    if not val_curve:
        raise ValueError("no val top-1 was logged: set finetune.val_split=val and a val_every")
    best = max(val_curve.values())
    return min(step for step, top1 in val_curve.items() if top1 == best)


def select_and_test(val_curve: dict[int, float], test_at: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    """Choose the budget on ``val_curve``, then read test once, at that budget only."""
    chosen = choose_budget(val_curve)
    return {"budgets": [{"steps": step, "val_top1": top1, "chosen": step == chosen}
                        for step, top1 in sorted(val_curve.items())],
            "chosen_steps": chosen, "test": test_at(chosen)}


def run_init(a: argparse.Namespace, work: Path, shards: Path, name: str, init: str, seed: int) -> dict[str, Any]:
    """Fine-tune one init with one seed; budget chosen on val; val and test evaluated at that budget."""
    ft = finetune(a, work, shards, name, init, seed)
    curve = {int(k): v for k, v in ft["val_top1_per_budget"].items()}

    def test_at(steps: int) -> dict[str, Any]:
        # jobs.evaluate reads the run's export/best: the job kept it at its first best val step
        if ft["kept"]["step"] != steps:
            raise RuntimeError(f"{name}: the job kept step {ft['kept']['step']}, the val curve's best is {steps}")
        return evaluate(a, work, shards, name, "test", seed)

    picked = select_and_test(curve, test_at)
    return {"finetune": ft, **picked, "val": evaluate(a, work, shards, name, "val", seed)}


def run_seed(a: argparse.Namespace, work: Path, shards: Path, seed: int) -> dict[str, Any]:
    """Pre-train with ``seed``, fine-tune both inits with ``seed``."""
    t0 = time.perf_counter()
    pt = pretrain(a, work, shards, f"pt-{a.tag}-s{seed}", seed)
    results = {}
    for init_name, init in (("pretrained", pt["run"]), ("random", "random")):
        results[init_name] = run_init(a, work, shards, f"ft-{a.tag}-s{seed}-{init_name}", init, seed)
        r = results[init_name]
        print(f"[bench] seed {seed} {init_name}: budget {r['chosen_steps']} (val)  val {r['val']['top1']:.3f}  "
              f"test {r['test']['top1']:.3f}")
    return {"seed": seed, "pretrain": pt, "results": results, "wall_s": round(time.perf_counter() - t0, 1),
            "delta_test_top1": results["pretrained"]["test"]["top1"] - results["random"]["test"]["top1"],
            "delta_val_top1": results["pretrained"]["val"]["top1"] - results["random"]["val"]["top1"]}


# ------------------------------------------------------------------------------------------------
# The Markdown file, generated from the JSON


def _arch(s: dict[str, Any]) -> str:
    return f"{s['model']} {s['num_frames']}x{s['img_size']} p{s.get('patch_size') or 16} {s.get('target', 'normalized')}"


def _pt_budget(pt: dict[str, Any]) -> str:
    return (f"{pt['steps']} steps x {pt['batch_per_rank'] * pt['workers']} clips, lr {pt['lr']:g}, "
            f"mask {pt['encoder_ratio']}/{pt['decoder_ratio']}, loss {pt['loss_first']:.3f}->{pt['loss_last']:.3f}")


def _budget_table(e: dict[str, Any]) -> list[str]:
    """Every candidate budget of every seed and init: val top-1; test only where val chose."""
    lines = ["| seed | init | fine-tuning budget (steps of one run) | val top-1 (in-training, same views) | "
             "chosen on val | test top-1 |", "|---|---|---:|---:|---|---:|"]
    for run in e["seeds"]:
        for init in ("pretrained", "random"):
            r = run["results"][init]
            for b in r["budgets"]:
                test = f"{r['test']['top1']:.3f}" if b["chosen"] else "not read"
                lines.append(f"| {run['seed']} | {init} | {b['steps']} | {b['val_top1']:.3f} | "
                             f"{'**yes**' if b['chosen'] else ''} | {test} |")
    return lines


def _summary_table(e: dict[str, Any]) -> list[str]:
    lines = ["| seed | pre-training | chosen budget pre-trained / random | val top-1 pre-trained / random "
             "(jobs.evaluate) | test top-1 pre-trained / random | test delta |", "|---|---|---|---|---|---:|"]
    for run in e["seeds"]:
        p, r = run["results"]["pretrained"], run["results"]["random"]
        lines.append(f"| {run['seed']} | {_pt_budget(run['pretrain'])} | {p['chosen_steps']} / {r['chosen_steps']} | "
                     f"{p['val']['top1']:.3f} / {r['val']['top1']:.3f} | {p['test']['top1']:.3f} / "
                     f"{r['test']['top1']:.3f} | {run['delta_test_top1']:+.3f} |")
    deltas = [run["delta_test_top1"] for run in e["seeds"]]
    lines.append(f"| **mean of {len(deltas)}** | | | | | **{_mean(deltas):+.3f}** |")
    return lines


def _entry_markdown(e: dict[str, Any]) -> list[str]:
    s = e["settings"]
    return [f"### {e['tag']} ({_arch(s)}), {e['when']}", "",
            f"Command: `{e['command']}`. Data: {e['data']['description']}. Fine-tuning: up to "
            f"{s['finetune_steps']} steps x {s['finetune_batch'] * s['workers']} clips, lr {s['finetune_lr']:g}, "
            f"ld {s['layer_decay']}, mixup {s['mixup']:g}, validated on val every {s['val_every']} steps with "
            f"{s['eval_clips']} clips x {s['eval_crops']} crops; seeds {s['seeds']} (each seeds its pre-training and "
            f"both fine-tunings). Total wall {e['wall_s']:.0f} s. {e.get('note', '')}", "",
            *_summary_table(e), "", *_budget_table(e), ""]


def _legacy_markdown(entries: list[dict[str, Any]]) -> list[str]:
    """Runs recorded before the budget was chosen on val: one fixed budget each, as they were run."""
    lines = ["## Earlier runs: one fixed fine-tuning budget (not chosen on val)", "",
             "Recorded before this benchmark chose the budget on val. Their budget was fixed per run; the "
             "150-step default was picked after val AND test had been read at 100, 150 and 300 steps, and the "
             "seed variants shared one pre-training run. Kept for the record; they are not evidence.", "",
             "| config | init | pre-training budget | fine-tuning budget | val top-1 | val top-5 | test top-1 | "
             "test top-5 | wall (pt / ft) |", "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        pt = e["pretrain"]
        for init in ("pretrained", "random"):
            r = e["results"][init]
            ft = r["finetune"]
            ft_budget = (f"{ft['steps']} steps x {ft['batch_per_rank'] * ft['workers']} clips, lr {ft['lr']:g}, "
                         f"ld {ft['layer_decay']}, mixup {ft['mixup_prob']:g}")
            v, t = r["val"], r["test"]
            lines.append(f"| {e['tag']} ({_arch(e['settings'])}) | {init} | "
                         f"{_pt_budget(pt) if init == 'pretrained' else '-'} | {ft_budget} | {v['top1']:.3f} | "
                         f"{v['top5']:.3f} | {t['top1']:.3f} | {t['top5']:.3f} | "
                         f"{(str(pt['wall_s']) + 's / ') if init == 'pretrained' else '- / '}{ft['wall_s']}s |")
    lines.append("")
    for e in entries:
        lines.append(f"- **{e['tag']}** (data: {e['data']['description']}): test top-1 pretrained "
                     f"{e['results']['pretrained']['test']['top1']:.3f} vs random {e['results']['random']['test']['top1']:.3f} "
                     f"(delta {e['delta_test_top1']:+.3f}); total wall {e['wall_s']:.0f}s. {e.get('note', '')}")
    return lines


def to_markdown(entries: list[dict[str, Any]]) -> str:
    current = [e for e in entries if "seeds" in e]
    legacy = [e for e in entries if "seeds" not in e]
    lines = ["# Pre-training value: dual-masked MAE vs random init (synthetic motion)", "",
             "Generated from `pretrain_value.json` by `python -m benchmarks.bench_pretrain_value`; every run is "
             "listed. Per seed, both inits get the same fine-tuning recipe and seed; the fine-tuning budget is "
             "chosen per init on **val only** (the first step with the best val top-1 of one fine-tuning run), "
             "and test is read once, at that budget. Top-1 is multi-view (clips x crops).", ""]
    if not current:
        lines += ["No run with the budget chosen on val has been recorded yet: "
                  "`make bench-pretrain-value` records one.", ""]
    for e in current:
        lines += _entry_markdown(e)
    if legacy:
        lines += _legacy_markdown(legacy)
    return "\n".join(lines) + "\n"


def record(entry: dict[str, Any], results: Path) -> Path:
    """Append ``entry`` to ``pretrain_value.json`` and rebuild the Markdown table from every entry;
    the hand-written notes below :data:`HAND_WRITTEN` in the Markdown file are kept."""
    path = results / "pretrain_value.json"
    doc = json.loads(path.read_text()) if path.exists() else {"benchmark": "pretrain_value", "configs": []}
    doc["configs"].append(entry)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    md = results / "pretrain_value.md"
    notes = md.read_text().partition(HAND_WRITTEN)[2] if md.exists() else ""
    md.write_text(to_markdown(doc["configs"]) + (f"\n{HAND_WRITTEN}{notes}" if notes else ""))
    return path


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    import ray

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    shards, counts = make_data(a, work)
    data_wall = time.perf_counter() - t0
    print(f"[bench] data: {counts} in {data_wall:.0f}s")
    seeds = [run_seed(a, work, shards, seed) for seed in a.seeds]
    ray.shutdown()
    entry = {
        "tag": a.tag, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": round(time.perf_counter() - t_all, 1),
        "command": command("benchmarks.bench_pretrain_value", argv),
        "settings": {k: v for k, v in vars(a).items() if k not in ("quick",)},
        "data": {"description": f"{len(a.classes)} classes ({', '.join(a.classes)}), {a.video_frames} frames "
                                f"{a.video_size}x{a.video_size}, texture {a.texture:g}, noise {a.noise:g}; videos per split "
                                f"{counts} (labelled split 0.6/0.2/0.2; 'unlabelled' only pre-trains)",
                 "counts": counts, "wall_s": round(data_wall, 1),
                 "pretrain_reads": "the same shard set, splits 'unlabelled+train'; the MAE loss never uses the label"},
        "seeds": seeds, "mean_delta_test_top1": _mean([r["delta_test_top1"] for r in seeds]),
        "note": a.note, "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    (work / "last_entry.json").write_text(json.dumps(entry, indent=1))  # also for --quick, which records nothing
    print(json.dumps({k: entry[k] for k in ("tag", "wall_s", "mean_delta_test_top1")}))
    if a.quick:
        return 0
    path = record(entry, RESULTS)
    print(f"[bench] wrote {path} and pretrain_value.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
