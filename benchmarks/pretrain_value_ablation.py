"""Controlled ablation for the pre-training-value benchmark, in plain PyTorch (no Ray, DeepSpeed or shards).

Renders synthetic motion clips in memory (:mod:`pipeline.data.synthetic`), pre-trains our
``PretrainModel`` with our masks on labelled-train + extra unlabelled clips, then fine-tunes (or
linear-probes) the encoder and a random-init twin with the same budget and seed, and prints
train/val top-1 for both. It isolates the learning question from the pipeline: if it fails here,
it is the budget/task, not the jobs. Knobs the jobs do not expose are ablations here:
``--grain/--smooth`` (background texture amplitudes, patched into the renderer) and
``--raw-target`` (``model.normalize_target = false``: raw 0-1 pixel targets, the official
``--normlize_target False``; before that option existed this script regressed (x - 0.45) / 0.225).

    python -m benchmarks.pretrain_value_ablation --pt-steps 600 --raw-target --unlabelled 60 \
        --classes left,right,up,down --stride 4 --frames 32

Findings are in ``benchmarks/results/pretrain_value.md``.
"""
import time, math, argparse
import numpy as np, torch
from pipeline.data.synthetic import plan_synthetic, render_video
import pipeline.data.synthetic as syn
from pipeline.models import create_model
from pipeline.masking import MaskConfig, make_masks, token_grid


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--unlabelled", type=int, default=100, help="extra unlabelled videos per class (other seed)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--depth", type=int, default=0)
    p.add_argument("--noise", type=float, default=2.0)
    p.add_argument("--pt-steps", type=int, default=600)
    p.add_argument("--pt-lr", type=float, default=1.5e-3)
    p.add_argument("--enc", type=float, default=0.75)
    p.add_argument("--dec", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--bs", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--probe", action="store_true")
    p.add_argument("--kind", default="tube")
    p.add_argument("--grain", type=float, default=12.0)
    p.add_argument("--smooth", type=float, default=40.0)
    p.add_argument("--raw-target", action="store_true")
    p.add_argument("--classes", default="left,right,up,down,cw,ccw")
    a = p.parse_args()
    def _bg(rng, h, w):
        brightness = float(rng.choice([rng.uniform(30, 100), rng.uniform(155, 225)]))
        tint = rng.uniform(0.6, 1.0, 3).astype(np.float32)
        texture = a.smooth * syn._smooth_noise(rng, h, w, int(rng.integers(3, 9))) + a.grain * rng.uniform(-1, 1, (h, w, 3))
        return (brightness * tint + texture).astype(np.float32), brightness
    syn._background = _bg
    torch.manual_seed(0); torch.set_num_threads(1)
    t0 = time.time()
    CL = ["left","right","up","down","cw","ccw"]
    def clip(s, off=0):
        v = render_video(s)[off: off + a.T * a.stride : a.stride]
        x = torch.from_numpy(v).float().div(255).permute(3, 0, 1, 2)
        return (x - 0.45) / 0.225
    specs = plan_synthetic(a.per_class, frames=a.frames, size=(a.size, a.size), splits={"train": 0.75, "val": 0.25}, noise=a.noise, classes=a.classes.split(","))
    X = {"train": [], "val": []}; Y = {"train": [], "val": []}
    for s in specs:
        X[s.split].append(clip(s)); Y[s.split].append(CL.index(s.label))
    X = {k: torch.stack(v) for k, v in X.items()}; Y = {k: torch.tensor(v) for k, v in Y.items()}
    U = X["train"]
    if a.unlabelled:
        us = plan_synthetic(a.unlabelled, frames=a.frames, size=(a.size, a.size), splits={"train": 1.0}, seed=7, noise=a.noise, classes=a.classes.split(","))
        U = torch.cat([U, torch.stack([clip(s) for s in us])])
    print("data", {k: tuple(v.shape) for k, v in X.items()}, "unlabelled", tuple(U.shape), f"{time.time()-t0:.1f}s", flush=True)
    over = dict(num_frames=a.T, img_size=a.size, patch_size=a.patch)
    if a.depth: over["depth"] = a.depth
    def sched(base, step, total):
        return base * min(step / (0.1 * total), 0.5 * (1 + math.cos(math.pi * step / total)))

    enc_state = None
    if a.pt_steps:
        pm = create_model(a.model, "pretrain", normalize_target=not a.raw_target, **over)
        grid = token_grid(a.T, a.size, a.patch, 2)
        mc = MaskConfig(encoder_ratio=a.enc, decoder_ratio=a.dec, encoder_kind=a.kind)
        opt = torch.optim.AdamW(pm.parameters(), lr=a.pt_lr, betas=(0.9, 0.95), weight_decay=0.05)
        g = torch.Generator().manual_seed(1)
        for step in range(1, a.pt_steps + 1):
            for pg in opt.param_groups: pg["lr"] = sched(a.pt_lr, step, a.pt_steps)
            idx = torch.randint(len(U), (a.bs,), generator=g)
            em, dm = make_masks(mc, a.bs, grid, g)
            loss = pm(U[idx], em, dm)
            opt.zero_grad(); loss.backward(); opt.step()
            if step % 100 == 0 or step == 1:
                print(f"pt {step} loss {loss.item():.4f} {time.time()-t0:.0f}s", flush=True)
        enc_state = pm.encoder.state_dict()

    def finetune(init):
        torch.manual_seed(0)
        m = create_model(a.model, "classify", num_classes=len(a.classes.split(",")), **over)
        if init is not None:
            missing, unexpected = m.encoder.load_state_dict(init, strict=False)
        params = m.parameters()
        if a.probe:
            for q in m.encoder.parameters(): q.requires_grad_(False)
            params = [q for q in m.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.05)
        g = torch.Generator().manual_seed(0); n = len(X["train"])
        for step in range(1, a.steps + 1):
            for pg in opt.param_groups: pg["lr"] = sched(a.lr, step, a.steps)
            idx = torch.randint(n, (a.bs,), generator=g)
            m.train(); loss = torch.nn.functional.cross_entropy(m(X["train"][idx]), Y["train"][idx])
            opt.zero_grad(); loss.backward(); opt.step()
        m.eval()
        with torch.no_grad():
            tr = (m(X["train"][:128]).argmax(-1) == Y["train"][:128]).float().mean().item()
            va = (m(X["val"]).argmax(-1) == Y["val"]).float().mean().item()
        return loss.item(), tr, va
    for name, init in (("pretrained", enc_state), ("random", None)):
        if name == "pretrained" and init is None: continue
        l, tr, va = finetune(init)
        print(f"{name}: loss {l:.3f} train {tr:.3f} val {va:.3f} {time.time()-t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
