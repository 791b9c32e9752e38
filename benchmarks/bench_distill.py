"""Does distillation help? A student distilled from a larger fine-tuned teacher vs the same student
fine-tuned directly, same budget, on the synthetic motion data.

The real jobs, in-process (as the integration tests run them), on CPU, in VideoMAE V2's order
(its ViT-S/B students were pre-trained, then distilled from the fine-tuned ViT-g):

    generate_synthetic (motion classes; unlabelled/train/val/test)  ->  pipeline.orchestration.sharding.shard
    jobs.pretrain     (``--pretrain-steps`` > 0) the teacher's size and the student's size, once each, on the
                      'unlabelled' + 'train' videos (never val / test), the demo's MAE recipe
    jobs.finetune     the teacher (``--teacher-model``, a size up from the student), once, from its
                      pre-trained encoder (random init with ``--pretrain-steps 0``), its kept weights chosen
                      on val (export/best); jobs.evaluate scores it on val and test
    per seed s (the student's head init, data order and augmentation):
      jobs.finetune   the student (``--model``) from its pre-trained encoder      -> "direct"
      jobs.distill    the same student and init, same steps / batch / lr / seed, taught by the teacher -> "distilled"
      both            validated on val every ``--val-every`` steps; the kept weights (export/best: the first
                      best val step) are evaluated multi-view by jobs.evaluate on val and, once, on test

Both arms read the same split (``train``, labelled) from the same init with the same recipe; the
distilled one adds the teacher's forward and the KD term (``distill.temperature``, ``distill.alpha``;
``--feature-weight`` adds the similarity-preserving feature term, ``distill.feature_weight``, off by default).
Test is never read to choose anything (bench_pretrain_value's :func:`select_and_test`). The teacher's
own budget and both pre-trainings are not part of the student's budget.

    python -m benchmarks.bench_distill                   # vit_tiny_big teacher, 3 seeds -> results/distill.json
    python -m benchmarks.bench_distill --quick           # smoke (tiny budgets, not recorded)
    python -m benchmarks.bench_distill ... --record-partial   # record the seeds a stopped run finished

The default teacher is ``vit_tiny_big`` (4 blocks of 128, ~3.5x the student's FLOPs), a size up
from the ``vit_tiny`` student (2 blocks of 96) that 2 CPU cores can pre-train and fine-tune in
minutes. A ``vit_s`` teacher (12 blocks of 384, ~90x the student) took 3-14 s a step here and,
from a random init, stayed at chance through 360 steps (the first entries of ``results/distill.json``,
which also used random-init students): ``--teacher-model vit_s`` is for a GPU.

``results/distill.json`` keeps every run (appended) and its ``figures``: ratio = distilled / direct
mean test top-1 over the seeds (> 1: distillation helped), in :mod:`benchmarks.common`'s format.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import bench_pretrain_value as pv
from benchmarks.common import command

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="/tmp/tubelet-bench-distill")
    p.add_argument("--tag", default="default", help="name of this configuration in the results")
    p.add_argument("--classes", default="left,right,up,down", help="synthetic motion classes")
    p.add_argument("--per-class", type=int, default=50, help="labelled videos per class (train/val/test 0.6/0.2/0.2)")
    p.add_argument("--unlabelled-per-class", type=int, default=50, help="extra videos per class for pre-training only")
    p.add_argument("--texture", type=float, default=1.0)
    p.add_argument("--noise", type=float, default=2.0)
    p.add_argument("--video-size", type=int, default=64)
    p.add_argument("--video-frames", type=int, default=32)
    p.add_argument("--img-size", type=int, default=64, help="model / crop side")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--sampling-rate", type=int, default=4)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--target", choices=("raw", "normalized"), default="raw", help="MAE target pixels")
    p.add_argument("--model", default="vit_tiny", help="the student")
    p.add_argument("--teacher-model", default="vit_tiny_big", help="the teacher (a larger size)")
    p.add_argument("--pretrain-steps", type=int, default=300,
                   help="MAE pre-training of each size before fine-tuning (0 = teacher and student from random init)")
    p.add_argument("--pretrain-batch", type=int, default=16)
    p.add_argument("--pretrain-lr", type=float, default=1.5e-3)
    p.add_argument("--encoder-ratio", type=float, default=0.75)
    p.add_argument("--decoder-ratio", type=float, default=0.5)
    p.add_argument("--teacher-steps", type=int, default=800,
                   help="the teacher's fine-tuning (400 gave val 0.75, 800 gave 0.95: results/distill.json)")
    p.add_argument("--teacher-lr", type=float, default=3e-3)
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--cpus-per-worker", type=int, default=2)
    p.add_argument("--finetune-steps", type=int, default=150, help="the student's budget (both arms)")
    p.add_argument("--val-every", type=int, default=25)
    p.add_argument("--finetune-batch", type=int, default=16)
    p.add_argument("--finetune-lr", type=float, default=3e-3)
    p.add_argument("--layer-decay", type=float, default=1.0)
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--repeated-aug", type=int, default=1)
    p.add_argument("--mixup", type=float, default=0.0, help="mixup/cutmix probability (0 = off), both arms")
    p.add_argument("--temperature", type=float, default=1.0, help="distill.temperature")
    p.add_argument("--alpha", type=float, default=0.5, help="distill.alpha")
    p.add_argument("--feature-weight", type=float, default=0.0,
                   help="distill.feature_weight (similarity-preserving feature term; 0 = off, logits only)")
    p.add_argument("--eval-clips", type=int, default=2)
    p.add_argument("--eval-crops", type=int, default=2)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--reuse-data", action="store_true", help="keep the shards already in --workdir")
    p.add_argument("--reuse-teacher", action="store_true",
                   help="keep the teacher run (and both pre-trainings) already in --workdir")
    p.add_argument("--note", default="")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny budgets, results not recorded")
    p.add_argument("--record-partial", action="store_true",
                   help="record the seeds a stopped run (same arguments) finished, marked partial")
    a = p.parse_args(argv)
    if a.quick:
        a.per_class, a.teacher_steps, a.finetune_steps, a.val_every, a.seeds, a.tag = 5, 4, 4, 2, "0", "quick"
        a.finetune_batch, a.teacher_model, a.unlabelled_per_class = 4, a.model, 1
        a.pretrain_steps, a.pretrain_batch = min(a.pretrain_steps, 2), 4
    a.classes = a.classes.split(",")
    a.seeds = [int(x) for x in str(a.seeds).split(",") if x != ""]
    if not a.seeds or a.val_every < 1 or a.finetune_steps % a.val_every or a.teacher_steps % a.val_every:
        p.error("give at least one seed and a --val-every that divides --finetune-steps and --teacher-steps")
    return a


def _as(a: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(a), **changes})


def pretrained(a: argparse.Namespace, work: Path, shards: Path, model: str) -> dict[str, Any] | None:
    """MAE pre-training of ``model`` (seed 0) on 'unlabelled' + 'train', once per size and tag; None with
    ``--pretrain-steps 0``. With ``--reuse-teacher`` an earlier run of the same name is kept."""
    if not a.pretrain_steps:
        return None
    name = f"pretrain-{model}-{a.tag}"
    record = work / f"{name}.json"
    if a.reuse_teacher and record.exists() and (work / "runs" / name / "export").exists():
        return json.loads(record.read_text())
    pt = pv.pretrain(_as(a, model=model), work, shards, name, 0)
    record.write_text(json.dumps(pt))
    return pt


def init_of(pt: dict[str, Any] | None) -> str:
    """The ``model.init`` a pre-training gives: its run folder, or ``random`` without one."""
    return pt["run"] if pt else "random"


def teacher(a: argparse.Namespace, work: Path, shards: Path) -> dict[str, Any]:
    """Fine-tune the teacher once (or reuse it) from its pre-training, evaluate its kept weights on val and test."""
    name = f"teacher-{a.tag}"
    t = _as(a, model=a.teacher_model, finetune_steps=a.teacher_steps, finetune_lr=a.teacher_lr)
    pt = pretrained(a, work, shards, a.teacher_model)
    if a.reuse_teacher and (work / "runs" / name / "export" / "best" / "model.json").exists():
        ft = json.loads((work / "teacher.json").read_text())
    else:
        ft = pv.finetune(t, work, shards, name, init_of(pt), 0)
        (work / "teacher.json").write_text(json.dumps(ft))
    return {"model": a.teacher_model, "pretrain": pt, "finetune": ft,
            "val": pv.evaluate(t, work, shards, name, "val", 0), "test": pv.evaluate(t, work, shards, name, "test", 0)}


def distill(a: argparse.Namespace, work: Path, shards: Path, name: str, teacher_run: str, init: str,
            seed: int) -> dict[str, Any]:
    """jobs.distill with exactly bench_pretrain_value.finetune's recipe for the student, + the teacher."""
    from jobs import distill as job
    from pipeline.core.config import load_config
    from pipeline.train.job_configs import DistillConfig

    if (work / "runs" / name).exists():
        shutil.rmtree(work / "runs" / name)  # a same-named run would resume, not restart
    cfg = load_config(DistillConfig, REPO / "jobs/configs/distill/demo.toml", [
        f"data.shards={shards}", f"run.output={work / 'runs'}", f"run.name={name}", *pv._size(a),
        f"model.init={init}", f"model.drop_path={a.drop_path}", f"data.batch_size={a.finetune_batch}",
        f"data.repeated_aug={a.repeated_aug}", f"model.num_classes={len(a.classes)}", f"optim.lr={a.finetune_lr}",
        f"optim.layer_decay={a.layer_decay}", f"mixup.prob={a.mixup}", f"train.steps={a.finetune_steps}",
        f"train.checkpoint_every={a.finetune_steps}", "finetune.val_split=val", f"finetune.val_every={a.val_every}",
        f"finetune.val_num_clips={a.eval_clips}", f"finetune.val_num_crops={a.eval_crops}", "finetune.keep=best",
        f"distill.teacher={teacher_run}", f"distill.temperature={a.temperature}", f"distill.alpha={a.alpha}",
        f"distill.feature_weight={a.feature_weight}", "train.log_every=10", "tracking.registered_model=",
        *pv._common(a, work, seed)])
    t0 = time.perf_counter()
    assert job.run(cfg) == 0
    wall = time.perf_counter() - t0
    uri = f"sqlite:///{work / 'mlflow.db'}"
    losses, kd = pv._metric_history(uri, name, "loss/train"), pv._metric_history(uri, name, "loss/kd")
    val, teacher_val = pv._metric_history(uri, name, "val_top1"), pv._metric_history(uri, name, "teacher_val_top1")
    steps = sorted(losses)
    k = max(1, min(5, len(steps) // 4))
    card = json.loads((Path(job.kept_folder(cfg)) / "model.json").read_text())
    print(f"[bench] distillation {name}: {a.finetune_steps} steps in {wall:.0f}s, val_top1 per budget {val}")
    return {"run": str(work / "runs" / name), "init": init, "seed": seed, "steps": a.finetune_steps,
            "batch_per_rank": a.finetune_batch, "workers": a.workers, "lr": a.finetune_lr,
            "temperature": a.temperature, "alpha": a.alpha, "feature_weight": a.feature_weight,
            "loss_first": pv._mean([losses[s] for s in steps[:k]]), "loss_last": pv._mean([losses[s] for s in steps[-k:]]),
            "kd_first": pv._mean([kd[s] for s in steps[:k]]), "kd_last": pv._mean([kd[s] for s in steps[-k:]]),
            "teacher_val_top1_in_run": teacher_val.get(0),
            "val_top1_per_budget": {str(s): v for s, v in sorted(val.items())},
            "kept": {"step": card["source"].get("step"), "metrics": card.get("metrics")}, "wall_s": round(wall, 1)}


def _chosen(a: argparse.Namespace, work: Path, shards: Path, name: str, trained: dict[str, Any],
            seed: int) -> dict[str, Any]:
    """The budget chosen on val only, test read once at it (the run's export/best), and val multi-view."""
    curve = {int(k): v for k, v in trained["val_top1_per_budget"].items()}

    def test_at(steps: int) -> dict[str, Any]:
        if trained["kept"]["step"] != steps:
            raise RuntimeError(f"{name}: the job kept step {trained['kept']['step']}, the val curve's best is {steps}")
        return pv.evaluate(a, work, shards, name, "test", seed)

    return {"train": trained, **pv.select_and_test(curve, test_at), "val": pv.evaluate(a, work, shards, name, "val", seed)}


def run_seed(a: argparse.Namespace, work: Path, shards: Path, teacher_run: str, init: str, seed: int) -> dict[str, Any]:
    """Both arms from the same student ``init`` (its pre-training, or random) with ``seed``."""
    t0 = time.perf_counter()
    direct = f"direct-{a.tag}-s{seed}"
    distilled = f"distilled-{a.tag}-s{seed}"
    results = {"direct": _chosen(a, work, shards, direct, pv.finetune(a, work, shards, direct, init, seed), seed),
               "distilled": _chosen(a, work, shards, distilled,
                                    distill(a, work, shards, distilled, teacher_run, init, seed), seed)}
    for arm, r in results.items():
        print(f"[bench] seed {seed} {arm}: budget {r['chosen_steps']} (val)  val {r['val']['top1']:.3f}  "
              f"test {r['test']['top1']:.3f}")
    return {"seed": seed, "results": results, "wall_s": round(time.perf_counter() - t0, 1),
            "delta_test_top1": results["distilled"]["test"]["top1"] - results["direct"]["test"]["top1"],
            "delta_val_top1": results["distilled"]["val"]["top1"] - results["direct"]["val"]["top1"]}


def summary(seeds: list[dict[str, Any]]) -> dict[str, float]:
    """Means over the seeds of each arm's val and test top-1, and distilled / direct test top-1."""
    out = {f"mean_{split}_top1_{arm}": pv._mean([r["results"][arm][split]["top1"] for r in seeds])
           for arm in ("direct", "distilled") for split in ("val", "test")}
    direct = out["mean_test_top1_direct"]
    out["ratio_test_top1"] = out["mean_test_top1_distilled"] / direct if direct else float("nan")
    return out


def figures(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """:mod:`benchmarks.common`'s figure: distilled / direct mean test top-1 (> 1: distillation helped)."""
    s, t = entry["summary"], entry["teacher"]
    return [{"name": f"distillation ({entry['tag']})", "ratio": s["ratio_test_top1"],
             "ours": s["mean_test_top1_distilled"], "baseline": s["mean_test_top1_direct"], "unit": "test top-1",
             "baseline_name": f"{entry['settings']['model']} fine-tuned directly, same budget",
             "detail": f"student {entry['settings']['model']}"
                       f"{' (pre-trained)' if entry.get('student_pretrain') else ''} distilled from {t['model']} (test top-1 "
                       f"{t['test']['top1']:.3f}); mean over seeds {[r['seed'] for r in entry['seeds']]}"}]


def record(entry: dict[str, Any], results: Path) -> Path:
    """Append ``entry`` to ``distill.json``; its ``figures`` are the newest entry's."""
    path = results / "distill.json"
    doc = json.loads(path.read_text()) if path.exists() else {"benchmark": "distill", "configs": []}
    doc["configs"].append(entry)
    doc.update(figures=figures(entry), date=entry["when"], command=entry["command"], wall_s=entry["wall_s"])
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def make_entry(a: argparse.Namespace, argv: list[str] | None, counts: dict[str, int], t: dict[str, Any],
               seeds: list[dict[str, Any]], wall: float, load_before: list[float],
               student_pretrain: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"tag": a.tag, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": round(wall, 1),
            "command": command("benchmarks.bench_distill",
                               [x for x in (sys.argv[1:] if argv is None else argv) if x != "--record-partial"]),
            "settings": {k: v for k, v in vars(a).items() if k not in ("quick", "record_partial")},
            "data": {"description": f"{len(a.classes)} classes ({', '.join(a.classes)}), {a.video_frames} frames "
                                    f"{a.video_size}x{a.video_size}, texture {a.texture:g}, noise {a.noise:g}; videos "
                                    f"per split {counts}", "counts": counts},
            "teacher": t, "student_pretrain": student_pretrain, "seeds": seeds, "summary": summary(seeds),
            "note": a.note,
            "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_before": load_before,
                     "load_avg_after": list(os.getloadavg())}}


def record_partial(a: argparse.Namespace, argv: list[str] | None) -> int:
    """Record the seeds a stopped run finished (``<workdir>/seeds_done.json``, written after each seed),
    marked partial: the same arguments as the run, plus ``--record-partial``."""
    work = Path(a.workdir)
    done = json.loads((work / "seeds_done.json").read_text())
    counts = json.loads((work / "split_counts.json").read_text())
    entry = make_entry(a, argv, counts, done["teacher"], done["seeds"], sum(r["wall_s"] for r in done["seeds"]), [],
                       done.get("student_pretrain"))
    entry.update(partial=True, note=f"{a.note} PARTIAL: the run was stopped after seeds "
                                    f"{[r['seed'] for r in done['seeds']]} of {a.seeds}; wall_s sums those seeds only")
    print(json.dumps({"tag": a.tag, **entry["summary"]}))
    print(f"[bench] wrote {record(entry, RESULTS)} (partial)")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if a.record_partial:
        return record_partial(a, argv)
    import ray

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    load_before = list(os.getloadavg())
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    shards, counts = pv.make_data(a, work)
    print(f"[bench] data: {counts} in {time.perf_counter() - t0:.0f}s")
    t = teacher(a, work, shards)
    print(f"[bench] teacher {a.teacher_model}: val {t['val']['top1']:.3f}  test {t['test']['top1']:.3f}")
    # one pre-training, the init of both arms and every seed (the teacher's when it is the same size: --quick)
    student_pt = t["pretrain"] if a.model == a.teacher_model else pretrained(a, work, shards, a.model)
    seeds = []
    for seed in a.seeds:
        seeds.append(run_seed(a, work, shards, t["finetune"]["run"], init_of(student_pt), seed))
        (work / "seeds_done.json").write_text(json.dumps({"teacher": t, "student_pretrain": student_pt,
                                                          "seeds": seeds}, indent=1))  # so far
    ray.shutdown()
    entry = make_entry(a, argv, counts, t, seeds, time.perf_counter() - t_all, load_before, student_pt)
    (work / "last_entry.json").write_text(json.dumps(entry, indent=1))  # also for --quick, which records nothing
    print(json.dumps({"tag": a.tag, "wall_s": entry["wall_s"], **entry["summary"]}))
    if a.quick:
        return 0
    print(f"[bench] wrote {record(entry, RESULTS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
