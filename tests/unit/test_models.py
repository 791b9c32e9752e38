"""Model family: sizes on meta, tiny forward/backward, loss semantics, attention and checkpointing."""

import pytest
import torch

from pipeline.data.masking import decoder_mask, tube_mask
from pipeline.models import create_model, list_models, param_groups
from pipeline.models.flops import param_counts
from pipeline.models.pretrain import IMAGENET_MEAN, IMAGENET_STD, mask_to_index, patchify, unpatchify
from pipeline.models.sizes import PAPER_ENCODER_PARAMS_M

TINY = dict(num_frames=4, img_size=64)  # grid (2, 4, 4): 32 tokens


def tiny(task="pretrain", **kw):
    torch.manual_seed(0)
    return create_model("vit_tiny", task=task, **TINY, **kw)


def batch(b=2, seed=0, enc_ratio=0.75, dec_ratio=0.5):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(b, 3, 4, 64, 64, generator=g)
    enc = tube_mask(b, (2, 4, 4), enc_ratio, g)
    return video, enc, decoder_mask(enc, (2, 4, 4), dec_ratio, g)


@pytest.mark.parametrize("name", list_models())
def test_every_size_builds_on_meta_with_expected_params(name):
    model = create_model(name, device="meta")
    assert all(p.is_meta for p in model.parameters())
    enc = sum(p.numel() for k, p in model.named_parameters() if k.startswith("encoder."))
    assert sum(p.numel() for p in model.parameters()) == param_counts(model.spec)["total"]
    if name in PAPER_ENCODER_PARAMS_M:
        assert enc / 1e6 == pytest.approx(PAPER_ENCODER_PARAMS_M[name], rel=0.01)
    clf = create_model(name, task="classify", device="meta", num_classes=400)
    assert sum(p.numel() for p in clf.parameters()) == param_counts(clf.spec, num_classes=400)["total"]


def test_decoder_widths_and_vit_g_patch():
    widths = {n: create_model(n, device="meta").spec.decoder_dim for n in ("vit_s", "vit_b", "vit_l", "vit_h", "vit_g")}
    assert widths == {"vit_s": 192, "vit_b": 384, "vit_l": 512, "vit_h": 512, "vit_g": 512}
    g = create_model("vit_g", device="meta")
    assert g.spec.patch_size == 14 and g.decoder.head.out_features == 2 * 14 * 14 * 3
    assert len(g.decoder.blocks) == 4


def test_forward_backward_fp32_and_shapes():
    model = tiny()
    video, enc, dec = batch()
    loss, pred, keep = model(video, enc, dec, return_pred=True)
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert pred.shape == (2, 16, model.spec.patch_dim) and keep.shape == (2, 16)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bf16_autocast_and_bf16_params():
    model = tiny()
    video, enc, dec = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(video, enc, dec)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    model = tiny().to(torch.bfloat16)
    loss = model(video.to(torch.bfloat16), enc, dec)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    clf = tiny("classify", num_classes=3).to(torch.bfloat16)
    assert clf(video.to(torch.bfloat16)).dtype == torch.bfloat16


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def test_grad_checkpointing_same_loss_and_grads():
    video, enc, dec = batch()
    plain = tiny()
    loss = plain(video, enc, dec)
    loss.backward()
    ckpt = tiny(grad_checkpointing=True)
    assert ckpt.encoder.grad_checkpointing and ckpt.decoder.grad_checkpointing
    loss_ckpt = ckpt(video, enc, dec)
    loss_ckpt.backward()
    assert torch.equal(loss, loss_ckpt)
    for k, g in grads(plain).items():
        torch.testing.assert_close(ckpt.get_parameter(k).grad, g, rtol=1e-5, atol=1e-6)


def test_sdpa_matches_eager_reference_and_visible_embedding_matches_conv():
    video, enc, dec = batch()
    fast = tiny()
    ref = tiny(attn_impl="eager", embed_visible_only=False)
    l1, p1, _ = fast(video, enc, dec, return_pred=True)
    l2, p2, _ = ref(video, enc, dec, return_pred=True)
    torch.testing.assert_close(p1, p2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    l1.backward(), l2.backward()
    for k, g in grads(ref).items():
        torch.testing.assert_close(fast.get_parameter(k).grad, g, rtol=1e-3, atol=1e-5)


def manual_targets(video):
    """Independent official target: un-normalise, per-token (pt, ph, pw) x C, unbiased std."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    v = video * std + mean
    out = []
    for t in range(2):
        for h in range(4):
            for w in range(4):
                cube = v[:, :, 2 * t:2 * t + 2, 16 * h:16 * h + 16, 16 * w:16 * w + 16]  # B, C, 2, 16, 16
                px = cube.permute(0, 2, 3, 4, 1).reshape(video.shape[0], -1, 3)  # B, 512, C
                px = (px - px.mean(1, keepdim=True)) / (px.std(1, keepdim=True) + 1e-6)
                out.append(px.reshape(video.shape[0], -1))
    return torch.stack(out, 1)  # [B, N, 1536]


def test_v1_loss_is_mse_over_all_masked_tokens():
    model = tiny()
    video, enc, _ = batch(dec_ratio=0.0)
    loss, pred, keep = model(video, enc, None, return_pred=True)
    assert torch.equal(keep, mask_to_index(enc))
    target = manual_targets(video).gather(1, keep[..., None].expand(-1, -1, pred.shape[-1]))
    torch.testing.assert_close(loss, ((pred - target) ** 2).mean(), rtol=1e-5, atol=1e-6)
    assert torch.equal(model(video, enc, ~enc), loss)


def test_loss_counts_only_cell_kept_and_encoder_masked_tokens():
    model = tiny()
    video, enc, dec = batch()
    loss, pred, keep = model(video, enc, dec, return_pred=True)
    counted = enc.gather(1, keep)  # [B, Nk]: kept positions the encoder did not see
    assert counted.any() and (~counted).any()  # both kinds occur, or the test proves nothing
    noisy = pred + 5.0 * (~counted)[..., None] * torch.randn_like(pred)
    assert torch.equal(model.forward_loss(video, noisy, keep, enc), loss)
    moved = pred + 0.1 * counted[..., None]
    assert not torch.allclose(model.forward_loss(video, moved, keep, enc), loss)
    target = manual_targets(video).gather(1, keep[..., None].expand(-1, -1, pred.shape[-1]))
    per_token = ((pred - target) ** 2).mean(-1)
    torch.testing.assert_close(loss, per_token[counted].mean(), rtol=1e-5, atol=1e-6)


def test_decoder_sees_cell_kept_positions_including_visible_ones():
    model = tiny()
    video, enc, dec = batch()
    _, _, keep = model(video, enc, dec, return_pred=True)
    assert torch.equal(keep, mask_to_index(~dec))
    assert (~enc).gather(1, keep).any()


def test_unequal_mask_counts_and_bad_shapes_raise():
    model = tiny()
    video, enc, dec = batch()
    enc[0, 0] = ~enc[0, 0]
    with pytest.raises(ValueError, match="same number"):
        model(video, enc, dec)
    with pytest.raises(ValueError, match="bool"):
        model(video, enc.int(), dec)
    with pytest.raises(ValueError, match="expected video"):
        model(video[:, :, :2], *batch()[1:])


def test_patchify_roundtrip_and_reconstruct_with_perfect_prediction():
    video = torch.rand(2, 3, 4, 64, 64)
    assert torch.equal(unpatchify(patchify(video, 2, 16), (2, 4, 4), 2, 16), video)
    model = tiny()
    norm_video = (video - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    _, enc, dec = batch()
    keep = mask_to_index(~dec)
    pictures = model.reconstruct(norm_video, model.targets(norm_video, keep), keep)
    torch.testing.assert_close(pictures, video, rtol=1e-4, atol=1e-4)


def test_classifier_hooks_and_head():
    clf = tiny("classify", num_classes=7, drop_path=0.1)
    video = batch()[0]
    assert clf(video).shape == (2, 7)
    assert clf.forward_features(video).shape == (2, 96)
    assert clf.head.weight.abs().max() < 1e-3  # init_scale 0.001 as official
    assert clf.num_layers() == clf.spec.depth + 2
    assert clf.layer_id("encoder.patch_embed.proj.weight") == 0
    assert clf.layer_id("encoder.blocks.1.attn.qkv.weight") == 2
    assert clf.layer_id("head.weight") == clf.layer_id("fc_norm.weight") == clf.spec.depth + 1
    named = dict(clf.named_parameters())
    assert clf.decays("head.weight", named["head.weight"])
    for k in ("head.bias", "fc_norm.weight", "encoder.blocks.0.attn.q_bias", "encoder.blocks.0.norm1.weight"):
        assert not clf.decays(k, named[k])
    clf.reset_classifier(3)
    assert clf(video).shape == (2, 3)
    groups = param_groups(clf, weight_decay=0.05, layer_decay=0.75)
    assert sum(len(g["params"]) for g in groups) == len(named)
    top = [g for g in groups if g["layer_id"] == 0][0]
    assert top["lr_scale"] == pytest.approx(0.75 ** (clf.spec.depth + 1))


def test_pretrain_hooks_and_layer_scale():
    model = tiny(layer_scale_init=0.1)
    assert "mask_token" in model.no_weight_decay()
    assert model.layer_id("decoder.blocks.0.mlp.fc1.weight") == model.num_layers() - 1
    video, enc, dec = batch()
    model(video, enc, dec).backward()
    assert model.encoder.blocks[0].gamma_1.grad is not None  # the scales are in the graph, so they train


def test_layer_scale_multiplies_each_residual_branch():
    """out = x' + gamma_2 * mlp(norm2(x')), x' = x + gamma_1 * attn(norm1(x)): checked against the
    formula with random per-channel gammas, and the output moves when a gamma does."""
    model = tiny(layer_scale_init=0.1)
    block = model.encoder.blocks[0].eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        block.gamma_1.copy_(torch.rand(block.gamma_1.shape, generator=g) + 0.5)
        block.gamma_2.copy_(torch.rand(block.gamma_2.shape, generator=g) - 0.5)
        x = torch.randn(2, 5, block.gamma_1.numel(), generator=g)
        mid = x + block.gamma_1 * block.attn(block.norm1(x))
        expected = mid + block.gamma_2 * block.mlp(block.norm2(mid))
        out = block(x)
        torch.testing.assert_close(out, expected)
        unscaled = x + block.attn(block.norm1(x))
        assert not torch.allclose(out, unscaled + block.mlp(block.norm2(unscaled)), atol=1e-3)
        block.gamma_2.mul_(2.0)
        assert not torch.allclose(block(x), out, atol=1e-4), "changing gamma_2 did not change the output"


def test_benchmark_quick_smoke(tmp_path):
    from benchmarks.bench_model import main

    result = main(["--quick", "--out", str(tmp_path / "model_step.json")])
    assert (tmp_path / "model_step.json").is_file()
    assert [p["pair"] for p in result["ratios"]] == ["ours / eager reference, dual masking",
                                                     "ours / eager reference, V1 masking", "dual / V1 masking (ours)"]
    assert [f["ratio"] for f in result["figures"]] == [p["median"] for p in result["ratios"]]


def test_adapters_start_as_identity_and_only_they_train_in_adapter_mode():
    from pipeline.models.weights import load_official
    from pipeline.train.finetune import freeze_for_mode

    torch.manual_seed(0)
    plain = create_model("vit_tiny", "classify", num_frames=4, img_size=32, num_classes=3).eval()
    adapted = create_model("vit_tiny", "classify", num_frames=4, img_size=32, num_classes=3, adapter_dim=8).eval()
    report = load_official(adapted, plain.state_dict())
    assert any(n.startswith("adapters kept freshly initialised") for n in report.notes)
    assert {k for k in report.missing} == {k for k in adapted.state_dict() if ".adapter." in k}
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():  # zero up-projection: exactly the model without adapters
        assert torch.equal(adapted(video), plain(video))
    extra = sum(p.numel() for n, p in adapted.named_parameters() if ".adapter." in n)
    assert extra == 2 * (96 * 8 + 8 + 8 * 96 + 96)  # depth 2 x (down + up)

    freeze_for_mode(adapted, "adapter")
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in adapted.named_parameters()
                         if ".adapter." in n or n.startswith(("fc_norm.", "head."))}
    groups = param_groups(adapted, weight_decay=0.05, layer_decay=0.75)
    assert sum(len(g["params"]) for g in groups) == len(trainable)  # frozen weights get no optimizer state
    before = {n: p.detach().clone() for n, p in adapted.named_parameters()}
    opt = torch.optim.SGD([p for p in adapted.parameters() if p.requires_grad], lr=1.0)
    adapted.train()
    for _ in range(2):  # the first step moves only the zero-initialised up-projection and the head
        opt.zero_grad()
        torch.nn.functional.cross_entropy(adapted(video), torch.tensor([0, 2])).backward()
        opt.step()
    changed = {n for n, p in adapted.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable and any(".adapter.down." in n for n in changed)

    freeze_for_mode(adapted, "linear_probe")
    assert all(not p.requires_grad for p in adapted.encoder.parameters())


def test_raw_pixel_targets_and_patch_size_from_the_model_section():
    from pipeline.models import ClassifierConfig, ModelConfig, PretrainModelConfig, create_model_from_config

    cfg = PretrainModelConfig(name="vit_tiny", num_frames=4, img_size=32, patch_size=8, normalize_target=False)
    model = create_model_from_config(cfg, "pretrain")
    assert model.spec.patch_size == 8 and model.spec.grid == (2, 4, 4) and not model.normalize_target
    classifier = ClassifierConfig(name="vit_tiny", num_frames=4, img_size=32, patch_size=8)
    assert create_model_from_config(classifier, "classify").spec.patch_size == 8
    assert create_model_from_config(ModelConfig(name="vit_tiny", num_frames=4, img_size=32)).spec.patch_size == 16
    video = torch.rand(2, 3, 4, 32, 32)
    norm_video = (video - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    keep = torch.arange(32).expand(2, -1)
    targets = model.targets(norm_video, keep)  # raw 0-1 pixels, official layout
    torch.testing.assert_close(targets, patchify(video, 2, 8).flatten(2), rtol=1e-5, atol=1e-5)
    assert targets.min() >= -1e-5 and targets.max() <= 1 + 1e-5
    torch.testing.assert_close(model.reconstruct(norm_video, targets, keep), video, rtol=1e-4, atol=1e-4)
    enc = tube_mask(2, (2, 4, 4), 0.75, torch.Generator().manual_seed(0))
    assert model(norm_video, enc).item() > 0


def test_encoder_to_decoder_and_mask_token_are_initialised_as_official():
    """Official models/modeling_pretrain.py: the encoder and decoder apply their xavier init, but
    PretrainVisionTransformer itself never calls ``self.apply(self._init_weights)``, so
    ``encoder_to_decoder`` (Linear, no bias) keeps nn.Linear's default kaiming-uniform(a=sqrt(5)),
    i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and ``mask_token`` is trunc_normal_(std=.02) cut at +-std."""
    torch.manual_seed(0)
    model = create_model("vit_s", task="pretrain", num_frames=4, img_size=32)
    w = model.encoder_to_decoder.weight.detach()
    fan_in, fan_out = w.shape[1], w.shape[0]
    bound = 1 / fan_in ** 0.5  # nn.Linear default; xavier would be sqrt(6 / (fan_in + fan_out)), twice that here
    assert model.encoder_to_decoder.bias is None
    assert w.abs().max() <= bound and w.abs().max() > 0.98 * bound
    assert w.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.03)  # uniform's std
    assert (6 / (fan_in + fan_out)) ** 0.5 > 1.5 * bound  # the two inits are told apart by these checks
    # the encoder's and decoder's own Linears keep the xavier init
    fc = model.decoder.blocks[0].mlp.fc1.weight.detach()
    assert fc.abs().max() > 0.98 * (6 / sum(fc.shape)) ** 0.5
    m = model.mask_token.detach()
    assert m.abs().max() <= 0.02 and m.std() > 0.005
