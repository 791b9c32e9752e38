"""Controlled ablation for the pre-training-value benchmark, in plain PyTorch (no Ray, DeepSpeed or shards).

Renders synthetic motion clips in memory (:mod:`pipeline.data.synthetic`), pre-trains our
``PretrainModel`` with our masks on labelled-train + extra unlabelled clips, then fine-tunes (or
linear-probes) the encoder and a random-init twin with the same budget and seed, and prints
train/val top-1 for both. It isolates the learning question from the pipeline: if it fails here,
it is the budget/task, not the jobs. Knobs the jobs do not expose are ablations here:
``--grain/--smooth`` (the two amplitudes of the background texture, which the dataset job scales
together with ``texture``) and ``--raw-target`` (``model.normalize_target = false``: raw 0-1
pixel targets: the official raw-pixel branch, reached there by ``--normlize_target ""`` only,
as the type=bool flag parses ``False`` as True).

    python -m benchmarks.pretrain_value_ablation --pt-steps 600 --raw-target --unlabelled 60 \
        --classes left,right,up,down --stride 4 --frames 32

Every run is appended to ``benchmarks/results/pretrain_value_ablation.json`` (``--out``) and the
table ``pretrain_value_ablation.md`` next to it is rebuilt from every recorded run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import pipeline.data.synthetic as synthetic
from pipeline.data.masking import MaskConfig, make_masks, token_grid
from pipeline.data.synthetic import MOTIONS, plan_synthetic, render_video
from pipeline.models import create_model

RESULTS = Path(__file__).resolve().parent / "results" / "pretrain_value_ablation.json"
MEAN, STD = 0.45, 0.225  # what the data path normalises clips with


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = p.add_argument_group("data")
    data.add_argument("--classes", default="left,right,up,down,cw,ccw")
    data.add_argument("--per-class", type=int, default=40, help="labelled videos per class (3/4 train, 1/4 val)")
    data.add_argument("--unlabelled", type=int, default=100, help="extra unlabelled videos per class (other seed)")
    data.add_argument("--size", type=int, default=64)
    data.add_argument("--frames", type=int, default=16, help="frames rendered per video")
    data.add_argument("--T", type=int, default=8, help="frames per clip")
    data.add_argument("--stride", type=int, default=2, help="frame stride within a clip")
    data.add_argument("--noise", type=float, default=2.0, help="per-pixel noise std")
    data.add_argument("--grain", type=float, default=12.0, help="background grain amplitude")
    data.add_argument("--smooth", type=float, default=40.0, help="background blotch amplitude")
    model = p.add_argument_group("model")
    model.add_argument("--model", default="vit_tiny")
    model.add_argument("--depth", type=int, default=0, help="encoder depth (0 = the model's own)")
    model.add_argument("--patch", type=int, default=16)
    pre = p.add_argument_group("pre-training")
    pre.add_argument("--pt-steps", type=int, default=600, help="0 = fine-tune the random init only")
    pre.add_argument("--pt-lr", type=float, default=1.5e-3)
    pre.add_argument("--enc", type=float, default=0.75, help="encoder mask ratio")
    pre.add_argument("--dec", type=float, default=0.5, help="decoder mask ratio")
    pre.add_argument("--kind", default="tube", choices=["tube", "random"], help="encoder mask kind")
    pre.add_argument("--raw-target", action="store_true", help="reconstruct raw pixels, not normalised patches")
    fine = p.add_argument_group("fine-tuning")
    fine.add_argument("--steps", type=int, default=300)
    fine.add_argument("--bs", type=int, default=16, help="batch size (both stages)")
    fine.add_argument("--lr", type=float, default=1e-3)
    fine.add_argument("--probe", action="store_true", help="train the head only (linear probe)")
    p.add_argument("--out", default=str(RESULTS), help="results JSON (appended); the table is written beside it")
    return p.parse_args(argv)


@contextlib.contextmanager
def background_amplitudes(smooth: float, grain: float) -> Iterator[None]:
    """Render backgrounds with these texture amplitudes (the renderer's are 40 and 12); same draws."""
    original = synthetic._background
    synthetic._background = functools.partial(original, blotch=smooth, grain=grain)
    try:
        yield
    finally:
        synthetic._background = original


def render_clips(a: argparse.Namespace) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Normalised clips ``[N, 3, T, H, W]`` and labels per split, and the pre-training pool."""
    classes = a.classes.split(",")

    def clip(spec: synthetic.VideoSpec) -> torch.Tensor:
        frames = render_video(spec)[: a.T * a.stride : a.stride]
        return (torch.from_numpy(frames).float().div(255).permute(3, 0, 1, 2) - MEAN) / STD

    plan = dict(frames=a.frames, size=(a.size, a.size), noise=a.noise, classes=classes)
    clips: dict[str, list[torch.Tensor]] = {"train": [], "val": []}
    labels: dict[str, list[int]] = {"train": [], "val": []}
    with background_amplitudes(a.smooth, a.grain):
        for spec in plan_synthetic(a.per_class, splits={"train": 0.75, "val": 0.25}, **plan):
            clips[spec.split].append(clip(spec))
            labels[spec.split].append(list(MOTIONS).index(spec.label))
        x = {k: torch.stack(v) for k, v in clips.items()}
        pool = [x["train"]]
        if a.unlabelled:
            extra = plan_synthetic(a.unlabelled, splits={"train": 1.0}, seed=7, **plan)
            pool.append(torch.stack([clip(s) for s in extra]))
    # Labels index MOTIONS; remap them to 0..len(classes)-1 for the classifier head.
    remap = {list(MOTIONS).index(c): i for i, c in enumerate(classes)}
    y = {k: torch.tensor([remap[i] for i in v]) for k, v in labels.items()}
    return x, y, torch.cat(pool)


def warmup_cosine(base: float, step: int, total: int) -> float:
    """10% linear warm-up, then cosine to 0."""
    return base * min(step / (0.1 * total), 0.5 * (1 + math.cos(math.pi * step / total)))


def pretrain(a: argparse.Namespace, pool: torch.Tensor, arch: dict, t0: float,
             losses: dict[int, float]) -> dict[str, torch.Tensor]:
    """Dual-masked MAE pre-training on ``pool``; the encoder's state dict (``losses`` gets the curve)."""
    model = create_model(a.model, "pretrain", normalize_target=not a.raw_target, **arch)
    grid = token_grid(a.T, a.size, a.patch, 2)
    masks = MaskConfig(encoder_ratio=a.enc, decoder_ratio=a.dec, encoder_kind=a.kind)
    opt = torch.optim.AdamW(model.parameters(), lr=a.pt_lr, betas=(0.9, 0.95), weight_decay=0.05)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, a.pt_steps + 1):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(a.pt_lr, step, a.pt_steps)
        idx = torch.randint(len(pool), (a.bs,), generator=gen)
        loss = model(pool[idx], *make_masks(masks, a.bs, grid, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses[step] = loss.item()
        if step == 1 or step % 100 == 0:
            print(f"pt {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    return model.encoder.state_dict()


def finetune(a: argparse.Namespace, x: dict, y: dict, arch: dict,
             init: dict[str, torch.Tensor] | None) -> tuple[float, float, float]:
    """Fine-tune (or probe) from ``init`` (None = random); last train loss, train and val top-1."""
    torch.manual_seed(0)
    model = create_model(a.model, "classify", num_classes=len(a.classes.split(",")), **arch)
    if init is not None:
        model.encoder.load_state_dict(init, strict=False)
    if a.probe:
        model.encoder.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(1, a.steps + 1):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(a.lr, step, a.steps)
        idx = torch.randint(len(x["train"]), (a.bs,), generator=gen)
        loss = F.cross_entropy(model(x["train"][idx]), y["train"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        train = (model(x["train"][:128]).argmax(-1) == y["train"][:128]).float().mean().item()
        val = (model(x["val"]).argmax(-1) == y["val"]).float().mean().item()
    return loss.item(), train, val


def record(run: dict[str, Any], out: Path) -> None:
    """Append ``run`` to the JSON and rebuild the Markdown table beside it from every recorded run."""
    doc = json.loads(out.read_text()) if out.exists() else {"benchmark": "pretrain_value_ablation", "runs": []}
    doc["runs"].append(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(to_markdown(doc["runs"]))


def to_markdown(runs: list[dict[str, Any]]) -> str:
    lines = ["# Pre-training value ablation (plain PyTorch, no pipeline in the loop)", "",
             "Generated from `pretrain_value_ablation.json` by `python -m benchmarks.pretrain_value_ablation`; "
             "every recorded run is listed. Same fine-tuning seed and budget for both inits; val = 1/4 of the "
             "labelled videos (read once, after fine-tuning: nothing is chosen on it here).", "",
             "| date | command | MAE loss first -> last (mean of last 10) | pretrained train / val top-1 | "
             "random train / val top-1 | wall |", "|---|---|---|---|---|---:|"]
    for r in runs:
        pre, rnd = r["results"].get("pretrained"), r["results"]["random"]
        mae = f"{r['mae_loss_first']:.3f} -> {r['mae_loss_last']:.3f}" if pre else "-"
        pre_cell = f"{pre['train_top1']:.2f} / {pre['val_top1']:.2f}" if pre else "-"
        lines.append(f"| {r['date']} | `{r['command']}` | {mae} | {pre_cell} | "
                     f"{rnd['train_top1']:.2f} / {rnd['val_top1']:.2f} | {r['wall_s']:.0f} s |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    t0 = time.time()
    x, y, pool = render_clips(a)
    print("data", {k: tuple(v.shape) for k, v in x.items()}, "unlabelled", tuple(pool.shape),
          f"{time.time() - t0:.1f}s", flush=True)
    arch = dict(num_frames=a.T, img_size=a.size, patch_size=a.patch, **({"depth": a.depth} if a.depth else {}))
    inits: dict[str, dict[str, torch.Tensor] | None] = {"random": None}
    losses: dict[int, float] = {}
    if a.pt_steps:
        inits = {"pretrained": pretrain(a, pool, arch, t0, losses), **inits}
    results = {}
    for name, init in inits.items():
        loss, train, val = finetune(a, x, y, arch, init)
        results[name] = {"loss_last": loss, "train_top1": train, "val_top1": val}
        print(f"{name}: loss {loss:.3f} train {train:.3f} val {val:.3f} {time.time() - t0:.0f}s", flush=True)
    tail = [losses[s] for s in sorted(losses)[-10:]]
    args = sys.argv[1:] if argv is None else argv
    record({"date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()) + " UTC",
            "command": " ".join(["python -m benchmarks.pretrain_value_ablation", *[x for x in args if x]]),
            "settings": {k: v for k, v in vars(a).items() if k != "out"}, "results": results,
            "mae_loss_first": losses.get(1), "mae_loss_last": sum(tail) / len(tail) if tail else None,
            "mae_loss_curve": {str(k): v for k, v in losses.items() if k == 1 or k % 50 == 0},
            "wall_s": round(time.time() - t0, 1)}, Path(a.out))


if __name__ == "__main__":
    main()
