"""Knockoff Nets (Orekondy, Schiele & Fritz, "Knockoff Nets: Stealing Functionality of Black-Box Models",
CVPR 2019): query the victim with natural images from *another* distribution (the transfer set, the
theft's `seed_data`) and train a substitute on its answers.

- `strategy="random"`: `budget` images drawn uniformly without replacement from the transfer set.
- `strategy="adaptive"`: the paper's gradient-bandit policy over coarse groups of the transfer set (groups
  from a given label array `groups`, or `n_groups` k-means clusters of the inputs). Each step draws a group
  from softmax(H), sends `step_size` unused images of it, and updates the preferences with the reward
  against a running-mean baseline (Sutton & Barto's gradient bandit, as in the paper). Rewards (paper 4.1.2):
  `certainty` (margin of the victim's top two probabilities), `diversity` (sum_k max(0, y_k - mean of the
  recent outputs_k)), `loss` (cross-entropy of the current substitute against the victim's output).
- `knockoff` has knowledge SCORE and trains on the victim's probabilities with a soft cross-entropy
  (through `training.train`'s `soft_targets`); `knockoff_labels` has knowledge LABEL and trains on the
  victim's labels with the plain cross-entropy (one-hot outputs feed the rewards).

One query is one image sent. The substitute (a zoo architecture) is trained after each fraction of the
budget in `record_at` (continuing from the previous phase, on everything bought so far), and the base's
fidelity is recorded after each phase: the fidelity-against-queries curve. The `loss` reward uses the
substitute of the last completed phase (random at the start). With `run_dir`, each completed phase is
saved (`ramparts.theft.checkpoint`: the images bought and the answers, the substitute, the bandit's
preferences and baseline, the random generator's state) and a new call of the same configuration resumes
after it, with the query count restored, to the same result as an uninterrupted run.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, invalid
from ramparts.oracles.base import Knowledge
from ramparts.params import Interval, Options
from ramparts.theft import checkpoint
from ramparts.theft.base import Predictor, TheftAttack, TheftContext, register
from ramparts.training import TrainConfig, train
from ramparts.zoo import ARCHITECTURES, build, load_weights

__all__ = ["KnockoffNets", "KnockoffNetsLabels", "adapt_images"]

STRATEGIES = ("random", "adaptive")
REWARDS = ("certainty", "diversity", "loss")
_STATE = "knockoff_state.json"
_GRAY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma


def adapt_images(x: Tensor, shape: tuple[int, int, int] | list[int]) -> Tensor:
    """Images [N, C, H, W] in [0, 1] converted to the victim's input `shape` (C', H', W'): RGB to grayscale
    (BT.601 luma) or grayscale repeated to RGB, then resized with antialiased bilinear interpolation."""
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.dtype.is_floating_point:
        given = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise invalid("x", given, "a float tensor [N, C, H, W]", cls=RampartsTypeError)
    if len(shape) != 3 or any(not isinstance(s, int) or s < 1 for s in shape):
        raise invalid("shape", shape, "(channels, height, width) of positive integers")
    c, h, w = shape
    if x.shape[1] == c:
        out = x
    elif c == 1 and x.shape[1] == 3:
        weights = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        out = (x * weights).sum(1, keepdim=True)
    elif c == 3 and x.shape[1] == 1:
        out = x.expand(-1, 3, -1, -1)
    else:
        raise invalid("shape", shape, f"1 or 3 channels, or the images' own {x.shape[1]}")
    if tuple(out.shape[2:]) != (h, w):
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out.clamp(0.0, 1.0).float().contiguous()


@register("knockoff")
class KnockoffNets(TheftAttack):
    """Knockoff Nets on the victim's probabilities (knowledge SCORE); see the module docstring.

    `budget`: images sent (= queries); `arch`/`arch_config`: the substitute from the zoo (in_channels,
    input_size and num_classes are filled in); `epochs`, `batch_size`, `lr`: Adam training per phase;
    `record_at`: budget fractions after which the substitute is trained and its fidelity recorded;
    adaptive only: `groups` (one integer group per transfer image) or `n_groups` k-means clusters,
    `reward` (None: certainty for scores, loss for labels), `bandit_lr`, `step_size` images per step.
    """

    knowledge: ClassVar[Knowledge] = Knowledge.SCORE
    constraints: ClassVar = {
        "budget": Interval(int, low=1),
        "strategy": Options(STRATEGIES),
        "arch": Options(tuple(ARCHITECTURES)),
        "epochs": Interval(int, low=1),
        "batch_size": Interval(int, low=1),
        "lr": Interval(float, low=0, open_low=True),
        "n_groups": Interval(int, low=1),
        "reward": Options((None, *REWARDS)),
        "bandit_lr": Interval(float, low=0, open_low=True),
        "step_size": Interval(int, low=1),
    }

    def __init__(
        self,
        *,
        budget: int = 1000,
        strategy: str = "random",
        arch: str = "small_cnn",
        arch_config: dict[str, Any] | None = None,
        epochs: int = 20,
        batch_size: int = 64,
        lr: float = 1e-3,
        record_at: tuple[float, ...] = (0.25, 0.5, 1.0),
        groups: Tensor | None = None,
        n_groups: int = 10,
        reward: str | None = None,
        bandit_lr: float = 0.1,
        step_size: int = 8,
    ) -> None:
        self.budget = budget
        self.strategy = strategy
        self.arch = arch
        self.arch_config = arch_config
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.record_at = record_at
        self.groups = groups
        self.n_groups = n_groups
        self.reward = reward
        self.bandit_lr = bandit_lr
        self.step_size = step_size

    def min_queries(self, seed_x: Tensor) -> int:
        return 1

    # -- run ------------------------------------------------------------------------------------------
    def _run(self, ctx: TheftContext) -> tuple[Predictor, nn.Module | None]:
        n_pool = len(ctx.seed_x)
        if self.budget > n_pool:
            raise invalid(
                f"{type(self).__name__}.budget",
                self.budget,
                f"at most the {n_pool} images of the transfer set (each image is sent once)",
                "lower the budget or give a larger transfer set.",
            )
        fractions = self._fractions()
        reward = self._reward_name()
        budget = self.budget
        left = ctx.remaining()
        if left is not None and left < budget:
            budget, ctx.budget_exhausted = left, True
        stops = sorted({max(1, min(budget, math.ceil(f * budget))) for f in fractions} | {budget})
        config = self._substitute_config(ctx)
        ident = checkpoint.identity(
            f"ramparts-{self.name}-theft", ctx, self._identity_params(), arch_config=config, stops=stops
        )
        model = self._substitute(ctx, config)
        groups = self._group_ids(ctx) if self.strategy == "adaptive" else None
        bandit = _Bandit(groups, ctx, self.bandit_lr, reward) if groups is not None else None
        order = torch.randperm(n_pool, generator=ctx.generator, device=ctx.device)
        chosen: list[Tensor] = []
        outputs: list[Tensor] = []
        sent, start = 0, 0
        if ctx.run_dir is not None and (done := checkpoint.load_step(ctx.run_dir, _STATE, ident)):
            chosen, outputs = [done.arrays["idx"].to(ctx.device)], [done.arrays["outputs"].to(ctx.device)]
            sent, start = len(chosen[0]), done.step + 1
            if not done.queries == sent == len(outputs[0]) or (bandit is not None) != ("h" in done.arrays):
                raise checkpoint.inconsistent(ctx.run_dir, _STATE)
            load_weights(model, done.weights)
            model.to(ctx.device).eval()
            ctx.generator.set_state(done.arrays["generator"])
            if bandit is not None:
                bandit.restore(done.arrays, done.extra)
            ctx.restore_queries(done.queries)
            ctx.curve[:] = done.curve
            ctx.budget_exhausted = done.budget_exhausted
        for phase, stop in enumerate(stops):
            if phase < start:
                continue
            while sent < stop:
                if bandit is None:
                    idx = order[sent:stop]
                    y = self._ask(ctx, ctx.seed_x[idx])
                else:
                    idx = bandit.draw(min(self.step_size, stop - sent))
                    y = self._ask(ctx, ctx.seed_x[idx])
                    bandit.update(y, ctx.seed_x[idx], model)
                chosen.append(idx)
                outputs.append(y)
                sent += len(idx)
            chosen, outputs = [torch.cat(chosen)], [torch.cat(outputs)]
            self._fit(model, ctx, chosen[0], outputs[0], phase)
            ctx.record(model)
            if ctx.run_dir is not None:
                arrays = {"idx": chosen[0], "outputs": outputs[0], "generator": ctx.generator.get_state()}
                extra: dict[str, Any] = {}
                if bandit is not None:
                    arrays_b, extra = bandit.state()
                    arrays.update(arrays_b)
                checkpoint.save_step(
                    ctx.run_dir, _STATE, ident, phase, ctx, model, self.arch, config, arrays, extra
                )
        return model, model

    def _identity_params(self) -> dict[str, Any]:
        """The parameters a resumed run must share (the groups by digest)."""
        params = self.get_params()
        if params["groups"] is not None:
            params["groups"] = checkpoint.tensor_sha256(torch.as_tensor(params["groups"]))
        return params

    def _fractions(self) -> tuple[float, ...]:
        fr = self.record_at
        if (
            not isinstance(fr, tuple | list)
            or not fr
            or not all(isinstance(f, int | float) and not isinstance(f, bool) and 0 < f <= 1 for f in fr)
        ):
            raise invalid(
                f"{type(self).__name__}.record_at",
                fr,
                "a non-empty tuple of budget fractions in (0, 1]",
                "e.g. (0.25, 0.5, 1.0).",
            )
        return tuple(float(f) for f in fr)

    def _reward_name(self) -> str:
        if self.reward is None:
            return "certainty" if self.knowledge >= Knowledge.SCORE else "loss"
        if self.reward == "certainty" and self.knowledge < Knowledge.SCORE and self.strategy == "adaptive":
            raise invalid(
                f"{type(self).__name__}.reward",
                self.reward,
                "'diversity' or 'loss' with labels (certainty needs probabilities)",
                "use reward='loss', or the score attack 'knockoff'.",
            )
        return self.reward

    def _ask(self, ctx: TheftContext, x: Tensor) -> Tensor:
        """The victim's output as probability rows (one-hot rows for labels); one query per image."""
        if self.knowledge >= Knowledge.SCORE:
            return ctx.ask_log_probs(x).exp()
        return F.one_hot(ctx.ask_labels(x), ctx.num_classes).float()

    def _substitute_config(self, ctx: TheftContext) -> dict[str, Any]:
        c, h, w = ctx.seed_x.shape[1:]
        if h != w:
            raise invalid("seed_data", tuple(ctx.seed_x.shape[1:]), "square images (the zoo's input_size)")
        config: dict[str, Any] = {"in_channels": int(c), "input_size": int(h), "num_classes": ctx.num_classes}
        config.update(self.arch_config or {})
        return config

    def _substitute(self, ctx: TheftContext, config: dict[str, Any]) -> nn.Module:
        init_seed = int(torch.randint(2**31 - 1, (1,), generator=ctx.generator, device=ctx.device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = build(self.arch, **config)
        return model.to(ctx.device).eval()

    def _group_ids(self, ctx: TheftContext) -> Tensor:
        n = len(ctx.seed_x)
        if self.groups is not None:
            g = torch.as_tensor(self.groups)
            if g.shape != (n,) or g.dtype.is_floating_point or g.dtype == torch.bool:
                raise invalid(
                    f"{type(self).__name__}.groups",
                    tuple(g.shape),
                    f"one integer group per transfer image, shape ({n},)",
                )
            return torch.unique(g, return_inverse=True)[1].to(ctx.device)
        from sklearn.cluster import KMeans  # only the adaptive strategy needs it

        k = min(self.n_groups, n)
        seed = int(torch.randint(2**31 - 1, (1,), generator=ctx.generator, device=ctx.device))
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(ctx.seed_x.flatten(1).cpu().numpy())
        return torch.as_tensor(km.labels_, dtype=torch.int64, device=ctx.device)

    def _fit(self, model: nn.Module, ctx: TheftContext, idx: Tensor, probs: Tensor, phase: int) -> None:
        x = ctx.seed_x[idx]
        labels = probs.argmax(1)
        data = Dataset(x, labels, tuple(str(k) for k in range(ctx.num_classes)), "knockoff-transfer")
        config = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=float(self.lr),
            seed=phase,
            device=str(ctx.device),
        )
        # Hardened APIs may answer rows that no longer sum to 1 (rounding): an attacker renormalises.
        soft = probs / probs.sum(dim=1, keepdim=True) if self.knowledge >= Knowledge.SCORE else None
        train(model, data, config=config, progress=False, soft_targets=soft)


@register("knockoff_labels")
class KnockoffNetsLabels(KnockoffNets):
    """Knockoff Nets on the victim's labels only (knowledge LABEL); same parameters as `knockoff`."""

    knowledge: ClassVar[Knowledge] = Knowledge.LABEL


class _Bandit:
    """Gradient bandit over groups of the transfer set; draws unused images of the chosen group."""

    def __init__(self, groups: Tensor, ctx: TheftContext, lr: float, reward: str) -> None:
        self.ctx, self.lr, self.reward = ctx, lr, reward
        k = int(groups.max()) + 1
        gen = ctx.generator
        self.pools = []
        for g in range(k):
            members = (groups == g).nonzero().flatten()
            self.pools.append(members[torch.randperm(len(members), generator=gen, device=ctx.device)])
        self.used = [0] * k
        self.h = torch.zeros(k, dtype=torch.float64, device=ctx.device)
        self.baseline = 0.0
        self.steps = 0
        self.recent: deque[Tensor] = deque(maxlen=5)
        self.last = 0
        self.pi = torch.full((k,), 1.0 / k, dtype=torch.float64, device=ctx.device)

    def draw(self, m: int) -> Tensor:
        empty = torch.tensor([self.used[g] >= len(p) for g, p in enumerate(self.pools)], device=self.h.device)
        pi = torch.softmax(self.h.masked_fill(empty, -math.inf), 0)
        g = int(torch.multinomial(pi.float(), 1, generator=self.ctx.generator))
        self.last, self.pi = g, pi
        start = self.used[g]
        self.used[g] = min(start + m, len(self.pools[g]))
        return self.pools[g][start : self.used[g]]

    @torch.no_grad()
    def update(self, y: Tensor, x: Tensor, model: nn.Module) -> None:
        if self.reward == "certainty":
            top2 = y.topk(2, dim=1).values
            r = float((top2[:, 0] - top2[:, 1]).mean())
        elif self.reward == "diversity":
            ref = torch.cat(list(self.recent)).mean(0) if self.recent else torch.zeros_like(y[0])
            r = float((y - ref).clamp_min(0).sum(1).mean())
            self.recent.append(y)
        else:
            was = model.training
            model.eval()
            r = float(-(y * F.log_softmax(model(x), dim=1)).sum(1).mean())
            model.train(was)
        self.steps += 1
        self.baseline += (r - self.baseline) / self.steps
        step = self.lr * (r - self.baseline)
        self.h -= step * self.pi
        self.h[self.last] += step

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """(arrays, JSON scalars) that `restore` reads back; the pools are rebuilt from the generator."""
        recent = list(self.recent)
        arrays = {
            "h": self.h,
            "pi": self.pi,
            "recent": torch.cat(recent) if recent else self.h.new_zeros(0, 0),
            "recent_sizes": torch.tensor([len(r) for r in recent], dtype=torch.int64),
        }
        extra = {"used": self.used, "baseline": self.baseline, "steps": self.steps, "last": self.last}
        return arrays, extra

    def restore(self, arrays: dict[str, Tensor], extra: dict[str, Any]) -> None:
        device = self.h.device
        self.h, self.pi = arrays["h"].to(device), arrays["pi"].to(device)
        sizes = [int(n) for n in arrays["recent_sizes"]]
        self.recent.clear()
        self.recent.extend(arrays["recent"].to(device).split(sizes) if sizes else [])
        self.used = [int(u) for u in extra["used"]]
        self.baseline, self.steps, self.last = (
            float(extra["baseline"]),
            int(extra["steps"]),
            int(extra["last"]),
        )
