"""`sentmtl fit`: a sentence head from a handful of examples, in seconds, over the frozen backbone.

The features are computed once, by the inference path (`model.head_inputs`), so the head sees in
training exactly what it sees in `predict`. The head is linear (one matrix and a bias on the
sentence embedding): a logistic regression with class-balanced weights, fitted by L-BFGS to the
optimum (deterministic; no epochs, no seed). Label names are free information: by default the
weights are pulled toward the zero-shot head's, the label vectors over its temperature (a Gaussian
prior centred on zero-shot rather than on zero), so that with few examples the head stays near
what the names say and with many the examples decide. `--unlabeled` adds the user's unlabeled
texts by self-training: the head's confident predictions on them join the examples, weighted down,
and the head is fitted again. The temperature is fitted on out-of-fold logits (each example
scored by a head fitted without its fold), so the scores mean what they say. Beside the backbone's
features the head may read the examples' own word-pieces (one 0/1 feature each, listed in the
head's config): cue words such as "wish" and "would" that a paraphrase embedding does not
separate. They are tried with 16 or more examples a label and kept only when the folds' loss says
they help by a clear margin (the same rule as the first token's scale). With 8 or more examples a
label and 6 labels at most, an attention head over each token's vectors is fitted too (trained
side by side with its folds' heads, `attention_models`), and the head whose out-of-fold log-loss
is lower is the one written (`--pool auto`).

Measured against the alternatives (docs/DISCUSSION.md, from bench/fewshot.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SentmtlError
from ..heads.zero_shot import TEMPERATURE

POOL_LAYERS = [2, 4, 6]  # the middle layers whose mean and max the head reads beside the embedding
FIRST_TOKEN_LAYERS = [4]  # and the first word-piece's vector at this layer (a question's wh-word)
# the attention head's layers (FitOptions.pool): a learned mix of their token vectors, pooled by a
# learned query, then linear (the head type `train` ships as `pool: attention`)
ATTENTION_LAYERS = [2, 4]


@dataclass
class FitOptions:
    # the penalty's strength against the summed loss (against the mean: l2 / examples), so that
    # the prior counts for less the more examples there are, as a prior should
    l2: float = 0.15
    prior: bool = True  # pull the embedding's weights toward the label names' zero-shot weights (else zero)
    prior_scale: float = 1.0  # of the zero-shot weights the prior is centred on
    layers_scale: float = 0.1  # the standardized middle-layer features' scale against the embedding's
    # the first token's block: its scale is chosen per task among these by out-of-fold loss (the
    # smallest within one standard error of the best: question types want it large, sentiment small)
    first_token_scales: tuple[float, ...] = (0.03, 0.1, 0.2, 0.4)
    first_token_scale: float = 0.1  # when there are too few examples to hold any out
    first_token_evidence: float = 2.0  # standard errors by which a larger scale must win
    self_training: bool = True  # with unlabeled texts: add the confident ones and fit again
    confidence: float = 0.9  # an unlabeled text's score needed to join
    unlabeled_weight: float = 0.5  # of a pseudo-labelled example, against a real one
    # with unlabeled texts, instead of self-training: the classes' prior among them, estimated by
    # EM over the head's calibrated probabilities (Saerens et al. 2002), shifts the bias (by
    # prior_shift of its log against the examples' balanced prior). Off: it gains on the two-label
    # sets and loses on some of the others (docs/DISCUSSION.md; `sentmtl fit --unlabeled-prior`)
    unlabeled_prior: bool = False
    prior_shift: float = 0.5
    folds: int = 4  # for the temperature's out-of-fold logits
    # from this many examples a label, one fold is held out, not each in turn (held_folds): with
    # 1,000 a label of 5 labels, `fit` took 629 s with all four (5 attention heads side by side,
    # 21 linear fits on 3,750 examples)
    holdout_min: int = 100
    # SetFit's contrastive step on frozen features: a linear map of the embedding (from the identity)
    # trained so that pairs of one label have cosine 1 and of two labels 0, before the head (off:
    # measured worse than without, docs/DISCUSSION.md; `sentmtl fit --contrastive`)
    contrastive: bool = False
    # the examples' word-pieces as features of their own (1 when a text holds one), their scale
    # chosen among these by out-of-fold loss as the first token's is (none unless a scale wins by
    # first_token_evidence standard errors), tried only when every label has word_piece_min
    # examples: with 8 a label the folds picked them once in 30 fits and that fit lost
    # (docs/DISCUSSION.md); `sentmtl fit --no-word-pieces` turns them off
    word_pieces: bool = True
    word_piece_scales: tuple[float, ...] = (1.0,)
    word_piece_min: int = 16
    # the pieces offered: those held by 2 or more of the examples (a piece of one text names that
    # text, not its label), at most the 2,000 held by the most (Banking77's 4,928 examples hold
    # 5,000 and more: the folds then cost 4x the fit without them)
    word_piece_texts: int = 2
    word_piece_max: int = 2000
    # what the head reads: "mean_max" (the linear head over the embedding, pooled layers, first
    # token and word-pieces), "attention" (each token's vectors of ATTENTION_LAYERS, weighted by a
    # learned query: a cue in a few words, "wish", "would have", is not averaged away), or "auto":
    # both, and the one whose folds' log-loss is lower, when every label has attention_min
    # examples, there are at most attention_labels labels and no unlabeled texts are given; else
    # the linear head (docs/DISCUSSION.md: on five sets of 2-6 labels the folds' choice gained
    # over either head alone at 8, 16, 32 and 64 a label, and nothing at 4)
    pool: str = "auto"
    attention_min: int = 8
    attention_labels: int = 6
    attention_l2: float = 10.0  # on the summed loss, on the output weights and the query
    attention_steps: int = 300  # full-batch Adam steps
    attention_lr: float = 0.01
    # auto, where both heads are fitted: the attention head's share of an ensemble of the two (the
    # mean of their calibrated probabilities, a `sentence_ensemble` head), chosen among these by
    # the folds' log-loss; 0 is the linear head alone, 1 the attention head alone. Ties go to the
    # first listed. (docs/DISCUSSION.md: the two err on different texts; on TREC at 64 a label the
    # even mix gained 1.6 points over the better of the two. A finer grid, 0.25 and 0.75 too,
    # measured the same on the mean of five sets, and gives the folds more to choose among)
    blend_weights: tuple[float, ...] = (0.0, 1.0, 0.5)
    contrastive_pairs: int = 20  # rounds of one same-label and one other-label pair per example
    contrastive_lr: float = 1e-3


def fit_linear(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    l2: float,
    w0: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """W [classes, dim], b [classes] minimising the weighted mean cross-entropy of x W^T + b plus
    (l2 / 2) |W - w0|^2, classes balanced (each class's examples weigh 1/its count in all).

    With far fewer examples than features (the few-shot case: 616 x 3,456 for Banking77 at 8 a
    label), the optimum's W - w0 lies in the span of the examples (the loss's gradient does, and
    the penalty pulls every other direction to w0), so the problem is solved in that span's
    coordinates, x = U S V^T, W = w0 + M V^T, |W - w0| = |M|: the same optimum, at n x n cost a
    step. U and S come from the eigenvectors of the examples' Gram matrix x x^T (one matrix product
    and an n x n eigensolver: 5-6x faster than the SVD at 616 x 3,456 and 1,500 x 5,456). Past half
    as many examples as features the span's set-up costs more than it saves (4,000 x 5,456: 16 s
    for the set-up alone, where a whole fit of 5 labels in x itself at 3,750 x 5,456 took 11 s),
    and the problem is solved as it is: L-BFGS from w0
    moves only along gradients, which lie in the span, so the two reach the same optimum (their
    logits agreed within 1e-7 at 128-1,500 examples, tests/test_fit.py)."""
    n, d = x.shape
    x64 = x.astype(np.float64)
    prior = np.zeros((n_classes, d)) if w0 is None else w0.astype(np.float64)
    if 2 * n > d:
        M, b = _fit_logistic(x64, np.zeros((n, n_classes)), y, n_classes, l2, prior, weights)
        return M.astype(np.float32), b.astype(np.float32)
    coords, basis = row_span(x64)
    M, b = _fit_logistic(coords, x64 @ prior.T, y, n_classes, l2, np.zeros((n_classes, len(basis))), weights)
    return (prior + M @ basis).astype(np.float32), b.astype(np.float32)


def row_span(x64: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates [n, r] and an orthonormal basis [r, d] of the span of x's rows (x = coords @
    basis), from the eigenvectors of x x^T; directions whose squared singular value is under 1e-12
    of the largest's are left out (their coordinates are rounding: x in them is under 1e-6 of its
    scale)."""
    lam, U = np.linalg.eigh(x64 @ x64.T)
    keep = lam > max(float(lam[-1]), 1e-300) * 1e-12
    root = np.sqrt(lam[keep])
    return U[:, keep] * root, (U[:, keep] / root).T @ x64


def _fit_logistic(x64, offset, y, n_classes, l2, prior, weights):
    """The weighted, class-balanced logistic regression of fit_linear, logits offset + x W^T + b,
    by L-BFGS from W = prior."""
    n, d = x64.shape
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    sample = np.ones(n) if weights is None else weights.astype(np.float64)
    per_class = np.array([sample[y == c].sum() for c in range(n_classes)])
    balance = np.where(per_class > 0, counts.sum() / (n_classes * np.maximum(per_class, 1e-12)), 0.0)
    w = sample * balance[y]
    w = w / w.sum()
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0

    def loss_and_grad(theta):
        W = theta[: n_classes * d].reshape(n_classes, d)
        b = theta[n_classes * d :]
        z = offset + x64 @ W.T + b
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        loss = -(w * np.log(np.maximum(p[np.arange(n), y], 1e-300))).sum()
        diff = W - prior
        loss += 0.5 * l2 * float((diff * diff).sum())
        g = (p - onehot) * w[:, None]
        gW = g.T @ x64 + l2 * diff
        gb = g.sum(0)
        return loss, np.concatenate([gW.ravel(), gb])

    theta0 = np.concatenate([prior.ravel(), np.zeros(n_classes)])
    theta = lbfgs(loss_and_grad, theta0)
    return theta[: n_classes * d].reshape(n_classes, d), theta[n_classes * d :]


def lbfgs(
    fg, x0: np.ndarray, gtol: float = 1e-8, ftol: float = 2.220446049250313e-09, maxiter: int = 500, memory: int = 10
) -> np.ndarray:
    """Unconstrained L-BFGS (the two-loop recursion, a backtracking Armijo line search), stopping
    as scipy's L-BFGS-B does by default: the largest gradient entry under gtol, or a relative
    decrease of the loss under ftol. scipy's costs about 40 ms an iteration at Banking77's 38,000
    parameters (its bound handling), more than the loss itself; this costs a few vector products."""
    x = np.array(x0, dtype=np.float64)
    f, g = fg(x)
    S: list[np.ndarray] = []
    Y: list[np.ndarray] = []
    for _ in range(maxiter):
        if np.abs(g).max() <= gtol:
            break
        q = g.copy()
        alphas = []
        for s, y in zip(reversed(S), reversed(Y)):
            rho = 1.0 / float(y @ s)
            a = rho * float(s @ q)
            q -= a * y
            alphas.append((rho, a))
        if S:
            q *= float(S[-1] @ Y[-1]) / float(Y[-1] @ Y[-1])
        else:
            q /= max(float(np.linalg.norm(g)), 1e-12)
        for (s, y), (rho, a) in zip(zip(S, Y), reversed(alphas)):
            q += s * (a - rho * float(y @ q))
        d = -q
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction (rounding): fall back to the gradient
            d, slope = -g, -float(g @ g)
        step = 1.0
        while True:
            x_new = x + step * d
            f_new, g_new = fg(x_new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        s, y = x_new - x, g_new - g
        if float(s @ y) > 1e-12:
            S.append(s)
            Y.append(y)
            if len(S) > memory:
                S.pop(0)
                Y.pop(0)
        done = (f - f_new) <= ftol * max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        if done:
            break
    return x


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


@dataclass
class FittedHead:
    weight: np.ndarray  # [classes, dim]
    bias: np.ndarray  # [classes]
    temperature: float
    pseudo_labelled: int  # unlabeled texts that joined the examples
    first_token_scale: float = 0.0  # the first token block's scale chosen (0: no such block)
    word_piece_scale: float = 0.0  # the word-pieces' scale chosen (0: not read; weight has no columns for them)
    unlabeled_prior: np.ndarray | None = None  # the classes' prior among the unlabeled texts, when estimated
    # each example's out-of-fold log-loss at the temperature (None: too few examples to hold any out)
    oof_loss: np.ndarray | None = None
    oof_logits: np.ndarray | None = None  # the out-of-fold logits that loss is of (before the temperature)


def fit_head(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    opts: FitOptions,
    w0: np.ndarray | None = None,
    unlabeled: np.ndarray | None = None,
    oof: np.ndarray | None = None,
) -> FittedHead:
    """The linear head for features x [N, dim] and labels y [N] (every class present), with its
    temperature; w0: the prior's weights (the label names' zero-shot head), unless opts.prior is off.
    oof: the out-of-fold logits of these x, when the caller has them already."""
    counts = np.bincount(y, minlength=n_classes)
    if (counts == 0).any():
        raise SentmtlError("every label needs at least one example")
    prior = w0 if opts.prior else None
    W, b = fit_linear(x, y, n_classes, opts.l2 / len(y), prior)
    added = 0
    if unlabeled is not None and len(unlabeled) and opts.self_training:
        probs = softmax(unlabeled @ W.T + b)
        keep = probs.max(1) >= opts.confidence
        if keep.any():
            added = int(keep.sum())
            xs = np.concatenate([x, unlabeled[keep]])
            ys = np.concatenate([y, probs[keep].argmax(1)])
            ws = np.concatenate([np.ones(len(y)), np.full(added, opts.unlabeled_weight)])
            W, b = fit_linear(xs, ys, n_classes, opts.l2 / len(y), prior, ws)
    if oof is None:
        oof = out_of_fold_logits(x, y, n_classes, opts, prior)
    if oof is None:
        return FittedHead(W, b, 1.0, added)
    temperature, loss = best_temperature(oof, y)
    return FittedHead(W, b, temperature, added, oof_loss=loss, oof_logits=oof)


def out_of_fold_logits(x: np.ndarray, y: np.ndarray, n_classes: int, opts: FitOptions, prior) -> np.ndarray | None:
    """Each example's logits by a head fitted without its fold (folds dealt by class, so that each
    fold's head sees every class it can); None when there are too few examples to hold any out.
    With holdout_min or more examples a label, the first fold's only (the others' rows NaN)."""
    counts = np.bincount(y, minlength=n_classes)
    folds = min(opts.folds, int(counts.min()))
    if folds < 2:
        return None
    fold = class_folds(y, n_classes, folds)
    logits = np.full((len(y), n_classes), np.nan)
    for f in range(held_folds(folds, counts, opts)):
        train = fold != f
        W, b = fit_linear(x[train], y[train], n_classes, opts.l2 / int(train.sum()), prior)
        logits[~train] = x[~train] @ W.T + b
    return logits


def held_folds(folds: int, counts: np.ndarray, opts: FitOptions) -> int:
    """How many of the folds are held out in turn: all of them, or with holdout_min or more
    examples a label, one (a quarter of the examples then sets the temperature and the choices as
    surely, at a fraction of the fits)."""
    return 1 if folds >= 2 and int(counts.min()) >= opts.holdout_min else folds


def class_folds(y: np.ndarray, n_classes: int, folds: int) -> np.ndarray:
    """Each example's fold, dealt class by class, so that each fold's head sees every class."""
    fold = np.zeros(len(y), dtype=np.int64)
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        fold[idx] = np.arange(len(idx)) % folds
    return fold


def best_temperature(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The temperature with the least log-loss on these (out-of-fold) logits, and each example's
    loss at it (NaN for a row of NaN logits: an example no fold held out)."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    rows = np.flatnonzero(np.isfinite(logits).all(1))  # the rows held out (all, or one fold's)
    losses = [-np.log(np.maximum(softmax(logits[rows] / t)[np.arange(len(rows)), y[rows]], 1e-300)) for t in grid]
    best = int(np.argmin([v.mean() for v in losses]))
    loss = np.full(len(y), np.nan)
    loss[rows] = losses[best]
    return float(grid[best]), loss


# ---- the attention head: tokens' vectors, a learned query --------------------------------------------
def use_attention(y: np.ndarray, n_classes: int, opts: FitOptions, unlabeled: bool) -> bool:
    """Whether to fit the attention head: with --pool attention, always (and alone); with auto,
    where it may win (then beside the linear head, the folds choosing)."""
    if opts.pool not in ("auto", "attention", "mean_max"):
        raise SentmtlError(f"--pool {opts.pool!r}: use auto, attention or mean_max")
    if opts.pool == "attention":
        if unlabeled or opts.contrastive:
            raise SentmtlError("--unlabeled and --contrastive work on the linear head: give --pool mean_max or auto")
        return True
    enough = int(np.bincount(y, minlength=n_classes).min()) >= opts.attention_min
    few = n_classes <= opts.attention_labels
    return opts.pool == "auto" and enough and few and not unlabeled and not opts.contrastive


def attention_models(
    rows: np.ndarray, counts: list[int], y: np.ndarray, n_classes: int, layers: int, keep: np.ndarray, opts: FitOptions
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Attention heads (the parameters TorchMLP names for `pool: attention` with no hidden layer:
    mix [L], attention [D], out.weight [C, D], out.bias [C]) trained from zero weights, side by
    side: head m on the examples where keep[m] is True. Token rows [sum(counts), L*D]. Returns
    each head's parameters (numpy) and every example's logits under each head [n, M, C].

    The same function as TorchMLP's forward (mix the layers, pool by the query's softmax, then
    linear), in another order: every token's vector is projected on [out.weight; attention] once
    per layer and the layers mixed after, so a step is two thin matrix products for all the heads
    at once (the broadcast multiplies over 768 floats a token took 8 ms a step and a head before).
    Adam is elementwise and each head's loss reads its own parameters only, so training them side
    by side is training each alone."""
    import torch

    from sentmtl_cli.training.adam import Adam

    n, M, C = len(counts), keep.shape[0], n_classes
    D = rows.shape[1] // layers
    x = [torch.from_numpy(np.ascontiguousarray(rows[:, i * D : (i + 1) * D], dtype=np.float32)) for i in range(layers)]
    cnt = np.asarray(counts, dtype=np.int64)
    t_max = max(int(cnt.max()), 1)
    slot = torch.from_numpy(
        np.repeat(np.arange(n) * t_max, cnt) + np.arange(len(rows)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    )
    real = torch.zeros(n * t_max, dtype=torch.bool).index_fill(0, slot, True).view(n, t_max)
    mix = torch.zeros(M, layers, requires_grad=True)
    query = torch.zeros(M, D, requires_grad=True)
    weight = torch.zeros(M, C, D, requires_grad=True)
    bias = torch.zeros(M, C, requires_grad=True)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64)).repeat_interleave(M)
    mask = torch.from_numpy(np.ascontiguousarray(keep.T, dtype=np.float32))  # [n, M]

    def logits() -> torch.Tensor:
        wq = torch.cat([weight, query[:, None, :]], 1).reshape(M * (C + 1), D)
        a = torch.softmax(mix, 1)  # [M, L]
        proj = sum((xi @ wq.T).view(-1, M, C + 1) * a[None, :, i, None] for i, xi in enumerate(x))
        assert isinstance(proj, torch.Tensor)
        padded = proj.new_zeros((n * t_max, M, C + 1)).index_copy(0, slot, proj).view(n, t_max, M, C + 1)
        s = padded[..., C].masked_fill(~real[:, :, None], float("-inf"))
        w = torch.softmax(s, 1).nan_to_num(0.0)  # [n, t_max, M]; a text of no token: weights 0
        return (w[..., None] * padded[..., :C]).sum(1) + bias[None]  # [n, M, C]

    opt = Adam([mix, query, weight, bias], lr=opts.attention_lr)
    for _ in range(opts.attention_steps):
        opt.zero_grad()
        ce = torch.nn.functional.cross_entropy(logits().reshape(n * M, C), yt, reduction="none").view(n, M)
        loss = (ce * mask).sum() + opts.attention_l2 * ((weight * weight).sum() + (query * query).sum())
        loss.backward()
        opt.step()
    with torch.no_grad():
        z = logits().numpy().astype(np.float64)
    heads = [
        {
            name: p[m].detach().numpy().astype(np.float32).copy()
            for name, p in (("mix", mix), ("attention", query), ("out.weight", weight), ("out.bias", bias))
        }
        for m in range(M)
    ]
    if layers == 1:  # TorchMLP has no mix for one layer (its softmax is 1)
        for h in heads:
            del h["mix"]
    return heads, z


def attention_logits(head, module, rows: np.ndarray, counts: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        return head.module_forward(module, x, counts).numpy().astype(np.float64)


def fit_attention(head, rows: np.ndarray, counts: list[int], y: np.ndarray, n_classes: int, opts: FitOptions):
    """The attention head's parameters (numpy, by the head's names), its temperature, and each
    example's log-loss at it, from the out-of-fold logits of opts.folds heads each fitted without
    its fold (dealt by class; the loss None when there are too few examples to hold any out). The
    head and the folds' heads are trained side by side (attention_models). With holdout_min or
    more examples a label, one fold's head only (held_folds; the others' losses NaN): 2 heads'
    steps instead of 5."""
    return fit_attention_oof(head, rows, counts, y, n_classes, opts)[:3]


def fit_attention_oof(head, rows: np.ndarray, counts: list[int], y: np.ndarray, n_classes: int, opts: FitOptions):
    """fit_attention's parameters, temperature and losses, and the out-of-fold logits [n, C]
    they are of (None with the loss; NaN rows where no fold held the example out)."""
    folds = min(opts.folds, int(np.bincount(y, minlength=n_classes).min()))
    fold = class_folds(y, n_classes, folds) if folds >= 2 else np.zeros(len(y), dtype=np.int64)
    held = held_folds(folds, np.bincount(y, minlength=n_classes), opts) if folds >= 2 else 0
    keep = np.ones((1 + held, len(y)), dtype=bool)
    for f in range(held):
        keep[1 + f] = fold != f
    heads, z = attention_models(rows, counts, y, n_classes, head.mixed_layers(), keep, opts)
    if not held:
        return heads[0], 1.0, None, None
    oof = np.full((len(y), n_classes), np.nan)
    out = np.flatnonzero(fold < held)  # the examples some fold's head did not see
    oof[out] = z[out, 1 + fold[out]]
    temperature, loss = best_temperature(oof, y)
    return heads[0], temperature, loss, oof


def choose_blend(
    linear: np.ndarray, linear_t: float, attention: np.ndarray, attention_t: float, y: np.ndarray, opts: FitOptions
) -> tuple[float, float, dict[str, float]]:
    """The attention head's share w of the ensemble (among opts.blend_weights) whose out-of-fold
    log-loss is least, over the examples both heads' folds held out: the mixture of the two heads'
    calibrated out-of-fold probabilities, as it is (a temperature fitted to each mixture too would
    let a mixture with a useless head win as a finer calibration: the choice is made without it).
    Returns w, the temperature then fitted to the chosen mixture's log (1.0 for a head alone: it
    has its own), and the mean losses: the linear head alone ("mean_max"), the attention head
    alone ("attention"), and the best mixture of the two ("blend", with its "blend_weight")."""
    both = np.isfinite(linear).all(1) & np.isfinite(attention).all(1)
    p_lin, p_att, yb = softmax(linear[both] / linear_t), softmax(attention[both] / attention_t), y[both]

    def mixed(w: float) -> np.ndarray:
        return w * p_att + (1 - w) * p_lin

    rows = np.arange(len(yb))
    found = [(w, float(-np.log(np.maximum(mixed(w)[rows, yb], 1e-300)).mean())) for w in opts.blend_weights]
    w = min(found, key=lambda f: f[1])[0]  # the first of equals
    losses = dict(found)
    out = {"mean_max": losses.get(0.0, float("nan")), "attention": losses.get(1.0, float("nan"))}
    inner = [f for f in found if f[0] not in (0.0, 1.0)]
    if inner:
        best = min(inner, key=lambda f: f[1])
        out |= {"blend": best[1], "blend_weight": best[0]}
    temperature = 1.0
    if w not in (0.0, 1.0):
        temperature = best_temperature(np.log(np.maximum(mixed(w), 1e-30)), yb)[0]
    return w, temperature, out


def compare_losses(linear: np.ndarray, attention: np.ndarray) -> dict[str, float]:
    """The two heads' mean out-of-fold log-loss, over the examples both hold out (all of them,
    unless the attention head held out one fold only)."""
    both = np.isfinite(linear) & np.isfinite(attention)
    return {"mean_max": float(linear[both].mean()), "attention": float(attention[both].mean())}


# ---- the command's work: read, check, fit, write a model folder -----------------------------------
@dataclass
class FitJob:
    task: str
    data: Path
    output: Path
    config: Path | None = None
    labels: list[str] | None = None  # the label set and its order (default: as first seen in the data)
    label_prior: bool = True
    unlabeled: Path | None = None
    force: bool = False
    text_column: str | int | None = None  # None: "text"/"label" when the file names them (JSONL, a header), else 0/1
    label_column: str | int | None = None
    format: str = "auto"
    l2: float = FitOptions.l2
    contrastive: bool = False
    word_pieces: bool = True
    unlabeled_prior: bool = False
    pool: str = "auto"


def read_examples(job: FitJob) -> tuple[list[str], list[str]]:
    """The rows' texts and label names, through the readers `train` uses; one line for what is wrong."""
    from ..config.data import DataConfig
    from ..data.readers import parse_rows, read_rows

    formats = ("auto", "tsv", "csv", "jsonl")
    if job.format not in formats:
        raise SentmtlError(f"--format must be one of {', '.join(formats)}, not {job.format!r}")
    if not Path(job.data).is_file():
        data = Path(job.data)
        what = (
            "a folder, not a file" if data.is_dir()
            else "not a plain file (a pipe or a device; fit reads it twice): save it to a file first"
            if data.exists() else "no such file"
        )  # fmt: skip
        raise SentmtlError(f"--data {job.data}: {what}")
    text_column, label_column = job.text_column, job.label_column
    if text_column is None or label_column is None:
        named = _names_columns(Path(job.data), job.format)
        text_column = text_column if text_column is not None else ("text" if named else 0)
        label_column = label_column if label_column is not None else ("label" if named else 1)
    try:
        cfg = DataConfig(
            path=job.data,
            format=job.format,  # type: ignore[arg-type]
            text_column=text_column,
            label_column=label_column,
            max_bad_fraction=0.0,
        )
    except ValueError as e:  # pydantic's ValidationError: a column given as neither a name nor an index
        raise SentmtlError(f"--data {job.data}: {str(e).splitlines()[0]}") from None
    texts, names = parse_rows(read_rows(cfg, job.task), cfg, job.task, lambda lab: str(lab).strip())
    if not texts:
        raise SentmtlError(f"--data {job.data}: no examples in it")
    return texts, names


def _names_columns(path: Path, fmt: str) -> bool:
    """Whether the file names its columns text and label: JSONL (keys), or a TSV/CSV header."""
    from ..data.readers import infer_format

    kind = infer_format(path) if fmt == "auto" else fmt
    if kind == "jsonl":
        return True
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            first = f.readline()
    except OSError:
        return False
    fields = [x.strip().strip('"').lower() for x in first.rstrip("\r\n").split("," if kind == "csv" else "\t")]
    return "text" in fields and "label" in fields


def label_set(job: FitJob, names: list[str]) -> list[str]:
    seen = list(dict.fromkeys(names))
    if job.labels is None:
        labels = seen
    else:
        labels = list(dict.fromkeys(x.strip() for x in job.labels if x.strip()))
        outside = [x for x in seen if x not in labels]
        if outside:
            raise SentmtlError(
                f"--data has label(s) {', '.join(map(repr, outside[:5]))} that --labels does not list "
                f"({', '.join(labels)})"
            )
        missing = [x for x in labels if x not in seen]
        if missing:
            raise SentmtlError(f"label(s) {', '.join(map(repr, missing))} have no examples in --data {job.data}")
    if len(labels) < 2:
        raise SentmtlError(
            f"--data {job.data}: one label only ({labels[0]!r}); a head needs two or more to choose between"
        )
    return labels


def check_output(output: Path, force: bool) -> None:
    from .marker import is_model_folder

    if output.exists() or output.is_symlink():
        if not output.is_dir():
            raise SentmtlError(f"output {output} exists and is not a folder")
        if any(output.iterdir()):
            if not force:
                raise SentmtlError(f"output folder {output} already holds files; pass --force to replace it")
            if not is_model_folder(output):
                raise SentmtlError(
                    f"output folder {output} does not hold a sentmtl model; --force replaces only a model folder"
                )


def standardizer(
    x: np.ndarray, dim: int, layers_scale: float, lead: int = 0, lead_scale: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) per column: the embedding's first `dim` columns as they are (unit vectors,
    which the label prior is in the space of), the pooled layers' centred and scaled to
    `layers_scale` of a unit standard deviation, by the examples' own statistics; the last `lead`
    columns (the first token's block) the same, to `lead_scale`."""
    shift = np.zeros(x.shape[1], dtype=np.float64)
    scale = np.ones(x.shape[1], dtype=np.float64)
    rest = x[:, dim:].astype(np.float64)
    shift[dim:] = rest.mean(0)
    scale[dim:] = layers_scale / (rest.std(0) + 1e-3)
    if lead:
        scale[-lead:] = lead_scale / (rest[:, -lead:].std(0) + 1e-3)
    return shift, scale


def fit_features(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    dim: int,
    opts: FitOptions,
    label_vectors: np.ndarray | None = None,
    unlabeled: np.ndarray | None = None,
    lead: int = 0,
    pieces: int = 0,
) -> FittedHead:
    """The head on raw features x = [sentence embedding (dim), pooled layers, the first token's
    block (`lead` columns), word-pieces (the last `pieces` columns, 0/1)]: standardized, the
    embedding's weights pulled toward the label vectors' zero-shot weights, fitted, and the
    standardization folded back into the weights (so inference reads the raw features). The first
    token's scale, then the word-pieces', are chosen by out-of-fold loss; with the word-pieces'
    scale 0 the weight has no columns for them."""
    xp = up = None
    if pieces:
        x, xp = x[:, :-pieces], x[:, -pieces:].astype(np.float64)
        if unlabeled is not None:
            unlabeled, up = unlabeled[:, :-pieces], unlabeled[:, -pieces:].astype(np.float64)
    projection = None
    if opts.contrastive:  # the embedding's columns mapped, and the label vectors with them
        projection = contrastive_projection(x[:, :dim], y, opts)
        x = np.concatenate([x[:, :dim] @ projection.T, x[:, dim:]], 1)
        if unlabeled is not None:
            unlabeled = np.concatenate([unlabeled[:, :dim] @ projection.T, unlabeled[:, dim:]], 1)
        if label_vectors is not None:
            label_vectors = label_vectors @ projection.T
            label_vectors = label_vectors / np.linalg.norm(label_vectors, axis=1, keepdims=True)
    w0 = None
    if label_vectors is not None and opts.prior:  # the middle layers' weights are centred on zero
        w0 = np.zeros((n_classes, x.shape[1]), dtype=np.float64)
        w0[:, :dim] = label_vectors / TEMPERATURE * opts.prior_scale
    prior = w0 if opts.prior else None
    lead_scale, oof = opts.first_token_scale, None
    if lead:
        lead_scale, oof = choose_lead_scale(x, y, n_classes, dim, opts, prior, lead)
    shift, scale = standardizer(x, dim, opts.layers_scale, lead, lead_scale)
    xs = (x - shift) * scale
    xu = None if unlabeled is None else (unlabeled - shift) * scale
    piece_scale = 0.0
    if xp is not None and opts.word_pieces and np.bincount(y, minlength=n_classes).min() >= opts.word_piece_min:
        piece_scale, found = choose_piece_scale(xs, xp, y, n_classes, opts, prior, oof)
        if piece_scale:
            oof = found
            xs = np.concatenate([xs, xp * piece_scale], 1)
            xu = None if xu is None or up is None else np.concatenate([xu, up * piece_scale], 1)
            shift = np.concatenate([shift, np.zeros(xp.shape[1])])
            scale = np.concatenate([scale, np.full(xp.shape[1], piece_scale)])
            w0 = with_pieces(w0, xp.shape[1])
    f = fit_head(xs, y, n_classes, opts, w0, None if opts.unlabeled_prior else xu, oof)
    weight = f.weight.astype(np.float64) * scale[None, :]
    bias = f.bias.astype(np.float64) - weight @ shift
    found = None
    if opts.unlabeled_prior and xu is not None and len(xu):
        found = em_prior(softmax((xu @ f.weight.T + f.bias).astype(np.float64) / f.temperature))
        bias = bias + opts.prior_shift * np.log(np.maximum(found, 1e-6) * n_classes)
    if projection is not None:  # folded in: the head reads the embedding as it is
        weight[:, :dim] = weight[:, :dim] @ projection.astype(np.float64)
    return FittedHead(
        weight.astype(np.float32),
        bias.astype(np.float32),
        f.temperature,
        f.pseudo_labelled,
        lead_scale,
        piece_scale,
        found,
        f.oof_loss,
        f.oof_logits,
    )


def em_prior(probs: np.ndarray, iterations: int = 200, tol: float = 1e-6) -> np.ndarray:
    """The classes' prior among texts whose probabilities under a balanced prior are `probs`
    [N, C]: the fixed point of re-weighting them by the prior and averaging (Saerens, Latinne and
    Decaestecker, 2002)."""
    n_classes = probs.shape[1]
    prior = np.full(n_classes, 1.0 / n_classes)
    for _ in range(iterations):
        q = probs * (prior * n_classes)
        new = (q / q.sum(1, keepdims=True)).mean(0)
        done = np.abs(new - prior).max() < tol
        prior = new
        if done:
            break
    return prior


def piece_vocabulary(held: list[set[int]], opts: FitOptions) -> list[int]:
    """The word-piece ids a fitted head is offered: held by opts.word_piece_texts or more of the
    examples (`held`: each example's set of piece ids), the opts.word_piece_max held by the most
    (ties by id), in id order."""
    from collections import Counter

    texts = Counter(i for ids in held for i in ids)
    common = sorted((i for i, n in texts.items() if n >= opts.word_piece_texts), key=lambda i: (-texts[i], i))
    return sorted(common[: opts.word_piece_max])


def with_pieces(w0: np.ndarray | None, n: int) -> np.ndarray | None:
    """The prior's weights with n more columns (word-pieces), centred on zero."""
    return None if w0 is None else np.concatenate([w0, np.zeros((w0.shape[0], n))], 1)


def choose_piece_scale(xs, xp, y, n_classes: int, opts: FitOptions, prior, oof):
    """The word-pieces' scale (0: not read) and its out-of-fold logits, by the rule the first
    token's scale is chosen by, against the fit without them (its out-of-fold logits `oof`)."""
    if oof is None:
        return 0.0, None
    base = best_temperature(oof, y)[1]
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for s in sorted(opts.word_piece_scales):
        logits = out_of_fold_logits(
            np.concatenate([xs, xp * s], 1), y, n_classes, opts, with_pieces(prior, xp.shape[1])
        )
        if logits is None:
            return 0.0, None
        loss = best_temperature(logits, y)[1]
        if best is None or np.nanmean(loss) < np.nanmean(best[2]):
            best = (s, logits, loss)
    assert best is not None
    gain = base - best[2]
    if clear_gain(gain, opts):
        return best[0], best[1]
    return 0.0, None


def contrastive_projection(emb: np.ndarray, y: np.ndarray, opts: FitOptions | None = None) -> np.ndarray:
    """SetFit's contrastive step with the backbone frozen: a [dim, dim] map P, from the identity,
    trained (Adam, batches of 16, one pass) so that cos(P a, P b) is 1 for pairs of one label and
    0 for pairs of two, the pairs drawn as SetFit draws them (each round, one of each per example).
    Seeded: the same examples give the same map."""
    import torch

    from sentmtl_cli.training.adam import Adam

    opts = opts or FitOptions()
    rng = np.random.default_rng(0)
    n, d = emb.shape
    first, second, target = [], [], []
    for _ in range(opts.contrastive_pairs):
        for i in range(n):
            same = np.flatnonzero((y == y[i]) & (np.arange(n) != i))
            other = np.flatnonzero(y != y[i])
            picks = ([(int(rng.choice(same)), 1.0)] if len(same) else []) + [(int(rng.choice(other)), 0.0)]
            for j, same_label in picks:
                first.append(i)
                second.append(j)
                target.append(same_label)
    a_idx, b_idx = np.array(first), np.array(second)
    t = torch.tensor(target, dtype=torch.float32)
    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    gen = torch.Generator().manual_seed(0)
    proj = torch.nn.Linear(d, d, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(d))
    optim = Adam(proj.parameters(), lr=opts.contrastive_lr)
    order = torch.randperm(len(a_idx), generator=gen).numpy()
    for start in range(0, len(order), 16):
        idx = order[start : start + 16]
        za = torch.nn.functional.normalize(proj(x[a_idx[idx]]), dim=1)
        zb = torch.nn.functional.normalize(proj(x[b_idx[idx]]), dim=1)
        loss = ((za * zb).sum(1) - t[idx]).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    return proj.weight.detach().numpy().astype(np.float64)


def clear_gain(gain: np.ndarray, opts: FitOptions) -> bool:
    """Whether the examples' loss gains (NaN: not held out) have a mean above
    opts.first_token_evidence standard errors."""
    gain = gain[np.isfinite(gain)]
    return bool(gain.mean() > opts.first_token_evidence * gain.std() / np.sqrt(len(gain)))


def choose_lead_scale(x, y, n_classes: int, dim: int, opts: FitOptions, prior, lead: int):
    """The first token's scale among opts.first_token_scales, and its out-of-fold logits (for the
    temperature): the smallest, unless the one with the least out-of-fold log-loss (each at its
    best temperature) beats it by more than opts.first_token_evidence standard errors of the
    difference, taken example by example. With a handful of examples the folds' losses are noisy
    (on 16 examples they pick the wrong scale as often as the right one), so a larger scale needs
    clear evidence. The default scale, and no logits, when there are too few to hold any out."""
    found: list[tuple[float, np.ndarray, np.ndarray]] = []
    for s in sorted(opts.first_token_scales):
        shift, scale = standardizer(x, dim, opts.layers_scale, lead, s)
        logits = out_of_fold_logits((x - shift) * scale, y, n_classes, opts, prior)
        if logits is None:
            return opts.first_token_scale, None
        found.append((s, logits, best_temperature(logits, y)[1]))
    best = min(found, key=lambda f: np.nanmean(f[2]))
    gain = found[0][2] - best[2]
    if clear_gain(gain, opts):
        return best[0], best[1]
    return found[0][0], found[0][1]


class _Quiet:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def run_fit(job: FitJob, progress=None) -> dict:
    """Fit the head and write job.output (model.yaml: the base config, its heads by reference,
    plus the new one; heads/<task>.safetensors: the new head's weights only). The report.
    `progress(total)`: a context manager for the features' progress bar."""
    import time

    from ..config.model import HeadConfig, load_config
    from ..heads.zero_shot import zero_shot_config
    from ..model import MultiTaskModel

    t0 = time.perf_counter()
    base = load_config(job.config)
    if job.task in base.heads:
        raise SentmtlError(
            f"task {job.task!r} is a head of the base config already ({', '.join(base.heads)}): choose another name"
        )
    if not job.task.replace("_", "").replace("-", "").isalnum():
        raise SentmtlError(f"task name {job.task!r} must be letters, digits, '_' or '-'")
    check_output(Path(job.output), job.force)
    texts, names = read_examples(job)
    labels = label_set(job, names)
    y = np.array([labels.index(n) for n in names], dtype=np.int64)
    unlabeled: list[str] = []
    if job.unlabeled is not None:
        from ..files.read import TextSource

        unlabeled = [t for _, chunk in TextSource(None, str(job.unlabeled)).chunks(1 << 16) for t in chunk]
    model = MultiTaskModel(base)
    if job.unlabeled_prior and job.unlabeled is None:
        raise SentmtlError(
            "--unlabeled-prior estimates the classes' prior among --unlabeled texts: give --unlabeled FILE"
        )
    opts = FitOptions(
        l2=job.l2,
        prior=job.label_prior,
        contrastive=job.contrastive,
        word_pieces=job.word_pieces,
        unlabeled_prior=job.unlabeled_prior,
        pool=job.pool,
    )
    consider = use_attention(y, len(labels), opts, job.unlabeled is not None)
    if consider and opts.pool == "attention":
        return _run_attention(job, model, base, texts, y, labels, opts, progress, t0)
    # the examples' word-pieces, read as features when the folds say they help (fit_features)
    pieces: list[str] = []
    if opts.word_pieces and np.bincount(y, minlength=len(labels)).min() >= opts.word_piece_min:
        held = [
            {i for i, sp in zip(ids, special) if not sp} for ids, _, special, _ in model.tokenizer.encode_raw(texts)
        ]
        pieces = model.tokenizer.piece_names(piece_vocabulary(held, opts))

    def head_config(word_pieces: list[str]) -> HeadConfig:
        return HeadConfig(
            type="sentence_classification",
            labels=labels,
            description=f"fitted by sentmtl fit on {Path(job.data).name}",
            pool_layers=POOL_LAYERS,
            with_embedding=True,
            first_token_layers=FIRST_TOKEN_LAYERS,
            word_pieces=word_pieces,
        )

    head = model.build_head(job.task, head_config(pieces))
    # auto, where the attention head may win: both heads' inputs from one backbone pass
    rival = model.build_head(job.task, attention_config(job, labels)) if consider else None
    with progress(len(texts) + len(unlabeled)) if progress else _Quiet() as p:
        x, rows, counts = model.fit_views(texts, head, rival, progress=p)
        xu = model.head_inputs(unlabeled, head, progress=p) if unlabeled else None
    vectors = None
    if job.label_prior:
        names_head: Any = model.build_head("label_names", zero_shot_config(labels))
        vectors = names_head.label_vectors()
    lead = len(FIRST_TOKEN_LAYERS) * model.dim
    fitted = fit_features(x, y, len(labels), model.dim, opts, vectors, xu, lead, len(pieces))
    if pieces and not fitted.word_piece_scale:  # the folds preferred the head without them
        pieces = []
        head = model.build_head(job.task, head_config(pieces))
    params = {"out.weight": fitted.weight, "out.bias": fitted.bias}
    temperature = fitted.temperature
    losses: dict[str, float] = {}
    blend = 0.0
    if rival is not None and fitted.oof_logits is not None:
        rival_params, rival_temperature, _, rival_oof = fit_attention_oof(rival, rows, counts, y, len(labels), opts)
        if rival_oof is not None:  # the folds' log-loss decides: either head, or the two averaged
            blend, mixed_t, losses = choose_blend(
                fitted.oof_logits, fitted.temperature, rival_oof, rival_temperature, y, opts
            )
            if blend == 1.0:
                report = _written(job, model, base, rival, rival_params, rival_temperature, labels, y, t0)
                return report | ATTENTION_REPORT | {"out_of_fold_loss": losses}
            if blend > 0.0:
                head.temperature, rival.temperature = fitted.temperature, rival_temperature
                head = ensemble_of(job, model, labels, {"linear": head, "attention": rival}, [1 - blend, blend])
                params = {f"linear.{k}": v for k, v in params.items()}
                params |= {f"attention.{k}": v for k, v in rival_params.items()}
                temperature = mixed_t
    return _written(job, model, base, head, params, temperature, labels, y, t0) | {
        "unlabeled_used": fitted.pseudo_labelled,
        "unlabeled_prior": None
        if fitted.unlabeled_prior is None
        else {lab: float(p) for lab, p in zip(labels, fitted.unlabeled_prior)},
        "label_prior": job.label_prior,
        "first_token_scale": fitted.first_token_scale,
        "word_pieces": len(pieces),
        "pool": "blend" if blend else "mean_max",
        "member_weights": {"linear": 1 - blend, "attention": blend} if blend else None,
        "out_of_fold_loss": losses or _loss_of("mean_max", fitted.oof_loss),
    }


def ensemble_of(job: FitJob, model, labels: list[str], members: dict, weights: list[float]):
    """A sentence_ensemble head of these fitted heads (their configs without type, labels and
    description), each member at its head's temperature."""
    from ..config.model import HeadConfig

    given = {
        name: {
            k: v for k, v in h.cfg.model_dump(exclude_unset=True).items() if k not in ("type", "labels", "description")
        }
        for name, h in members.items()
    }
    cfg = HeadConfig(
        type="sentence_ensemble",
        labels=labels,
        description=f"fitted by sentmtl fit on {Path(job.data).name}",
        members=given,
        member_weights={name: float(w) for name, w in zip(members, weights)},
    )
    head = model.build_head(job.task, cfg)
    for name, h in members.items():
        head.members[name].temperature = h.temperature
        head.members[name].trained = True
    return head


def _loss_of(pool: str, loss: np.ndarray | None) -> dict[str, float]:
    return {} if loss is None else {pool: float(np.nanmean(loss))}


# what the report says of an attention head: the linear head's options do not apply to it
ATTENTION_REPORT = {
    "unlabeled_used": 0,
    "unlabeled_prior": None,
    "label_prior": False,
    "first_token_scale": 0.0,
    "word_pieces": 0,
    "pool": "attention",
    "member_weights": None,
}


def attention_config(job: FitJob, labels: list[str]):
    from ..config.model import HeadConfig

    return HeadConfig(
        type="sentence_classification",
        labels=labels,
        description=f"fitted by sentmtl fit on {Path(job.data).name}",
        pool_layers=ATTENTION_LAYERS,
        pool="attention",
        dropout=0.0,
    )


def _written(job: FitJob, model, base, head, params, temperature: float, labels, y, t0: float) -> dict:
    """The fitted head's parameters set and the model folder written; the report's common part."""
    import time

    head.params = params
    head.temperature = temperature
    head.trained = True
    write_fitted(model, base, job, head)
    counts = np.bincount(y, minlength=len(labels))
    return {
        "task": job.task,
        "output": str(job.output),
        "labels": {lab: int(c) for lab, c in zip(labels, counts)},
        "examples": int(len(y)),
        "temperature": temperature,
        "seconds": time.perf_counter() - t0,
    }


def _run_attention(job: FitJob, model, base, texts, y, labels, opts: FitOptions, progress, t0: float) -> dict:
    """run_fit's attention head asked for by --pool attention: its tokens' rows, its fit, the model folder."""
    head = model.build_head(job.task, attention_config(job, labels))
    with progress(len(texts)) if progress else _Quiet() as p:
        rows, counts = model.token_rows(texts, head, progress=p)
    params, temperature, loss = fit_attention(head, rows, counts, y, len(labels), opts)
    report = _written(job, model, base, head, params, temperature, labels, y, t0)
    return report | ATTENTION_REPORT | {"out_of_fold_loss": _loss_of("attention", loss)}


def write_fitted(model, base, job: FitJob, head) -> None:
    """The model folder, whole or not at all: written beside, then renamed into place (an old
    model folder, with --force, is moved aside first and deleted once the new one is in)."""
    import json
    import os
    import shutil

    import yaml

    from ..backbone.onnx_backbone import export_dir
    from ..files.atomic import atomic_write_text, output_folder
    from ..model import MODEL_FOLDER_MARK
    from .marker import MARKER

    out = output_folder(job.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        atomic_write_text(tmp / MARKER, json.dumps({"format": "sentmtl-fit-output/1", "data": str(job.data)}) + "\n")
        head.save(tmp / "heads" / f"{job.task}.safetensors")
        doc = base.model_dump(mode="json", exclude={"source"})
        doc["backbone"] = {k: v for k, v in doc["backbone"].items() if v is not None}
        if doc["backbone"].get("export") is None and base.source is not None:
            shipped = export_dir(base)
            if shipped.is_dir():  # the base's export, read (never written) by this model
                doc["backbone"]["export"] = str(shipped.resolve())
        doc["heads"] = {t: {k: v for k, v in h.items() if v not in (None, [], {})} for t, h in doc["heads"].items()}
        from ..config.model import HeadConfig

        new = head.cfg.model_dump(mode="json", exclude={"weights"})
        defaults = HeadConfig(type=new["type"], labels=new["labels"]).model_dump(mode="json")
        doc["heads"][job.task] = {
            **{k: v for k, v in new.items() if k in ("type", "labels") or v != defaults[k]},
            "weights": f"heads/{job.task}.safetensors",
        }
        atomic_write_text(tmp / "model.yaml", MODEL_FOLDER_MARK + "\n" + yaml.safe_dump(doc, sort_keys=False))
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
