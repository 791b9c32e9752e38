"""Does our pre-training help downstream? Dual-masked MAE pre-training vs random init, same fine-tuning.

The real jobs, in-process (as the integration tests run them), on CPU:

    generate_synthetic (6 motion classes, train/val/test)  ->  pipeline.sharding.shard
    jobs.pretrain   on the train split (the MAE loss never reads labels; same shards, see below)
    jobs.finetune   twice, identical budget and seed: model.init=<pre-training run> / random init
    jobs.evaluate   multi-view (clips x crops) on the val and test splits, for both

Pre-training reads the *same* shard set as fine-tuning (split ``train`` only): the pre-training
loader yields the ``.cls`` label alongside each clip but the MAE objective never uses it, so the
encoder is pre-trained on the train clips as if unlabelled. Val/test videos are never seen by
pre-training.

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
RESULTS = REPO / "benchmarks" / "results"
CLASSES = ["left", "right", "up", "down", "cw", "ccw"]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="/tmp/tubelet-bench-pretrain-value")
    p.add_argument("--tag", default="default", help="name of this configuration in the results")
    p.add_argument("--per-class", type=int, default=50, help="videos per class (all splits)")
    p.add_argument("--video-size", type=int, default=64)
    p.add_argument("--video-frames", type=int, default=16)
    p.add_argument("--img-size", type=int, default=32, help="model / crop side")
    p.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    p.add_argument("--sampling-rate", type=int, default=2)
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--cpus-per-worker", type=int, default=2)
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--pretrain-batch", type=int, default=16)
    p.add_argument("--pretrain-lr", type=float, default=1.5e-3)
    p.add_argument("--encoder-ratio", type=float, default=0.9)
    p.add_argument("--decoder-ratio", type=float, default=0.5)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--finetune-batch", type=int, default=16)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--layer-decay", type=float, default=0.75)
    p.add_argument("--drop-path", type=float, default=0.1)
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
        a.per_class, a.pretrain_steps, a.finetune_steps, a.tag = 8, 4, 4, "quick"
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
    entries = generate_synthetic(work / "synthetic", num_per_class=a.per_class, classes=CLASSES,
                                 frames=a.video_frames, size=(a.video_size, a.video_size),
                                 splits={"train": 0.6, "val": 0.2, "test": 0.2}, seed=a.seed, workers=2)
    rows = ["uri,label,split"] + [f"{e.uri},{e.label},{e.split}" for e in entries]
    (work / "manifest.csv").write_text("\n".join(rows) + "\n")
    index, _ = shard(ShardSection(manifest=str(work / "manifest.csv"), output=str(out),
                                  max_short_side=a.video_size, max_samples_per_shard=32, progress=False))
    counts = {s: sum(e.split == s for e in entries) for s in ("train", "val", "test")}
    (work / "split_counts.json").write_text(json.dumps(counts))
    assert index["totals"]["samples"] == len(entries)
    return out, counts


def _size(a: argparse.Namespace) -> list[str]:
    return [f"model.name={a.model}", f"model.num_frames={a.num_frames}", f"model.img_size={a.img_size}",
            f"data.num_frames={a.num_frames}", f"data.input_size={a.img_size}",
            f"data.sampling_rate={a.sampling_rate}", "data.num_workers=0"]


def _common(a: argparse.Namespace, work: Path) -> list[str]:
    return [f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}", "tracking.system_metrics=false",
            f"scaling.num_workers={a.workers}", f"scaling.cpus_per_worker={a.cpus_per_worker}",
            f"run.seed={a.seed}"]


def pretrain(a: argparse.Namespace, work: Path, shards: Path, name: str) -> dict[str, Any]:
    from jobs.pretrain import run
    from pipeline.config import load_config
    from pipeline.train.config import PretrainConfig

    cfg = load_config(PretrainConfig, REPO / "jobs/configs/pretrain/demo.toml", [
        f"data.shards={shards}", "data.split=train", f"run.output={work / 'runs'}", f"run.name={name}", *_size(a),
        f"data.batch_size={a.pretrain_batch}", "data.repeated_aug=2", f"optim.lr={a.pretrain_lr}",
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
        "data.repeated_aug=2", f"optim.lr={a.finetune_lr}", f"optim.layer_decay={a.layer_decay}",
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
    lines = ["# Pre-training value: dual-masked MAE vs random init (synthetic motion, 6 classes)", "",
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
            lines.append(f"| {e['tag']} ({s['model']} {s['num_frames']}x{s['img_size']}) | {init} | "
                         f"{pt_budget if init == 'pretrained' else '-'} | {ft_budget} | {v['top1']:.3f} | "
                         f"{v['top5']:.3f} | {t['top1']:.3f} | {t['top5']:.3f} | "
                         f"{(str(pt['wall_s']) + 's / ') if init == 'pretrained' else '- / '}{ft['wall_s']}s |")
    lines += ["", "Data: " + (entries[-1]["data"]["description"] if entries else ""), ""]
    for e in entries:
        lines.append(f"- **{e['tag']}**: test top-1 pretrained {e['results']['pretrained']['test']['top1']:.3f} vs "
                     f"random {e['results']['random']['test']['top1']:.3f} "
                     f"(delta {e['delta_test_top1']:+.3f}); total wall {e['wall_s']:.0f}s. {e.get('note', '')}")
    return "\n".join(lines) + "\n"


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
        "data": {"description": f"{a.per_class} videos/class x {len(CLASSES)} classes ({', '.join(CLASSES)}), "
                                f"{a.video_frames} frames {a.video_size}x{a.video_size}, split 0.6/0.2/0.2 -> {counts}",
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
    path = RESULTS / "pretrain_value.json"
    doc = json.loads(path.read_text()) if path.exists() else {"benchmark": "pretrain_value", "configs": []}
    doc["configs"].append(entry)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    (RESULTS / "pretrain_value.md").write_text(to_markdown(doc["configs"]))
    print(f"[bench] wrote {path} and pretrain_value.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
