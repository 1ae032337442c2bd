"""Defensive distillation: a teacher and a student trained at a high softmax temperature, deployed at 1.

Papernot et al., "Distillation as a Defense to Adversarial Perturbations against Deep Neural Networks",
IEEE S&P 2016. The student is trained on the teacher's soft labels with ``softmax(logits / T)``; deployed
at T = 1 its logits are about T times larger than during training, the softmax saturates and the
gradients of the cross-entropy vanish. That is gradient masking, not robustness: Carlini & Wagner 2017
break it with a margin loss on the logits (their C&W attack, or PGD with ``loss="margin"``).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, invalid
from ramparts.training import TrainConfig, TrainReport, predict_logits, train

__all__ = ["Distilled", "TemperatureScaled", "check_temperature", "distill"]

logger = logging.getLogger(__name__)


def check_temperature(temperature: object) -> float:
    """``temperature`` as a float if it is a finite number > 0; an error naming the parameter otherwise."""
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise invalid("temperature", temperature, "a finite number > 0", cls=RampartsTypeError)
    if not math.isfinite(temperature) or temperature <= 0:
        raise invalid("temperature", temperature, "a finite number > 0", "Papernot et al. use 20 to 100")
    return float(temperature)


class TemperatureScaled(nn.Module):
    """``model(x) / temperature``: the logits whose softmax is the softmax at that temperature.

    Wraps (does not copy) ``model``, so training the wrapper trains the model; used to train and label
    at temperature T in :func:`distill` (Papernot et al. 2016).
    """

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise invalid("model", type(model).__name__, "a torch.nn.Module", cls=RampartsTypeError)
        self.model = model
        self.temperature = check_temperature(temperature)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) / self.temperature


@dataclass
class Distilled:
    """What :func:`distill` returns: the deployed student (T = 1), its teacher and both training reports."""

    student: nn.Module
    teacher: nn.Module
    temperature: float
    teacher_report: TrainReport
    student_report: TrainReport


def distill(
    teacher: nn.Module,
    data: Dataset,
    *,
    temperature: float,
    config: TrainConfig,
    student: nn.Module | None = None,
    student_config: TrainConfig | None = None,
    val: Dataset | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Distilled:
    """Defensive distillation (Papernot et al. 2016) of the untrained ``teacher`` on ``data`` at ``temperature``.

    1. train ``teacher`` with the softmax at T (logits / T) and hard labels;
    2. label ``data`` with the teacher's probabilities at T;
    3. train ``student`` (default: a copy of ``teacher`` taken before step 1, same architecture and
       initial weights) on those soft labels at T, with ``student_config`` (default ``config``);
    4. return the student as it is, i.e. deployed at T = 1.

    Both models are trained in place; seed their initial weights before calling. With ``checkpoint_dir``,
    the two runs checkpoint (and resume) in its ``teacher`` and ``student`` sub-folders.
    """
    t = check_temperature(temperature)
    for name, value in (("teacher", teacher), ("student", student)):
        if value is not None and not isinstance(value, nn.Module):
            raise invalid(name, type(value).__name__, "a torch.nn.Module", cls=RampartsTypeError)
    for name, cfg in (("config", config), ("student_config", student_config)):
        if cfg is not None and not isinstance(cfg, TrainConfig):
            raise invalid(name, type(cfg).__name__, "a ramparts.training.TrainConfig", cls=RampartsTypeError)
    if student is None:
        student = copy.deepcopy(teacher)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    teacher_report = train(
        TemperatureScaled(teacher, t),
        data,
        config=config,
        val=val,
        checkpoint_dir=folder / "teacher" if folder is not None else None,
        progress=progress,
    )
    soft = torch.softmax(predict_logits(TemperatureScaled(teacher, t), data.x), dim=1).cpu()
    student_report = train(
        TemperatureScaled(student, t),
        data,
        config=student_config or config,
        val=val,
        checkpoint_dir=folder / "student" if folder is not None else None,
        progress=progress,
        soft_targets=soft,
    )
    logger.info(
        "distilled at T=%g: teacher train acc %.4f, student train acc %.4f",
        t,
        teacher_report.train_acc[-1],
        student_report.train_acc[-1],
    )
    return Distilled(
        student=student.eval(),
        teacher=teacher.eval(),
        temperature=t,
        teacher_report=teacher_report,
        student_report=student_report,
    )
