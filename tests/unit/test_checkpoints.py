"""Official VideoMAE V1/V2 checkpoint layouts: load, convert back bit for bit, and refuse misfits."""

import pytest
import torch

from pipeline.core.errors import TubeletError
from pipeline.models import create_model
from pipeline.models.weights import CheckpointError, load_file, load_official, to_official

TINY = dict(num_frames=4, img_size=64)
D, DEPTH, MLP, DD, DDEPTH, P = 96, 2, 384, 64, 2, 2 * 16 * 16 * 3  # vit_tiny


def block_keys(prefix, dim, mlp):
    """Official Block tensors (qkv_bias=True, no layer scale) and their shapes."""
    return {f"{prefix}.norm1.weight": (dim,), f"{prefix}.norm1.bias": (dim,),
            f"{prefix}.attn.q_bias": (dim,), f"{prefix}.attn.v_bias": (dim,),
            f"{prefix}.attn.qkv.weight": (3 * dim, dim), f"{prefix}.attn.proj.weight": (dim, dim),
            f"{prefix}.attn.proj.bias": (dim,), f"{prefix}.norm2.weight": (dim,), f"{prefix}.norm2.bias": (dim,),
            f"{prefix}.mlp.fc1.weight": (mlp, dim), f"{prefix}.mlp.fc1.bias": (mlp,),
            f"{prefix}.mlp.fc2.weight": (dim, mlp), f"{prefix}.mlp.fc2.bias": (dim,)}


def official_pretrain_shapes():
    shapes = {"encoder.patch_embed.proj.weight": (D, 3, 2, 16, 16), "encoder.patch_embed.proj.bias": (D,)}
    for i in range(DEPTH):
        shapes.update(block_keys(f"encoder.blocks.{i}", D, MLP))
    shapes.update({"encoder.norm.weight": (D,), "encoder.norm.bias": (D,),
                   "encoder_to_decoder.weight": (DD, D), "mask_token": (1, 1, DD)})
    for i in range(DDEPTH):
        shapes.update(block_keys(f"decoder.blocks.{i}", DD, 4 * DD))
    shapes.update({"decoder.norm.weight": (DD,), "decoder.norm.bias": (DD,),
                   "decoder.head.weight": (P, DD), "decoder.head.bias": (P,)})
    return shapes


def official_finetune_shapes(classes=5):
    shapes = {"patch_embed.proj.weight": (D, 3, 2, 16, 16), "patch_embed.proj.bias": (D,)}
    for i in range(DEPTH):
        shapes.update(block_keys(f"blocks.{i}", D, MLP))
    shapes.update({"fc_norm.weight": (D,), "fc_norm.bias": (D,), "head.weight": (classes, D), "head.bias": (classes,)})
    return shapes


def random_state(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def assert_same(a, b):
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("wrapper", [None, "model", "module"])
def test_pretrain_layout_roundtrips_bit_for_bit(wrapper):
    official = random_state(official_pretrain_shapes())
    model = create_model("vit_tiny", **TINY)
    report = load_official(model, {wrapper: official} if wrapper else official)
    assert not report.missing and not report.unexpected and len(report.loaded) == len(official)
    assert_same(to_official(model), official)


def test_finetune_layout_roundtrips_bit_for_bit_with_ddp_prefix():
    official = random_state(official_finetune_shapes())
    model = create_model("vit_tiny", task="classify", num_classes=5, **TINY)
    report = load_official(model, {"module": {f"module.{k}": v for k, v in official.items()}})
    assert not report.missing and not report.unexpected
    assert_same(to_official(model), official)


def test_pretrain_checkpoint_into_classifier_skips_decoder_keeps_fresh_head():
    official = random_state(official_pretrain_shapes())
    model = create_model("vit_tiny", task="classify", num_classes=5, **TINY)
    head = model.head.weight.clone()
    report = load_official(model, {"model": official})
    assert torch.equal(model.encoder.blocks[1].attn.q_bias, official["encoder.blocks.1.attn.q_bias"])
    assert torch.equal(model.head.weight, head)
    assert set(report.missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    text = " ".join(report.notes)
    assert "decoder" in text and "encoder.norm" in text and "head" in text


def test_other_class_count_reinitialises_head_with_note():
    official = random_state(official_finetune_shapes(classes=400))
    model = create_model("vit_tiny", task="classify", num_classes=5, **TINY)
    report = load_official(model, official)
    assert any("re-initialised head" in n for n in report.notes)
    assert model.head.weight.shape == (5, D) and model.head.weight.abs().max() < 1e-3
    assert torch.equal(model.fc_norm.weight, official["fc_norm.weight"])


def test_drop_head_leaves_a_same_shaped_head_fresh_and_keeps_fc_norm():
    """A classifier of 5 other classes as the init of a 5-class model: its head has the right shape
    but the wrong meaning. drop_head (model.init_head=drop) leaves it fresh; without it, it loads."""
    official = random_state(official_finetune_shapes(classes=5))
    model = create_model("vit_tiny", task="classify", num_classes=5, **TINY)
    report = load_official(model, official, drop_head=True)
    assert report.notes[0].startswith("dropped the checkpoint's classifier head")
    assert not any(n.startswith("head kept freshly") for n in report.notes)
    assert not torch.equal(model.head.weight, official["head.weight"]) and model.head.weight.abs().max() < 1e-3
    assert torch.equal(model.fc_norm.weight, official["fc_norm.weight"])
    assert {"head.weight", "head.bias"} <= set(report.missing)
    kept = create_model("vit_tiny", task="classify", num_classes=5, **TINY)
    load_official(kept, official)
    assert torch.equal(kept.head.weight, official["head.weight"])


@pytest.mark.parametrize("change,match", [(dict(patch_size=8, img_size=64), "patch"),
                                          (dict(embed_dim=48), "another architecture"),
                                          (dict(depth=3), "blocks")])
def test_architecture_mismatch_raises(change, match):
    official = random_state(official_pretrain_shapes())
    model = create_model("vit_tiny", **{**TINY, **change})
    with pytest.raises(CheckpointError, match=match) as info:
        load_official(model, official)
    assert isinstance(info.value, TubeletError) and isinstance(info.value, ValueError)


def test_load_file_and_loaded_model_runs(tmp_path):
    official = random_state(official_pretrain_shapes())
    official = {k: v * 0.02 for k, v in official.items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"model": official, "epoch": 3}, path)
    model = create_model("vit_tiny", **TINY)
    assert not load_file(model, path).missing
    from pipeline.data.masking import running_cell_mask, tube_mask

    enc = tube_mask(1, model.spec.grid, 0.75)
    assert torch.isfinite(model(torch.randn(1, 3, 4, 64, 64), enc, running_cell_mask(1, model.spec.grid, 0.5)))


def test_init_specs_resolve_to_one_weights_file_or_one_line_error(tmp_path):
    """``model.init`` as a file, a pre-training run folder or a fine-tuning run folder; else one line."""
    from jobs.finetune import resolve_init
    from pipeline.train.extract import resolve_model
    from pipeline.train.model_registry import weights_file

    pretrain_run, finetune_run = tmp_path / "pretrain", tmp_path / "finetune"
    (pretrain_run / "export").mkdir(parents=True)
    (pretrain_run / "export" / "pretrain_fp32.pt").write_bytes(b"w")
    (finetune_run / "export" / "last").mkdir(parents=True)
    (finetune_run / "export" / "last" / "model.pt").write_bytes(b"w")
    weights = pretrain_run / "export" / "pretrain_fp32.pt"

    assert weights_file(str(weights)) == str(weights)
    assert weights_file(str(pretrain_run)) == resolve_init(str(pretrain_run)) == str(weights)
    assert resolve_model(str(pretrain_run)) == str(weights)
    # A fine-tuning run without a model card: only fine-tuning looks into export/last for raw weights.
    assert resolve_init(str(finetune_run)) == str(finetune_run / "export" / "last" / "model.pt")
    assert resolve_init("") == resolve_model("") == ""
    # (s3://, runs:/ and models:/ inits: tests/integration/test_init_resolver.py, on moto and MLflow.)
    for spec, match in [(str(finetune_run / "export"), "a folder without weights"),
                        (str(tmp_path / "nothing"), "no such file or folder")]:
        for resolve in (resolve_init, resolve_model):
            with pytest.raises(CheckpointError, match=match) as info:
                resolve(spec)
            assert "\n" not in str(info.value) and spec in str(info.value)
