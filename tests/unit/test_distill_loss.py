"""The distillation loss on fixed logits and features, by hand; and the teacher checks the driver makes."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.core.config import load_config
from pipeline.core.errors import DataError
from pipeline.models.classify import Classifier
from pipeline.models.sizes import get_spec
from pipeline.train.distill import FeatureTap, check_teacher, distill_loss, kd_loss, similarity_loss
from pipeline.train.job_configs import DistillConfig, DistillSection
from pipeline.train.model_registry import ModelCard

STUDENT = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
TEACHER = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, -2.0]])


def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(x / t) for x in row]
    return [x / sum(e) for x in e]


def _kd_by_hand(t: float) -> float:
    total = 0.0
    for s_row, t_row in zip(STUDENT.tolist(), TEACHER.tolist()):
        p, q = _softmax(t_row, t), _softmax(s_row, t)
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return t * t * total / len(STUDENT)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_is_t2_times_the_mean_kl_of_teacher_to_student(temperature: float) -> None:
    assert kd_loss(STUDENT, TEACHER, temperature).item() == pytest.approx(_kd_by_hand(temperature), rel=1e-6)
    assert _kd_by_hand(1.0) == pytest.approx((0.463214 + 1.062945) / 2, abs=1e-5)  # per row, by NumPy


def test_kd_loss_is_zero_when_the_student_matches_the_teacher_and_not_symmetric() -> None:
    assert kd_loss(TEACHER.clone(), TEACHER, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(TEACHER + 5.0, TEACHER, 2.0).item() == pytest.approx(0.0, abs=1e-6)  # a shift changes no softmax
    assert kd_loss(STUDENT, TEACHER, 1.0).item() != pytest.approx(kd_loss(TEACHER, STUDENT, 1.0).item(), rel=1e-3)


def test_distill_loss_weighs_kd_and_label_terms() -> None:
    target = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.05, 0.9]])  # smoothed labels 0 and 2
    ce = -sum(sum(t * math.log(q) for t, q in zip(t_row, _softmax(s_row, 1.0)))
              for s_row, t_row in zip(STUDENT.tolist(), target.tolist())) / 2
    loss, kd, ce_out, feat = distill_loss(STUDENT, TEACHER, target, 2.0, 0.3)
    assert ce_out is not None and ce_out.item() == pytest.approx(ce, rel=1e-6)
    assert kd.item() == pytest.approx(_kd_by_hand(2.0), rel=1e-6)
    assert loss.item() == pytest.approx(0.3 * _kd_by_hand(2.0) + 0.7 * ce, rel=1e-6)
    assert feat is None  # no feature term by default
    only_kd, kd2, none, no_feat = distill_loss(STUDENT, TEACHER, None, 2.0, 0.3)  # unlabelled: KD only
    assert none is None and no_feat is None and only_kd.item() == pytest.approx(kd2.item())


def test_kd_gradient_pulls_the_student_towards_the_teacher() -> None:
    student = STUDENT.clone().requires_grad_(True)
    kd_loss(student, TEACHER, 1.0).backward()
    assert student.grad is not None
    # d/ds of KL(p || softmax(s)) is (softmax(s) - p) / B at T = 1
    expected = (torch.softmax(STUDENT, -1) - torch.softmax(TEACHER, -1)) / 2
    assert torch.allclose(student.grad, expected, atol=1e-6)


# Pooled features of a batch of 3: the student 2 wide, the teacher 3 wide (SP needs no projector).
FEAT_S = torch.tensor([[0.5, 1.0], [-1.0, 0.0], [2.0, 1.0]])
FEAT_T = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [1.0, 1.0, 0.0]])


def _sp_by_hand(fs: list[list[float]], ft: list[list[float]]) -> float:
    """Tung & Mori's loss in plain Python: G = F F^T, each row L2-normalised, ||G_s - G_t||_F^2 / B^2."""
    def gram(f: list[list[float]]) -> list[list[float]]:
        g = [[sum(a * b for a, b in zip(fi, fj)) for fj in f] for fi in f]
        return [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in g]

    gs, gt = gram(fs), gram(ft)
    return sum((a - b) ** 2 for rs, rt in zip(gs, gt) for a, b in zip(rs, rt)) / len(fs) ** 2


def test_similarity_loss_by_hand_for_different_widths() -> None:
    expected = _sp_by_hand(FEAT_S.tolist(), FEAT_T.tolist())
    assert expected == pytest.approx(0.32074802, rel=1e-6)  # by NumPy
    assert similarity_loss(FEAT_S, FEAT_T).item() == pytest.approx(expected, rel=1e-6)
    assert similarity_loss(FEAT_S.to(torch.bfloat16), FEAT_T).dtype == torch.float32  # computed in fp32
    with pytest.raises(ValueError, match="not of the same batch"):
        similarity_loss(FEAT_S[:2], FEAT_T)


def test_similarity_loss_is_zero_up_to_a_rotation_or_global_scale_but_not_a_per_sample_scale() -> None:
    assert similarity_loss(FEAT_T.clone(), FEAT_T).item() == pytest.approx(0.0, abs=1e-7)
    assert similarity_loss(3.0 * FEAT_T, FEAT_T).item() == pytest.approx(0.0, abs=1e-7)
    # a wider student whose features are the teacher's times Q [3, 5] with orthonormal rows: G is the same
    q, _ = torch.linalg.qr(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, 0.0, 1.0], [1.0, 1.0, 1.0],
                                         [0.0, 2.0, 1.0]]))  # [5, 3], orthonormal columns
    assert similarity_loss(FEAT_T @ q.t(), FEAT_T).item() == pytest.approx(0.0, abs=1e-6)
    # A per-sample scale diag(c) F makes G_s = diag(c) G_t diag(c): the row norm removes c_i but not the
    # column factors c_j, so the loss is not zero (by hand: 0.041254 for c = 1, 2, 3).
    scaled = torch.tensor([[1.0], [2.0], [3.0]]) * FEAT_T
    expected = _sp_by_hand(scaled.tolist(), FEAT_T.tolist())
    assert expected == pytest.approx(0.04125383, rel=1e-5)
    assert similarity_loss(scaled, FEAT_T).item() == pytest.approx(expected, rel=1e-5)


def test_distill_loss_adds_exactly_feature_weight_times_feat() -> None:
    target = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.05, 0.9]])
    fs, ft = FEAT_S[:2], FEAT_T[:2]
    base, kd, ce, none = distill_loss(STUDENT, TEACHER, target, 2.0, 0.3, fs, ft)  # weight 0: features ignored
    assert none is None and torch.equal(base, distill_loss(STUDENT, TEACHER, target, 2.0, 0.3)[0])
    loss, kd2, ce2, feat = distill_loss(STUDENT, TEACHER, target, 2.0, 0.3, fs, ft, feature_weight=0.25)
    assert feat is not None and feat.item() == pytest.approx(_sp_by_hand(fs.tolist(), ft.tolist()), rel=1e-6)
    assert feat.item() > 0 and torch.equal(kd, kd2) and ce2 is not None and torch.equal(ce, ce2)
    assert loss.item() == pytest.approx(base.item() + 0.25 * feat.item(), rel=1e-6)
    unlabelled, kd3, _, feat3 = distill_loss(STUDENT, TEACHER, None, 2.0, 0.3, fs, ft, feature_weight=2.0)
    assert feat3 is not None and unlabelled.item() == pytest.approx(kd3.item() + 2.0 * feat3.item(), rel=1e-6)
    with pytest.raises(ValueError, match="needs the student's and the teacher's features"):
        distill_loss(STUDENT, TEACHER, target, 2.0, 0.3, feature_weight=1.0)


def test_the_feature_term_sends_a_gradient_to_the_student_features() -> None:
    fs = FEAT_S.clone().requires_grad_(True)
    logits = STUDENT[:1].expand(3, -1)
    loss, _, _, feat = distill_loss(logits, TEACHER[:1].expand(3, -1), None, 1.0, 1.0, fs, FEAT_T,
                                    feature_weight=1.0)
    loss.backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    with torch.no_grad():  # a small step down the gradient lowers the feature term
        assert similarity_loss(fs - 0.05 * fs.grad, FEAT_T) < feat


def test_the_tap_keeps_the_pooled_features_of_the_models_own_forward() -> None:
    torch.manual_seed(0)
    model = Classifier(get_spec("vit_tiny", num_frames=4, img_size=32), num_classes=3).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    tap = FeatureTap(model.fc_norm)
    logits = model(video)
    feats = tap.pop()
    assert feats.shape == (2, model.spec.embed_dim) and torch.allclose(feats, model.forward_features(video))
    assert feats.requires_grad, "the student's features must keep their graph: the feature term trains the encoder"
    assert torch.allclose(model.forward_head(feats), logits)  # the teacher's one forward, split in two
    tap.pop()  # the forward_features call above went through fc_norm too
    with pytest.raises(RuntimeError, match="saw no forward"):
        tap.pop()  # read once
    tap.remove()
    model(video)
    assert tap.value is None  # the hook is gone


def test_a_negative_feature_weight_fails_in_one_line() -> None:
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match=r"^distill.feature_weight must be >= 0") as info:
            DistillSection(feature_weight=bad)
        assert "\n" not in str(info.value)
    with pytest.raises(Exception, match="distill.feature_weight"):
        _cfg("distill.feature_weight=-1")
    assert DistillSection().feature_weight == 0.0 and _cfg("distill.feature_weight=0.5").distill.feature_weight == 0.5


def _cfg(*extra: str) -> DistillConfig:
    return load_config(DistillConfig, None, ["model.name=vit_tiny", "model.num_frames=4", "model.img_size=32",
                                             "data.sampling_rate=2", "distill.teacher=/t", *extra])


def _card(names: list[str], **data: int) -> ModelCard:
    return ModelCard(model={"name": "vit_s", "num_classes": len(names)}, class_names=names,
                     data={"num_frames": 4, "input_size": 32, "sampling_rate": 2, **data})


def test_the_teacher_must_have_the_data_classes_in_order_and_the_student_clip() -> None:
    check_teacher(_cfg(), _card(["a", "b"]), ["a", "b"])
    check_teacher(_cfg(), _card(["a", "b"]), [])  # unlabelled shards: the teacher's classes are the head
    with pytest.raises(DataError, match=r"fine-tuned on classes \['b', 'a'\], the shards' labels are \['a', 'b'\]"):
        check_teacher(_cfg(), _card(["b", "a"]), ["a", "b"])
    with pytest.raises(DataError, match="fine-tuned on classes"):
        check_teacher(_cfg(), _card(["a", "b", "c"]), ["a", "b"])
    with pytest.raises(DataError, match=r"^data.sampling_rate=2 but distill.teacher /t was trained on sampling_rate 4"):
        check_teacher(_cfg(), _card(["a", "b"], sampling_rate=4), ["a", "b"])
    with pytest.raises(DataError, match=r"^model.img_size=32 .* input_size 64"):
        check_teacher(_cfg(), _card(["a", "b"], input_size=64), ["a", "b"])


def test_distill_config_refuses_a_bad_temperature_or_alpha() -> None:
    with pytest.raises(Exception, match="distill.temperature"):
        _cfg("distill.temperature=0")
    with pytest.raises(Exception, match="distill.alpha"):
        _cfg("distill.alpha=1.5")
