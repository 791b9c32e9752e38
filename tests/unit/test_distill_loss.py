"""The distillation loss on fixed logits, by hand; and the teacher checks the driver makes."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.core.config import load_config
from pipeline.core.errors import DataError
from pipeline.train.distill import check_teacher, distill_loss, kd_loss
from pipeline.train.job_configs import DistillConfig
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
    loss, kd, ce_out = distill_loss(STUDENT, TEACHER, target, 2.0, 0.3)
    assert ce_out is not None and ce_out.item() == pytest.approx(ce, rel=1e-6)
    assert kd.item() == pytest.approx(_kd_by_hand(2.0), rel=1e-6)
    assert loss.item() == pytest.approx(0.3 * _kd_by_hand(2.0) + 0.7 * ce, rel=1e-6)
    only_kd, kd2, none = distill_loss(STUDENT, TEACHER, None, 2.0, 0.3)  # unlabelled: KD only
    assert none is None and only_kd.item() == pytest.approx(kd2.item())


def test_kd_gradient_pulls_the_student_towards_the_teacher() -> None:
    student = STUDENT.clone().requires_grad_(True)
    kd_loss(student, TEACHER, 1.0).backward()
    assert student.grad is not None
    # d/ds of KL(p || softmax(s)) is (softmax(s) - p) / B at T = 1
    expected = (torch.softmax(STUDENT, -1) - torch.softmax(TEACHER, -1)) / 2
    assert torch.allclose(student.grad, expected, atol=1e-6)


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
