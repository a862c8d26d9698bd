"""Ratings from pairwise judgments: Bradley-Terry on the Elo scale with bootstrap intervals, and a
length-controlled win rate against a baseline. numpy only.

Games. Each judged order of a pair is one game, as in Arena-Hard (so a pair judged in both orders is two
games, and position bias shows up as a split instead of being hidden). A game scores 1 for a win, 0 for a
loss and 1/2 to each side for a tie. A strong five-level verdict (A>>B) counts as STRONG_WEIGHT games,
Arena-Hard's weighting. A game without a readable verdict is left out.

Bradley-Terry. P(i beats j) = sigmoid(theta_i - theta_j), fitted by maximum likelihood with ties as half a
win (the quasi-likelihood whose estimate matches expected scores) and a tiny ridge so a model that wins
everything still gets a finite rating. Ratings are on the Elo scale, 1000 + 400 * log10(e) * theta, anchored
so the baseline is exactly 1000 (or, without a baseline, so that the mean rating is 1000).

Intervals. Percentile bootstrap that resamples questions (all games of a question travel together, since
they share the question's difficulty), BOOTSTRAP_ROUNDS rounds by default.

Length control (AlpacaEval 2's idea, simplified). For each model's games against the baseline, a logistic
regression of the model's score on tanh(length difference / its standard deviation) plus an intercept (the
model term); the length-controlled win rate is the predicted win rate at zero length difference,
sigmoid(intercept). A judge that prefers longer replies no longer rewards a model for being longer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

STRONG_WEIGHT = 3.0
BOOTSTRAP_ROUNDS = 1000
ELO_SCALE = 400.0 / math.log(10.0)  # rating points per unit of log-odds
BASE_RATING = 1000.0
RIDGE = 1e-6  # per unit of log-odds squared; negligible next to any real number of games


@dataclasses.dataclass(frozen=True)
class Game:
    """One judged order of one pair. score is model_a's: 1 win, 0.5 tie, 0 loss."""

    question_key: str
    model_a: str
    model_b: str
    score: float
    weight: float = 1.0
    length_a: int | None = None  # characters of the judged replies, when known
    length_b: int | None = None


_SCORE = {"model_1": 1.0, "model_2": 0.0, "tie": 0.5}


def games_from_rows(rows: Iterable[dict[str, Any]], strong_weight: float = STRONG_WEIGHT) -> list[Game]:
    """Two games per pairwise row (game 1 and its swap), from model_1's side; unreadable games dropped."""
    games = []
    for r in rows:
        lengths = r.get("answer_lengths") or [None, None]
        for winner, verdict in ((r["g1_winner"], r.get("g1_verdict")), (r["g2_winner"], r.get("g2_verdict"))):
            if winner not in _SCORE:
                continue
            weight = strong_weight if verdict and ">>" in verdict else 1.0
            games.append(
                Game(str(r["question_id"]), r["model_1"], r["model_2"], _SCORE[winner], weight, *lengths)
            )
    return games


# ------------------------------------------------------------------------------------------ Bradley-Terry
def fit_bradley_terry(wins_BxKxK: np.ndarray, fixed: int = 0, ridge: float = RIDGE) -> np.ndarray:
    """theta (B, K) maximizing sum_ij W_ij log sigmoid(theta_i - theta_j) - ridge/2 |theta|^2, theta[fixed]=0.

    W_ij is the (weighted) number of games i won against j, ties counted half to each. Batched Newton's
    method: the objective is concave, so from zero it converges in a few steps (each step is clipped for
    safety when a model wins nearly everything).
    """
    wins_BxKxK = np.asarray(wins_BxKxK, dtype=np.float64)
    B, K, _ = wins_BxKxK.shape
    games_BxKxK = wins_BxKxK + np.swapaxes(wins_BxKxK, 1, 2)
    free = np.array([k != fixed for k in range(K)])
    theta_BxK = np.zeros((B, K))
    for _ in range(100):
        p_BxKxK = _sigmoid(theta_BxK[:, :, None] - theta_BxK[:, None, :])
        grad_BxK = (wins_BxKxK - games_BxKxK * p_BxKxK).sum(axis=2) - ridge * theta_BxK
        curv_BxKxK = games_BxKxK * p_BxKxK * (1.0 - p_BxKxK)
        diag_BxK = curv_BxKxK.sum(axis=2) + ridge
        hess_BxKxK = curv_BxKxK - np.eye(K) * diag_BxK[:, :, None]  # negative definite
        hess_free = hess_BxKxK[:, free][:, :, free]
        step_BxF = np.linalg.solve(hess_free, grad_BxK[:, free][:, :, None])[:, :, 0]
        step_BxF = np.clip(step_BxF, -4.0, 4.0)
        theta_BxK[:, free] -= step_BxF
        if np.max(np.abs(step_BxF), initial=0.0) < 1e-10:
            break
    return theta_BxK


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def _index(games: Sequence[Game]) -> tuple[list[str], list[str], dict[str, int], dict[str, int]]:
    models = sorted({g.model_a for g in games} | {g.model_b for g in games})
    questions = sorted({g.question_key for g in games})
    return models, questions, {m: i for i, m in enumerate(models)}, {q: i for i, q in enumerate(questions)}


def win_matrices(games: Sequence[Game]) -> tuple[list[str], list[str], np.ndarray]:
    """(models, questions, W_QxKxK): per question, the weighted wins of row model over column model."""
    models, questions, mi, qi = _index(games)
    wins_QxKxK = np.zeros((len(questions), len(models), len(models)))
    for g in games:
        q, a, b = qi[g.question_key], mi[g.model_a], mi[g.model_b]
        wins_QxKxK[q, a, b] += g.weight * g.score
        wins_QxKxK[q, b, a] += g.weight * (1.0 - g.score)
    return models, questions, wins_QxKxK


@dataclasses.dataclass
class Rating:
    model: str
    rating: float
    lower: float  # 95% bootstrap interval
    upper: float
    win_rate: float  # predicted P(beats the anchor), ties half; nan without an anchor
    win_lower: float
    win_upper: float
    games: float  # weighted games played


@dataclasses.dataclass
class RatingTable:
    ratings: list[Rating]  # best first
    anchor: str | None  # the model fixed at BASE_RATING; None: the mean is
    rounds: int
    questions: int


def bootstrap_counts(n_questions: int, rounds: int, seed: int) -> np.ndarray:
    """C_RxQ: how often each question is drawn in each bootstrap round (a multinomial resample)."""
    rng = np.random.default_rng(seed)
    draws_RxQ = rng.multinomial(n_questions, np.full(n_questions, 1.0 / n_questions), size=rounds)
    return draws_RxQ.astype(np.float64)


def bradley_terry(
    games: Sequence[Game],
    anchor: str | None = None,
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
    ridge: float = RIDGE,
) -> RatingTable:
    """Elo-scale ratings with 95% intervals from a bootstrap over questions (see the module docstring)."""
    if not games:
        raise ValueError("no games to rate")
    models, questions, wins_QxKxK = win_matrices(games)
    if anchor is not None and anchor not in models:
        raise ValueError(f"the anchor '{anchor}' played no game")
    fixed = models.index(anchor) if anchor is not None else 0
    counts_RxQ = bootstrap_counts(len(questions), rounds, seed)
    wins_BxKxK = np.concatenate(
        [wins_QxKxK.sum(axis=0, keepdims=True), np.einsum("rq,qij->rij", counts_RxQ, wins_QxKxK)]
    )
    theta_BxK = fit_bradley_terry(wins_BxKxK, fixed=fixed, ridge=ridge)
    if anchor is None:
        theta_BxK = theta_BxK - theta_BxK.mean(axis=1, keepdims=True)
    elo_BxK = BASE_RATING + ELO_SCALE * theta_BxK
    nan_K = np.full(len(models), math.nan)
    lower_K, upper_K = _interval(elo_BxK[1:], nan_K)
    win_BxK = _sigmoid(theta_BxK - theta_BxK[:, fixed : fixed + 1]) if anchor is not None else nan_K[None]
    win_lower_K, win_upper_K = _interval(win_BxK[1:], nan_K) if anchor is not None else (nan_K, nan_K)
    played_K = wins_QxKxK.sum(axis=(0, 2)) + wins_QxKxK.sum(axis=(0, 1))
    table = [
        Rating(m, elo_BxK[0, k], lower_K[k], upper_K[k], win_BxK[0, k], win_lower_K[k], win_upper_K[k],
               played_K[k])
        for k, m in enumerate(models)
    ]  # fmt: skip
    table.sort(key=lambda r: (-r.rating, r.model))
    return RatingTable(table, anchor, rounds, len(questions))


def _interval(samples_RxK: np.ndarray, empty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 2.5th and 97.5th percentiles over bootstrap rounds (nan when there are none)."""
    if len(samples_RxK) == 0:
        return empty, empty
    lower, upper = np.percentile(samples_RxK, [2.5, 97.5], axis=0)
    return lower, upper


def win_rate_matrix(games: Sequence[Game]) -> tuple[list[str], np.ndarray]:
    """(models, M_KxK): observed share of games the row model won against the column model (ties half,
    strong verdicts weighted as in the fit); nan where two models never met."""
    models, _, wins_QxKxK = win_matrices(games)
    wins_KxK = wins_QxKxK.sum(axis=0)
    total_KxK = wins_KxK + wins_KxK.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return models, np.where(total_KxK > 0, wins_KxK / total_KxK, np.nan)


# ---------------------------------------------------------------------------------------- length control
@dataclasses.dataclass
class LengthControlled:
    model: str
    baseline: str
    win_rate: float  # observed, ties half
    lc_win_rate: float  # predicted at zero length difference
    lower: float  # 95% bootstrap interval of lc_win_rate
    upper: float
    length_slope: float  # logistic coefficient of tanh(length difference / std)
    mean_length_diff: float  # characters, model minus baseline
    games: int


def fit_length_logistic(
    score_G: np.ndarray, x_G: np.ndarray, weight_BxG: np.ndarray, ridge: float = RIDGE
) -> np.ndarray:
    """beta (B, 2) maximizing sum_g w_bg [y_g log p + (1 - y_g) log(1 - p)], p = sigmoid(b0 + b1 x_g):
    a weighted logistic regression with soft labels (ties 0.5), batched over bootstrap weights."""
    design_Gx2 = np.stack([np.ones_like(x_G), x_G], axis=1)
    beta_Bx2 = np.zeros((weight_BxG.shape[0], 2))
    for _ in range(100):
        p_BxG = _sigmoid(beta_Bx2 @ design_Gx2.T)
        grad_Bx2 = (weight_BxG * (score_G - p_BxG)) @ design_Gx2 - ridge * beta_Bx2
        curv_BxG = weight_BxG * p_BxG * (1.0 - p_BxG)
        hess_Bx2x2 = -np.einsum("bg,gi,gj->bij", curv_BxG, design_Gx2, design_Gx2) - ridge * np.eye(2)
        step_Bx2 = np.clip(np.linalg.solve(hess_Bx2x2, grad_Bx2[:, :, None])[:, :, 0], -4.0, 4.0)
        beta_Bx2 -= step_Bx2
        if np.max(np.abs(step_Bx2)) < 1e-10:
            break
    return beta_Bx2


def length_controlled(
    games: Sequence[Game], baseline: str, *, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> list[LengthControlled]:
    """Per model, its win rate against the baseline with the length difference regressed out (module doc).
    Uses the games against the baseline whose reply lengths are known; strong verdicts count once here, so
    the figure stays a win rate."""
    by_model: dict[str, list[tuple[str, float, float]]] = {}
    for g in games:
        if g.length_a is None or g.length_b is None or baseline not in (g.model_a, g.model_b):
            continue
        if g.model_a == baseline:
            model, score, diff = g.model_b, 1.0 - g.score, g.length_b - g.length_a
        else:
            model, score, diff = g.model_a, g.score, g.length_a - g.length_b
        if model != baseline:
            by_model.setdefault(model, []).append((g.question_key, score, float(diff)))
    out = []
    for model, items in sorted(by_model.items()):
        questions = sorted({q for q, _, _ in items})
        qi = {q: i for i, q in enumerate(questions)}
        q_G = np.array([qi[q] for q, _, _ in items])
        score_G = np.array([s for _, s, _ in items])
        diff_G = np.array([d for _, _, d in items])
        std = diff_G.std()
        x_G = np.tanh(diff_G / std) if std > 0 else np.zeros_like(diff_G)
        counts_RxQ = bootstrap_counts(len(questions), rounds, seed)
        weight_BxG = np.concatenate([np.ones((1, len(items))), counts_RxQ[:, q_G]])
        beta_Bx2 = fit_length_logistic(score_G, x_G, weight_BxG)
        lc_B = _sigmoid(beta_Bx2[:, 0])
        lower, upper = _interval(lc_B[1:], np.array(math.nan))
        out.append(
            LengthControlled(model, baseline, float(score_G.mean()), float(lc_B[0]), float(lower),
                             float(upper), float(beta_Bx2[0, 1]), float(diff_G.mean()), len(items))
        )  # fmt: skip
    return out
