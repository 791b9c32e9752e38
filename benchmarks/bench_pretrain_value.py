"""Does our pre-training help downstream? Dual-masked MAE pre-training vs random init, same fine-tuning.

The real jobs, in-process (as the integration tests run them), on CPU:

    generate_synthetic (motion classes; unlabelled/train/val/test)  ->  pipeline.sharding.shard
    jobs.pretrain   on the splits unlabelled+train (the MAE loss never reads labels)
    jobs.finetune   twice, identical budget and seed: model.init=<pre-training run> / random init
    jobs.evaluate   multi-view (clips x crops) on the val and test splits, for both

Pre-training reads the same shard set as fine-tuning, splits ``unlabelled`` (videos that exist
only for pre-training) and ``train``: the loader yields the ``.cls`` label alongside each clip but
the MAE objective never uses it. Val/test videos are never seen by pre-training. The defaults are
the configuration that shows the effect on 2 CPU cores (see ``results/pretrain_value.md``): the
4 translation classes, 8 px patches, raw-pixel MAE targets.

Every configuration run is appended to ``benchmarks/results/pretrain_value.json`` (nothing is
dropped) and the Markdown table ``pretrain_value.md`` is rebuilt from all of them.

    python -m benchmarks.bench_pretrain_value                       # the default budget
    python -m benchmarks.bench_pretrain_value --pretrain-steps 600 --tag longer-pt --reuse-data
    python -m benchmarks.bench_pretrain_value --quick               # smoke (tiny budgets, not recorded)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

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
    p.add_argument("--finetune-steps", type=int, default=150)
    p.add_argument("--finetune-batch", type=int, default=16)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--layer-decay", type=float, default=1.0)
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--repeated-aug", type=int, default=1, help="views per clip in a batch (both phases)")
    p.add_argument("--mixup", type=float, default=0.0, help="mixup/cutmix probability (0 = off)")
    p.add_argument("--eval-clips", type=int, default=2)
    p.add_argument("--eval-crops", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse-data", action="store_true", help="keep the shards already in --workdir")
    p.add_argument("--reuse-pretrain", default="", help="a pre-training run folder to use instead of pre-training")
    p.add_argument("--note", default="", help="free text kept with this configuration's results")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny budgets, results not recorded")
    a = p.parse_args(argv)
    if a.quick:
        a.per_class, a.unlabelled_per_class, a.pretrain_steps, a.finetune_steps, a.tag = 5, 5, 4, 4, "quick"
        a.pretrain_batch = a.finetune_batch = 4
    a.classes = a.classes.split(",")
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
    from pipeline.sharding import ShardSection, shard

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
                                 seed=a.seed, workers=2, noise=a.noise, texture=a.texture)
    rows = ["uri,label,split"] + [f"{e.uri},{e.label},{e.split}" for e in entries]
    (work / "manifest.csv").write_text("\n".join(rows) + "\n")
    index, _ = shard(ShardSection(manifest=str(work / "manifest.csv"), output=str(out),
                                  max_short_side=a.video_size, max_samples_per_shard=32, progress=False))
    counts = {s: sum(e.split == s for e in entries) for s in splits}
    (work / "split_counts.json").write_text(json.dumps(counts))
    assert index["totals"]["samples"] == len(entries)
    return out, counts


def _size(a: argparse.Namespace) -> list[str]:
    return [f"model.name={a.model}", f"model.num_frames={a.num_frames}", f"model.img_size={a.img_size}",
            f"model.patch_size={a.patch_size}", f"data.num_frames={a.num_frames}", f"data.input_size={a.img_size}",
            f"data.sampling_rate={a.sampling_rate}", "data.num_workers=0"]


def _common(a: argparse.Namespace, work: Path) -> list[str]:
    return [f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}", "tracking.system_metrics=false",
            f"scaling.num_workers={a.workers}", f"scaling.cpus_per_worker={a.cpus_per_worker}",
            f"run.seed={a.seed}", f"data.seed={a.seed}"]  # model init and data order / augmentation


def pretrain(a: argparse.Namespace, work: Path, shards: Path, name: str) -> dict[str, Any]:
    from jobs.pretrain import run
    from pipeline.config import load_config
    from pipeline.train.config import PretrainConfig

    cfg = load_config(PretrainConfig, REPO / "jobs/configs/pretrain/demo.toml", [
        f"data.shards={shards}", "data.split=unlabelled+train", f"run.output={work / 'runs'}", f"run.name={name}",
        *_size(a), f"model.normalize_target={str(a.target == 'normalized').lower()}",
        f"data.batch_size={a.pretrain_batch}", f"data.repeated_aug={a.repeated_aug}", f"optim.lr={a.pretrain_lr}",
        f"mask.encoder_ratio={a.encoder_ratio}", f"mask.decoder_ratio={a.decoder_ratio}",
        f"train.steps={a.pretrain_steps}", f"train.checkpoint_every={a.pretrain_steps}", "train.log_every=10",
        "train.image_every=0", *_common(a, work)])
    t0 = time.perf_counter()
    assert run(cfg) == 0
    wall = time.perf_counter() - t0
    losses = _metric_history(f"sqlite:///{work / 'mlflow.db'}", name, "loss")
    steps = sorted(losses)
    k = max(1, min(3, len(steps) // 4))
    first, last = _mean([losses[s] for s in steps[:k]]), _mean([losses[s] for s in steps[-k:]])
    print(f"[bench] pre-training {name}: {a.pretrain_steps} steps in {wall:.0f}s, loss {first:.4f} -> {last:.4f}")
    return {"run": str(work / "runs" / name), "steps": a.pretrain_steps, "batch_per_rank": a.pretrain_batch,
            "workers": a.workers, "clips_seen": a.pretrain_steps * a.pretrain_batch * a.workers,
            "lr": a.pretrain_lr, "encoder_ratio": a.encoder_ratio, "decoder_ratio": a.decoder_ratio,
            "target": a.target, "clips": "unlabelled+train",
            "loss_first": first, "loss_last": last, "loss_curve": {str(s): losses[s] for s in steps},
            "wall_s": round(wall, 1)}


def finetune(a: argparse.Namespace, work: Path, shards: Path, name: str, init: str) -> dict[str, Any]:
    from jobs import finetune as job
    from pipeline.config import load_config
    from pipeline.train.finetune_config import FinetuneConfig

    if (work / "runs" / name).exists():
        shutil.rmtree(work / "runs" / name)  # a same-named run would resume, not restart
    cfg = load_config(FinetuneConfig, REPO / "jobs/configs/finetune/demo.toml", [
        f"data.shards={shards}", f"run.output={work / 'runs'}", f"run.name={name}", *_size(a),
        f"model.init={init}", f"model.drop_path={a.drop_path}", f"data.batch_size={a.finetune_batch}",
        f"data.repeated_aug={a.repeated_aug}", f"model.num_classes={len(a.classes)}", f"optim.lr={a.finetune_lr}", f"optim.layer_decay={a.layer_decay}",
        f"mixup.prob={a.mixup}", f"train.steps={a.finetune_steps}", f"train.checkpoint_every={a.finetune_steps}",
        "train.log_every=10", "tracking.registered_model=", *_common(a, work)])
    t0 = time.perf_counter()
    assert job.run(cfg) == 0
    wall = time.perf_counter() - t0
    uri = f"sqlite:///{work / 'mlflow.db'}"
    losses = _metric_history(uri, name, "loss")
    val = _metric_history(uri, name, "val_top1")
    steps = sorted(losses)
    k = max(1, min(5, len(steps) // 4))
    card = json.loads((Path(job.kept_folder(cfg)) / "model.json").read_text())
    print(f"[bench] fine-tuning {name}: {a.finetune_steps} steps in {wall:.0f}s, val_top1 per epoch {val}")
    return {"run": str(work / "runs" / name), "init": init or "random", "steps": a.finetune_steps,
            "batch_per_rank": a.finetune_batch, "workers": a.workers, "lr": a.finetune_lr,
            "layer_decay": a.layer_decay, "drop_path": a.drop_path, "mixup_prob": a.mixup,
            "loss_first": _mean([losses[s] for s in steps[:k]]), "loss_last": _mean([losses[s] for s in steps[-k:]]),
            "val_top1_per_epoch": {str(s): v for s, v in sorted(val.items())},
            "kept": {"step": card["source"].get("step"), "metrics": card.get("metrics")}, "wall_s": round(wall, 1)}


def evaluate(a: argparse.Namespace, work: Path, shards: Path, name: str, split: str) -> dict[str, Any]:
    from jobs import evaluate as job
    from pipeline.config import load_config
    from pipeline.train.finetune_config import EvaluateConfig

    out = work / "eval" / f"{name}-{split}"
    cfg = load_config(EvaluateConfig, REPO / "jobs/configs/evaluate/demo.toml", [
        f"data.shards={shards}", f"data.split={split}", *_size(a), f"data.test_num_clips={a.eval_clips}",
        f"data.test_num_crops={a.eval_crops}", "data.batch_size=4", f"model.init={work / 'runs' / name}",
        f"run.output={out}", f"run.name={name}-{split}", *_common(a, work)])
    t0 = time.perf_counter()
    assert job.run(cfg) == 0
    wall = time.perf_counter() - t0
    r = json.loads((out / "report.json").read_text())
    return {"top1": r["top1"], "top5": r.get("top5"), "num_videos": r["num_videos"],
            "views_per_video": r["views_per_video"], "per_class": r.get("per_class"), "wall_s": round(wall, 1)}


def to_markdown(entries: list[dict[str, Any]]) -> str:
    lines = ["# Pre-training value: dual-masked MAE vs random init (synthetic motion)", "",
             "Generated by `python -m benchmarks.bench_pretrain_value`; every configuration run is listed. "
             "Same fine-tuning budget and seed for both inits within a configuration. Top-1/top-5 are "
             "multi-view (clips x crops) accuracies from `jobs.evaluate`.", "",
             "| config | init | pre-training budget | fine-tuning budget | val top-1 | val top-5 | test top-1 | "
             "test top-5 | wall (pt / ft) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        pt, s = e["pretrain"], e["settings"]
        pt_budget = (f"{pt['steps']} steps x {pt['batch_per_rank'] * pt['workers']} clips, lr {pt['lr']:g}, "
                     f"mask {pt['encoder_ratio']}/{pt['decoder_ratio']}, loss {pt['loss_first']:.3f}->{pt['loss_last']:.3f}")
        for init in ("pretrained", "random"):
            r = e["results"][init]
            ft = r["finetune"]
            ft_budget = (f"{ft['steps']} steps x {ft['batch_per_rank'] * ft['workers']} clips, lr {ft['lr']:g}, "
                         f"ld {ft['layer_decay']}, mixup {ft['mixup_prob']:g}")
            v, t = r["val"], r["test"]
            arch = f"{s['model']} {s['num_frames']}x{s['img_size']} p{s.get('patch_size') or 16} {s.get('target', 'normalized')}"
            lines.append(f"| {e['tag']} ({arch}) | {init} | "
                         f"{pt_budget if init == 'pretrained' else '-'} | {ft_budget} | {v['top1']:.3f} | "
                         f"{v['top5']:.3f} | {t['top1']:.3f} | {t['top5']:.3f} | "
                         f"{(str(pt['wall_s']) + 's / ') if init == 'pretrained' else '- / '}{ft['wall_s']}s |")
    lines.append("")
    for e in entries:
        lines.append(f"- **{e['tag']}** (data: {e['data']['description']}): test top-1 pretrained {e['results']['pretrained']['test']['top1']:.3f} vs "
                     f"random {e['results']['random']['test']['top1']:.3f} "
                     f"(delta {e['delta_test_top1']:+.3f}); total wall {e['wall_s']:.0f}s. {e.get('note', '')}")
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

    if a.reuse_pretrain:
        pt = json.loads((Path(a.reuse_pretrain) / "bench_pretrain.json").read_text())
    else:
        pt = pretrain(a, work, shards, f"pt-{a.tag}")
        (Path(pt["run"]) / "bench_pretrain.json").write_text(json.dumps(pt, indent=1))
    results: dict[str, Any] = {}
    for init_name, init in (("pretrained", pt["run"]), ("random", "")):
        name = f"ft-{a.tag}-{init_name}"
        ft = finetune(a, work, shards, name, init)
        results[init_name] = {"finetune": ft, "val": evaluate(a, work, shards, name, "val"),
                              "test": evaluate(a, work, shards, name, "test")}
        print(f"[bench] {init_name}: val {results[init_name]['val']['top1']:.3f}  "
              f"test {results[init_name]['test']['top1']:.3f}")
    ray.shutdown()
    wall = time.perf_counter() - t_all
    entry = {
        "tag": a.tag, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": round(wall, 1),
        "settings": {k: v for k, v in vars(a).items() if k not in ("quick",)},
        "data": {"description": f"{len(a.classes)} classes ({', '.join(a.classes)}), {a.video_frames} frames "
                                f"{a.video_size}x{a.video_size}, texture {a.texture:g}, noise {a.noise:g}; videos per split "
                                f"{counts} (labelled split 0.6/0.2/0.2; 'unlabelled' only pre-trains)",
                 "counts": counts, "wall_s": round(data_wall, 1),
                 "pretrain_reads": "the same shard set, split 'train' only; the MAE loss never uses the label"},
        "pretrain": pt, "results": results,
        "delta_test_top1": results["pretrained"]["test"]["top1"] - results["random"]["test"]["top1"],
        "delta_val_top1": results["pretrained"]["val"]["top1"] - results["random"]["val"]["top1"],
        "note": a.note,
        "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    print(json.dumps({k: entry[k] for k in ("tag", "wall_s", "delta_val_top1", "delta_test_top1")}))
    if a.quick:
        return 0
    path = record(entry, RESULTS)
    print(f"[bench] wrote {path} and pretrain_value.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
