"""FLAM training on precomputed retrieval features: the embedding stage, then the manipulating stage.

Embedding stage (Eq. 2): phi_a and the dictionaries learn from the labelled items only (a seeded
``label_fraction`` of the training split). Manipulating stage (Eqs. 3-5), phi and d frozen, on
every training feature, labelled or not: for x and a random attribute a, x- is an item whose
predicted value of a differs and whose embeddings on the other attributes are nearest to x's
(the paper's online sampling, Sec. 4.1, within the batch; ``online_sampling=False`` draws x- at
random among those with another value); x~ = G(x, phi_a(x-)) in a's slot. D learns real vs
fake and, on real features, to output their attribute embeddings (the first term of Eq. 4); G
learns to fool D (Eq. 3, non-saturating), to make D's matching output of x~ equal phi_a(x-) in
a's slot and phi(x) elsewhere (the second term of Eq. 4), and the cycle back with phi_a(x)
(Eq. 5). Features are normalised throughout (the runtime searches normalised vectors).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .flam import Discriminator, Embedders, Manipulator, condition_of, triplet_cosine


@dataclass
class FlamConfig:
    label_fraction: float = 1.0  # of the training split's items whose labels the embedders see
    embed_steps: int = 3000
    gan_steps: int = 4000
    batch: int = 256
    lr: float = 1e-3
    gan_lr: float = 2e-4
    margin: float = 0.2
    w_adv: float = 1.0  # 0: the paper's ablation without the adversarial loss
    w_match: float = 10.0
    w_cycle: float = 1.0  # the paper's 10 kept G at the identity on catalog features (docs/flam.md)
    w_pair: float = 0.0  # not in the paper: |x~ - x-|, the sampled x- as the target feature itself
    w_phi_match: float = 10.0  # not in the paper: Eq. 4's target read by the frozen embedders beside D's (0: off)
    online_sampling: bool = True  # False: the paper's ablation with random x-
    time_budget_s: float | None = None  # wall clock for both stages together
    seed: int = 0


@dataclass
class FlamModels:
    embedders: Embedders
    generator: Manipulator
    discriminator: Discriminator
    history: list[dict]


def labelled_rows(codes: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of the rows: the only ones whose labels training reads."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    rows = np.random.default_rng(seed).permutation(len(codes))
    return np.sort(rows[:max(1, int(round(fraction * len(codes))))])


def _embedding_loss(embedders: Embedders, x: torch.Tensor, codes: torch.Tensor, margin: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Eq. 2 for every attribute: l(d_y, e, e-) + l(e, d_y, d_y-) with random negatives."""
    e = embedders(x)
    total = x.sum() * 0.0
    for a, n in enumerate(embedders.sizes):
        keys = codes[:, a]
        known = torch.nonzero(keys >= 0).squeeze(1)
        if len(known) < 2 or n < 2:
            continue
        values, y = embedders.values(a), keys[known]
        other = (y + torch.randint(1, n, (len(y),), generator=generator)) % n  # another value
        differs = (y[:, None] != y[None, :]).float() + 1e-9
        neg = known[torch.multinomial(differs, 1, generator=generator).squeeze(1)]
        total = total + triplet_cosine(values[y], e[known, a], e[neg, a], margin)
        total = total + triplet_cosine(e[known, a], values[y], values[other], margin)
    return total


def _pick_negatives(e: torch.Tensor, predicted: torch.Tensor, attrs: torch.Tensor, online: bool,
                    generator: torch.Generator) -> torch.Tensor:
    """Per item, a batch row x- whose predicted value of its attribute differs; with ``online``, the
    one nearest on the other attributes' embeddings, else a random one. -1 where none differs."""
    n, count = e.shape[0], e.shape[1]
    own = predicted[torch.arange(n), attrs]  # (N,)
    other_value = predicted[:, attrs].T != own[:, None]  # (N, N): row i, candidate j differs on a_i
    if online:
        keep = torch.ones(n, count, dtype=torch.bool)
        keep[torch.arange(n), attrs] = False
        sims = torch.einsum("iak,jak->ija", e, e)  # (N, N, A)
        score = (sims * keep[:, None, :]).sum(2)
        score = torch.where(other_value, score, torch.full_like(score, -1e9))
        choice = score.argmax(1)
    else:
        choice = torch.multinomial(other_value.float() + 1e-12, 1, generator=generator).squeeze(1)
    return torch.where(other_value.any(1), choice, torch.full_like(choice, -1))


def train_flam(features: np.ndarray, codes: np.ndarray, sizes: list[int], config: FlamConfig,
               log: Callable[[str], None] = print) -> FlamModels:
    """Both stages on normalised training features (N, D) and their codes (N, A; -1 unknown)."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    x_all = torch.from_numpy(np.ascontiguousarray(features, np.float32))
    dim, count = x_all.shape[1], len(sizes)
    embedders = Embedders(dim, sizes)
    G, D = Manipulator(dim, count), Discriminator(dim, count)
    history: list[dict] = []
    start = time.perf_counter()
    half = None if config.time_budget_s is None else config.time_budget_s / 2

    labelled = labelled_rows(codes, config.label_fraction, config.seed)
    x_lab, codes_lab = x_all[labelled], torch.from_numpy(codes[labelled].astype(np.int64))
    opt = torch.optim.Adam(embedders.parameters(), lr=config.lr)
    log(f"FLAM embedding stage: {len(labelled)} labelled of {len(codes)} features ({config.label_fraction:.0%})")
    for step in range(config.embed_steps):
        rows = torch.randint(0, len(labelled), (min(config.batch, len(labelled)),), generator=gen)
        loss = _embedding_loss(embedders, x_lab[rows], codes_lab[rows], config.margin, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == config.embed_steps - 1:
            history.append({"stage": "embed", "step": step, "loss": loss.item()})
        if half is not None and time.perf_counter() - start > half:
            log(f"  embedding stage: time budget reached after {step + 1} steps")
            break
    for p in embedders.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        e_all = embedders(x_all)
        predicted = torch.stack([(e_all[:, a] @ embedders.values(a).T).argmax(1) for a in range(count)], dim=1)

    opt_g = torch.optim.Adam(G.parameters(), lr=config.gan_lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=config.gan_lr, betas=(0.5, 0.999))
    log(f"FLAM manipulating stage: {len(x_all)} features, adversarial weight {config.w_adv}, "
        f"{'online' if config.online_sampling else 'random'} sampling of x-")
    t_gan = time.perf_counter()
    for step in range(config.gan_steps):
        rows = torch.randint(0, len(x_all), (config.batch,), generator=gen)
        x, e, pred = x_all[rows], e_all[rows], predicted[rows]
        attrs = torch.randint(0, count, (len(rows),), generator=gen)
        neg = _pick_negatives(e, pred, attrs, config.online_sampling, gen)
        ok = neg >= 0
        x, e, attrs, e_neg, x_neg = x[ok], e[ok], attrs[ok], e[neg[ok]], x[neg[ok]]
        changed = F.one_hot(attrs, count).bool()
        wanted = torch.where(changed[..., None], e_neg, e)  # the target embeddings: a's from x-, the rest x's
        condition, mask = condition_of(e_neg, changed)
        fake = F.normalize(G(x, condition, mask), dim=1)

        real_logit, real_match = D(x)
        fake_logit, _ = D(fake.detach())
        loss_d = (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                  + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))) * config.w_adv \
            + config.w_match * (real_match - e).norm(dim=2).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()

        fake_logit, fake_match = D(fake)
        back_condition, _ = condition_of(e, changed)
        cycle = F.normalize(G(fake, back_condition, mask), dim=1)
        adv = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
        match = (fake_match - wanted).norm(dim=2).mean()
        cyc = (cycle - x).norm(dim=1).mean()
        pair = (fake - x_neg).norm(dim=1).mean()
        phi_match = (embedders(fake) - wanted).norm(dim=2).mean() if config.w_phi_match else fake.sum() * 0.0
        loss_g = config.w_adv * adv + config.w_match * match + config.w_cycle * cyc + config.w_pair * pair \
            + config.w_phi_match * phi_match
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        if step % 500 == 0 or step == config.gan_steps - 1:
            history.append({"stage": "manipulate", "step": step, "d": loss_d.item(), "adv": adv.item(),
                            "match": match.item(), "cycle": cyc.item(), "pair": pair.item()})
            log(f"  step {step}: D {loss_d.item():.3f}  G adv {adv.item():.3f}  match {match.item():.3f}  "
                f"cycle {cyc.item():.3f}  pair {pair.item():.3f}")
        if half is not None and time.perf_counter() - t_gan > half:
            log(f"  manipulating stage: time budget reached after {step + 1} steps")
            break
    G.eval()
    D.eval()
    return FlamModels(embedders.eval(), G, D, history)
