"""Contrastive and self-distillation losses: CLIP InfoNCE, SoftCLIP, BiMixCo (MindEye) and DINO."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP: row i of ``image`` and of ``text`` are a true pair, every other row a negative.

    ``image`` and ``text`` are (B, D) and L2-normalised; ``logit_scale`` is the multiplier 1/temperature (CLIP
    learns its logarithm). Returns the mean of the image->text and text->image cross-entropies.
    """
    logits = logit_scale * image @ text.T
    labels = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def soft_clip_loss(pred: torch.Tensor, target: torch.Tensor, temperature: float = 0.005) -> torch.Tensor:
    """MindEye's SoftCLIP: cross-entropy of pred->target similarities against soft labels softmax(target->target).

    Both inputs are (B, D) and L2-normalised. Symmetric: the mean over the two directions.
    """
    soft = F.softmax(target @ target.T / temperature, dim=-1)
    logits = pred @ target.T / temperature
    forward = -(soft * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    backward = -(soft * F.log_softmax(logits.T, dim=-1)).sum(-1).mean()
    return (forward + backward) / 2


def mixco(
    x: torch.Tensor, rng: np.random.Generator, beta: float = 0.15, select_prob: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each input with a random partner: x_mix = b * x + (1 - b) * x[perm], b ~ Beta(beta, beta).

    Only a ``select_prob`` fraction of the rows is mixed (b = 1 for the others). Returns (x_mix, perm, b); pass
    perm and b to :func:`bimixco_loss`.
    """
    n = len(x)
    perm = rng.permutation(n)
    b = np.where(rng.random(n) <= select_prob, rng.beta(beta, beta, size=n), 1.0)
    perm_t = torch.as_tensor(perm, device=x.device)
    b_t = torch.as_tensor(b, device=x.device, dtype=x.dtype)
    shape = (n,) + (1,) * (x.dim() - 1)
    return x * b_t.view(shape) + x[perm_t] * (1 - b_t.view(shape)), perm_t, b_t


def bimixco_loss(
    pred: torch.Tensor, target: torch.Tensor, perm: torch.Tensor, b: torch.Tensor, temperature: float = 0.006
) -> torch.Tensor:
    """MindEye's BiMixCo: InfoNCE in both directions whose label of a mixed row i is b_i on target i and
    1 - b_i on target perm[i] (the mixing partner). ``pred`` comes from mixed inputs, ``target`` is unmixed.
    A row mixed with itself (perm[i] == i) gets label 1 on its own target (MindEye's code overwrites it with
    1 - b_i, although that input is unchanged)."""
    n = len(pred)
    idx = torch.arange(n, device=pred.device)
    labels = torch.zeros(n, n, device=pred.device, dtype=pred.dtype)
    labels[idx, idx] = b.to(pred.dtype)
    labels[idx, perm] += 1 - b.to(pred.dtype)
    logits = pred @ target.T / temperature
    forward = -(labels * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    backward = -(labels.T * F.log_softmax(logits.T, dim=-1)).sum(-1).mean()
    return (forward + backward) / 2


CENTERINGS = ("mean", "sinkhorn")


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """DINOv2's centring of the teacher: from ``logits`` (B, K), the matrix of probabilities closest to
    softmax(logits / temperature) whose every row sums to 1 and whose every prototype (column) gets the same total
    mass B / K over the batch, by ``iterations`` alternating normalisations (Sinkhorn-Knopp). The batch is then
    spread over all prototypes, so that a few (one per background) can no longer take every scene."""
    b, k = logits.shape
    z = logits.float() / temperature
    q = torch.exp(z - z.max())
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(0, keepdim=True) / k  # each prototype's mass 1 / K
        q = q / q.sum(1, keepdim=True) / b  # each sample's mass 1 / B
    return q * b


class DINOLoss(torch.nn.Module):
    """DINO's self-distillation loss with a centred, sharpened teacher.

    The teacher's outputs (global views only) are centred by a running mean c (c <- m c + (1 - m) batch mean) and
    sharpened with a temperature that warms up linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over
    ``warmup_steps``; the student's outputs (all views) use ``student_temp``. The loss is the mean cross-entropy
    teacher -> student over every (teacher view, student view) pair except a view with itself.
    """

    def __init__(self, out_dim: int, n_global: int = 2, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 warmup_teacher_temp: float = 0.04, warmup_steps: int = 0, center_momentum: float = 0.9,
                 centering: str = "mean") -> None:  # fmt: skip
        super().__init__()
        if n_global < 1:
            raise ValueError(f"n_global={n_global}: expected at least 1 global view")
        if centering not in CENTERINGS:
            raise ValueError(f"centering={centering!r}: expected one of {CENTERINGS}")
        self.centering = centering
        self.n_global = n_global
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_steps = warmup_steps
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temperature(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.teacher_temp
        t = step / max(self.warmup_steps, 1)
        return self.warmup_teacher_temp + t * (self.teacher_temp - self.warmup_teacher_temp)

    def teacher_probs(self, teacher_out: torch.Tensor, step: int) -> torch.Tensor:
        """The teacher's targets: centred by the running mean and sharpened, or with ``centering="sinkhorn"``
        DINOv2's :func:`sinkhorn_knopp` over each global view's batch."""
        temp = self.teacher_temperature(step)
        if self.centering == "sinkhorn":
            return torch.cat([sinkhorn_knopp(v, temp) for v in teacher_out.chunk(self.n_global)])
        return F.softmax((teacher_out.float() - self.center) / temp, dim=-1)

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, step: int) -> torch.Tensor:
        """``student_out`` (V * B, K) for V views, the first ``n_global`` being the global ones;
        ``teacher_out`` (n_global * B, K). Updates the centre after computing the loss."""
        n_views = len(student_out) // (len(teacher_out) // self.n_global)
        student = F.log_softmax(student_out.float() / self.student_temp, dim=-1).chunk(n_views)
        teacher = self.teacher_probs(teacher_out, step).detach().chunk(self.n_global)
        total, pairs = 0.0, 0
        for iq, q in enumerate(teacher):
            for iv, logp in enumerate(student):
                if iv == iq:
                    continue
                total = total + (-q * logp).sum(-1).mean()
                pairs += 1
        self.update_center(teacher_out)
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_center = teacher_out.float().mean(0, keepdim=True)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


class MaskedPatchLoss(torch.nn.Module):
    """iBOT's masked-patch self-distillation: at every hidden patch of a student's view, the cross-entropy from
    the teacher's centred, sharpened output for that patch of the unmasked view to the student's output; the mean
    over an image's hidden patches, then over images. The patch outputs have their own running centre (or, with
    ``centering="sinkhorn"``, :func:`sinkhorn_knopp` over the batch's patches)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "mean") -> None:  # fmt: skip
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering={centering!r}: expected one of {CENTERINGS}")
        self.student_temp, self.center_momentum, self.centering = student_temp, center_momentum, centering
        self.register_buffer("center", torch.zeros(1, 1, out_dim))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor,
                teacher_temp: float) -> torch.Tensor:  # fmt: skip
        """``student`` and ``teacher`` (N, P, K) patch outputs, ``masks`` (N, P) boolean, True where hidden."""
        if self.centering == "sinkhorn":  # over all the batch's patches, as DINOv2
            q = sinkhorn_knopp(teacher.reshape(-1, teacher.shape[-1]), teacher_temp).view(teacher.shape)
        else:
            q = F.softmax((teacher.float() - self.center) / teacher_temp, dim=-1).detach()
        ce = -(q * F.log_softmax(student.float() / self.student_temp, dim=-1)).sum(-1)  # (N, P)
        m = masks.to(ce.device, ce.dtype)
        loss = ((ce * m).sum(1) / m.sum(1).clamp_min(1)).mean()
        with torch.no_grad():
            batch_center = teacher.float().mean((0, 1), keepdim=True)
            self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
        return loss


def cosine_momentum(step: int, total: int, base: float = 0.996, final: float = 1.0) -> float:
    """DINO's teacher EMA momentum: cosine schedule from ``base`` at step 0 to ``final`` at ``total``."""
    return final - (final - base) * (math.cos(math.pi * min(step, total) / max(total, 1)) + 1) / 2


def warmup_cosine(step: int, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Learning rate: linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``floor``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return floor + (peak - floor) * (1 + math.cos(math.pi * min(t, 1.0))) / 2


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (nats) of probability vectors along ``dim``."""
    return -(p * p.clamp_min(1e-12).log()).sum(dim)
