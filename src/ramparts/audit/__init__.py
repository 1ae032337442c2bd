"""The audit: a battery of checks against one model, gathered into findings, a run folder and a report.

With no model, `run_audit` trains the zoo's `small_cnn` on the embedded digits in a few seconds. The
evasion battery runs FGSM, BIM, PGD, APGD-CE and APGD-DLR (linf) over an eps grid, and C&W-L2
(minimum-norm: the distribution of the distances it needs). Accuracy under attack at eps counts a
sample as broken when the attack fooled it at this eps or at a smaller one of the grid (that example
lies inside the larger ball too), so each curve is non-increasing by construction, and samples already
broken are not attacked again (AutoAttack's rule: spend compute only on points still robust).

The run folder holds `config.json` (what identifies the run), `metrics.json` and `adv_examples.npz`
(np.savez, no pickles), both rewritten after every step, so an interrupted run loses nothing already
measured and a new run with the same configuration and folder resumes from them; the model
(safetensors + JSON), `report.html` (one self-contained file) and `report.json`.

A black-box section runs one score-based (Square, linf at the reference eps) and one label-only attack
(HopSkipJump, L2) at query budgets per image, on a subset: the success rate against the budget.

A theft section trains a label-only copy of the model (Jacobian-based augmentation, from held-out seeds)
and transfers FGSM crafted on it: fidelity against queries and the transfer rate against noise.

A membership section (where the training data is known) scores the training and held-out records with
LOSS and LiRA (shadow models of the audit's recipe): TPR at a low FPR, AUC, the log-log ROC.

Modules: `checks` (the battery, the eps grid and the black-box checks), `blackbox` (the budget sweeps), `theft` (the theft section), `membership` (the membership section), `model` (the model under audit), `runner` (the
per-check work), `run_folder` (the folder's files and resume rules), `report` (`AuditReport`), `run`
(`run_audit`).
"""

from ramparts.audit.checks import (
    CHECKS,
    DEFAULT_BLACKBOX,
    DEFAULT_BLACKBOX_L2_EPS,
    DEFAULT_BLACKBOX_N,
    DEFAULT_CHECKS,
    DEFAULT_EPS_GRID,
    DEFAULT_N,
    DEFAULT_QUERY_BUDGETS,
    DEFAULT_REFERENCE_EPS,
    BlackBoxCheck,
    Check,
    blackbox_checks,
    blackbox_names,
    check_names,
    resolve_blackbox,
    resolve_checks,
)
from ramparts.audit.membership import DEFAULT_SHADOWS as DEFAULT_MEMBERSHIP_SHADOWS
from ramparts.audit.model import DEFAULT_ARCH, DEFAULT_EPOCHS, default_split, train_default_model
from ramparts.audit.poisoning import DEFAULT_FRACTIONS as DEFAULT_POISONING_FRACTIONS
from ramparts.audit.report import AuditReport
from ramparts.audit.run import run_audit
from ramparts.audit.run_folder import RunFolderMismatchError
from ramparts.audit.theft import DEFAULT_THEFT, DEFAULT_THEFT_SEEDS

__all__ = [
    "CHECKS",
    "DEFAULT_ARCH",
    "DEFAULT_BLACKBOX",
    "DEFAULT_BLACKBOX_L2_EPS",
    "DEFAULT_BLACKBOX_N",
    "DEFAULT_CHECKS",
    "DEFAULT_EPOCHS",
    "DEFAULT_EPS_GRID",
    "DEFAULT_MEMBERSHIP_SHADOWS",
    "DEFAULT_N",
    "DEFAULT_POISONING_FRACTIONS",
    "DEFAULT_QUERY_BUDGETS",
    "DEFAULT_REFERENCE_EPS",
    "DEFAULT_THEFT",
    "DEFAULT_THEFT_SEEDS",
    "AuditReport",
    "BlackBoxCheck",
    "Check",
    "RunFolderMismatchError",
    "blackbox_checks",
    "blackbox_names",
    "check_names",
    "default_split",
    "resolve_blackbox",
    "resolve_checks",
    "run_audit",
    "train_default_model",
]
