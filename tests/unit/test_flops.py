"""Analytic FLOPs against the paper and against torch's FlopCounterMode."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.data.masking import running_cell_mask, tube_mask
from pipeline.models import create_model, get_spec
from pipeline.models.flops import classify_macs, pretrain_macs, token_counts, train_flops_per_clip


def test_vit_b_dual_masking_costs_what_the_paper_says():
    spec = get_spec("vit_b")
    dual, single = pretrain_macs(spec, 0.9, 0.5), pretrain_macs(spec, 0.9, 0.0)
    assert dual.total / single.total == pytest.approx(25.87 / 35.48, rel=0.05)
    assert dual.total / 1e9 == pytest.approx(25.87, rel=0.02)
    assert single.total / 1e9 == pytest.approx(35.48, rel=0.02)
    assert (dual.tokens_encoder, dual.tokens_decoder) == (160, 160 + 784)


def test_token_counts():
    spec = get_spec("vit_b")
    assert token_counts(spec, 0.9, 0.0) == {"all": 1568, "visible": 160, "decoder_queries": 1408}
    assert token_counts(spec, 0.9, 0.75)["decoder_queries"] == 392
    assert token_counts(spec, 0.9, 0.5, "random")["visible"] == 1568 - int(0.9 * 1568)


def test_train_flops_is_six_times_macs():
    spec = get_spec("vit_s")
    assert train_flops_per_clip(spec) == 6 * pretrain_macs(spec, embed_all_tokens=False).total


@pytest.mark.parametrize("enc_ratio,dec_ratio", [(0.75, 0.5), (0.5, 0.0), (0.75, 0.25)])
def test_agrees_with_flop_counter_mode(enc_ratio, dec_ratio):
    # SDPA's CPU kernel is not counted by FlopCounterMode: count the eager reference instead.
    model = create_model("vit_tiny", num_frames=4, img_size=64, attn_impl="eager")
    grid = model.spec.grid
    enc = tube_mask(1, grid, enc_ratio)
    dec = running_cell_mask(1, grid, dec_ratio) if dec_ratio else None
    video = torch.randn(1, 3, 4, 64, 64)
    with FlopCounterMode(display=False) as counter:
        model(video, enc, dec)
    measured_macs = counter.get_total_flops() / 2  # FlopCounterMode counts 2 FLOPs per MAC
    analytic = pretrain_macs(model.spec, enc_ratio, dec_ratio, embed_all_tokens=False).total
    assert measured_macs == pytest.approx(analytic, rel=0.05)
    conv = create_model("vit_tiny", num_frames=4, img_size=64, attn_impl="eager", embed_visible_only=False)
    with FlopCounterMode(display=False) as counter:
        conv(video, enc, dec)
    assert counter.get_total_flops() / 2 == pytest.approx(pretrain_macs(model.spec, enc_ratio, dec_ratio).total, rel=0.05)


def test_classifier_flops_agree_with_counter():
    model = create_model("vit_tiny", task="classify", num_frames=4, img_size=64, attn_impl="eager", num_classes=10)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 4, 64, 64))
    assert counter.get_total_flops() / 2 == pytest.approx(classify_macs(model.spec, 10), rel=0.05)
