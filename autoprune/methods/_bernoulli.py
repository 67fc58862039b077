"""The variational Bernoulli gates of the ``variational`` PruningMethod.

Unit gates (one theta per channel of a channel group, with a 0/1 ``fixed`` mask: a fixed
gate is 1) and branch gates (one theta per identity residual branch). In training, every
forward pass draws one sample per gate, shared by all the layers a gate scales; at
evaluation a gate is ``[theta >= 0.5]``, except that a group shows at least its floor
(``floors``, default one channel) of strongest channels: the network ``on_train_end`` keeps.
Samples come from the bank's own generator (saved in checkpoints), so that measurement
passes on copies of the model do not disturb the run's random stream.

Estimators of d loss / d theta:

- ``straight_through``: forward an exact Bernoulli(theta) sample b, backward as if
  ``z = theta`` (``z = theta + (b - theta).detach()``);
- ``concrete``: the binary concrete relaxation
  ``z = sigmoid((logit theta + logit u) / temperature)``, ``u ~ U(0, 1)``, forward and
  backward (exactly 0 or 1 where theta is).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from autoprune.methods._gates import GateBank

UNIT, FIXED, LAYER = "unit", "fixed", "layer"


class BernoulliGates(GateBank):
    """Thetas of unit gates (with a 0/1 ``fixed`` mask each) and of branch gates."""

    BUFFER_KINDS = frozenset({FIXED})

    def __init__(self, estimator: str, temperature: float, seed: int) -> None:
        super().__init__()
        self.estimator = estimator
        self.temperature = temperature
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.generator_state: torch.Tensor | None = None
        self.active = True
        """False during the warm-up epochs: every gate is 1 and its theta idle."""
        self._samples: dict[tuple[str, str], torch.Tensor] = {}
        self.floors: dict[str, int] = {}
        """Channels a unit group keeps at least (set by the method; default 1)."""

    def probabilities(self, kind: str, key: str) -> torch.Tensor | None:
        theta = self.get(kind, key)
        fixed = self.get(FIXED, key) if kind == UNIT else None
        if theta is None or fixed is None:
            return theta
        return torch.where(fixed > 0, torch.ones_like(theta), theta)

    def gate(self, kind: str, key: str) -> torch.Tensor | None:
        p = self.probabilities(kind, key)
        if p is None or not self.active:
            return None
        if not self.training:
            return self._deterministic(kind, key, p.detach())
        z = self._samples.get((kind, key))
        if z is None:  # one sample per forward pass, shared by all layers of the structure
            z = self._samples[(kind, key)] = self._sample(p)
        return z

    def _deterministic(self, kind: str, key: str, p: torch.Tensor) -> torch.Tensor:
        """``[theta >= 0.5]``, a unit group's strongest ``floors[key]`` channels always on."""
        z = (p >= 0.5).to(p.dtype)
        if kind == UNIT:
            floor = min(p.numel(), self.floors.get(key, 1))
            if int(z.sum()) < floor:
                z[p.topk(floor).indices] = 1.0
        return z

    def new_forward(self) -> None:
        self._samples = {}

    def _sample(self, p: torch.Tensor) -> torch.Tensor:
        gen = self._generator(p.device)
        if self.estimator == "straight_through":
            b = torch.bernoulli(p.detach(), generator=gen)
            return p + (b - p).detach()
        eps = 1e-6
        u = torch.rand(p.shape, generator=gen, device=p.device, dtype=p.dtype).clamp(eps, 1 - eps)
        q = p.clamp(eps, 1 - eps)
        z = torch.sigmoid((q.log() - (-q).log1p() + u.log() - (-u).log1p()) / self.temperature)
        z = torch.where(p.detach() <= 0, torch.zeros_like(z), z)
        return torch.where(p.detach() >= 1, torch.ones_like(z), z)

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.seed)
            if self.generator_state is not None:
                with contextlib.suppress(RuntimeError):  # another device's state: start afresh
                    self.generator.set_state(self.generator_state)
                self.generator_state = None
        return self.generator

    def __getstate__(self) -> dict[str, Any]:
        """For ``deepcopy``: no samples (they hold the last step's graph) and the generator
        as its state, from which the copy makes its own on first use."""
        state = super().__getstate__()
        gen_state = self.generator.get_state() if self.generator is not None else None
        return {
            **state, "_samples": {}, "generator": None,
            "generator_state": gen_state if gen_state is not None else self.generator_state,
        }
