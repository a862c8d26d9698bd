"""Tables, plots and a markdown summary from a judgment file (single, pairwise or Vicuna review; detected).

    python -m vicuna_jax.eval.report --judgment_file=judgments.jsonl --question_file=questions.jsonl \\
        [--baseline_model=gpt-3.5-turbo] [--output_dir=DIR]

Judgment rows do not carry categories, so per-category figures need --question_file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import app, flags

from vicuna_jax.cli import UserError
from vicuna_jax.eval import plots, ratings, stats
from vicuna_jax.eval.jsonl import EvalInputError
from vicuna_jax.eval.questions import load_answer_files, load_questions
from vicuna_jax.fileio import atomic_write_text

Table = tuple[str, list[str], list[list[str]]]  # title, header, rows
Rows = list[dict[str, Any]]


@dataclasses.dataclass
class Report:
    kind: str
    judge: str | None
    headline: list[str] = dataclasses.field(default_factory=list)
    tables: list[Table] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    plots: list[str] = dataclasses.field(default_factory=list)

    def to_markdown(self, source: str, relative_to: str | None = None) -> str:
        judge = f", judge {self.judge}" if self.judge else ""
        lines = [f"# Evaluation report: {self.kind} judgments{judge}", "", f"Source: `{source}`", ""]
        lines += [f"- {h}" for h in self.headline] + [""]
        for title, header, rows in self.tables:
            lines += [f"## {title}", "", markdown_table(header, rows), ""]
        lines += [f"> {n}" for n in self.notes] + ([""] if self.notes else [])
        for p in self.plots:
            rel = os.path.relpath(p, relative_to) if relative_to else p
            lines += [f"![{os.path.splitext(os.path.basename(p))[0]}]({rel})", ""]
        return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table, columns padded so it also reads well in a terminal."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), rule, *(fmt(r) for r in rows)])


def _num(x: float, digits: int = 2) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def _win_loss_row(label: list[str], t: stats.WinLoss) -> list[str]:
    return [
        *label,
        str(t.win),
        str(t.loss),
        str(t.tie),
        str(t.n),
        _pct(t.win_rate),
        _pct(t.loss_rate),
        _pct(t.adjusted_win_rate),
    ]


WIN_LOSS_HEADER = ["win", "loss", "tie", "n", "win rate", "loss rate", "adjusted win rate"]


def _category_table(title: str, values: dict[str, dict[str, float]], fmt: Callable[[float], str]) -> Table:
    cats = sorted({c for per in values.values() for c in per})
    rows = [[m, *(fmt(per.get(c, math.nan)) for c in cats)] for m, per in values.items()]
    return title, ["model", *cats], rows


@dataclasses.dataclass(frozen=True)
class RatingOptions:
    rounds: int = ratings.BOOTSTRAP_ROUNDS  # bootstrap resamples of the questions
    seed: int = 0


def build_report(
    judgments: stats.Judgments,
    *,
    categories: dict[str, str] | None = None,
    baseline: str | None = None,
    plot_dir: str | None = None,
    rating: RatingOptions = RatingOptions(),
) -> Report:
    """Computes every table (and, with plot_dir, writes the charts) for one judgment file."""
    report = Report(judgments.kind, judgments.judge)
    if judgments.mixed:
        report.notes.append(
            f"Judgments of several judges or prompt texts are mixed in these tables (--mix_judges): "
            f"{judgments.judge}."
        )
    if judgments.prompts:
        shown = ", ".join(f"{name} ({digest})" for name, digest in sorted(judgments.prompts.items()))
        report.notes.append(f"Judge prompts (sha256 prefix): {shown}.")
    if judgments.duplicates:
        report.notes.append(f"{judgments.duplicates} repeated judgments were counted once.")
    if categories is None:
        report.notes.append("Per-category figures need --question_file.")
    if judgments.kind == "pairwise":
        baseline = _pairwise(report, judgments.rows, categories, baseline, plot_dir)
        _ratings_section(report, judgments.rows, baseline, plot_dir, rating)
    else:
        build = _single if judgments.kind == "single" else _vicuna
        build(report, judgments.rows, categories, baseline, plot_dir)
    return report


def _single(
    report: Report, rows: Rows, categories: dict[str, str] | None, baseline: str | None, plot_dir: str | None
) -> None:
    means = stats.single_means(rows)
    turns = sorted({t for m in means for t in m.per_turn})
    header = ["model", "mean score", *(f"turn {t}" for t in turns), "judged", "unreadable"]
    table = [
        [m.model, _num(m.mean), *(_num(m.per_turn.get(t, math.nan)) for t in turns), str(m.n), str(m.errors)]
        for m in means
    ]
    report.tables.append(("Mean score (1-10) per model", header, table))
    report.headline += [f"{m.model}: mean score {_num(m.mean)} over {m.n} judgments" for m in means]
    by_cat = stats.single_category_means(rows, categories) if categories is not None else None
    if by_cat:
        by_cat = {m.model: by_cat[m.model] for m in means if m.model in by_cat}
        report.tables.append(_category_table("Mean score per category", by_cat, _num))
    if baseline is not None:
        if baseline not in {m.model for m in means}:
            raise EvalInputError(f"--baseline_model '{baseline}' has no judgments in this file")
        pairs = stats.single_score_pairs(rows, baseline)
        _relative_section(report, pairs, stats.score_outcomes(pairs), baseline, plot_dir)
    if plot_dir:
        if by_cat:
            _category_plots(report, by_cat, plot_dir, "mean score (1-10)", 10.0)
        else:
            report.plots.append(
                plots.bars(
                    {m.model: m.mean for m in means},
                    os.path.join(plot_dir, "mean_scores.png"),
                    title="Mean score per model",
                    ylabel="mean score (1-10)",
                    ymax=10,
                )
            )


def _relative_section(
    report: Report,
    pairs: list[stats.ScorePair],
    outcomes: list[stats.Outcome],
    baseline: str | None,
    plot_dir: str | None,
) -> None:
    totals = stats.relative_totals(pairs)
    wl = stats.win_loss(outcomes, both_sides=False, per_opponent=True)
    rows = []
    for (model, base, _), t in sorted(totals.items(), key=lambda kv: -kv[1].ratio):
        rows.append(
            [
                model,
                base,
                _num(t.total, 1),
                _num(t.baseline_total, 1),
                _pct(t.ratio),
                *_win_loss_row([], wl.get((model, base), stats.WinLoss(model, base))),
            ]
        )
        report.headline.append(
            f"{model} scores {100 * t.ratio:.0f}% of {base} (total {t.total:g} vs "
            f"{t.baseline_total:g} over {t.n} items)"
        )
    title = f"Total score relative to {baseline}" if baseline else "Total score relative to Assistant 1"
    report.tables.append(
        (title, ["model", "baseline", "total", "baseline total", "relative", *WIN_LOSS_HEADER], rows)
    )
    if plot_dir and wl:
        bars = [
            (f"{t.model} vs {t.opponent}", t.win / t.n, t.tie / t.n, t.loss / t.n) for t in wl.values() if t.n
        ]
        report.plots.append(
            plots.win_tie_loss(
                bars, os.path.join(plot_dir, "win_tie_loss.png"), title="Win / tie / loss by score"
            )
        )


def _category_plots(
    report: Report, values: dict[str, dict[str, float]], plot_dir: str, label: str, top: float
) -> None:
    report.plots.append(
        plots.grouped_bars(
            values,
            os.path.join(plot_dir, "by_category.png"),
            title=f"{label} by category",
            ylabel=label,
            ymax=top,
        )
    )
    if len({c for per in values.values() for c in per}) >= 3:
        report.plots.append(plots.radar(values, os.path.join(plot_dir, "radar.png"), title=label, rmax=top))


def _pairwise(
    report: Report, rows: Rows, categories: dict[str, str] | None, baseline: str | None, plot_dir: str | None
) -> str | None:
    """The win / loss tables; returns the baseline (given, or detected from a pairwise_baseline file)."""
    outcomes, errors = stats.pairwise_outcomes(rows)
    first, second = {r["model_1"] for r in rows}, {r["model_2"] for r in rows}
    if baseline is None and len(second) == 1 and len(first) > 1 and not second & first:
        # pairwise_baseline writes the baseline as model_2. With one model against it, the file cannot be
        # told from pairwise_all of two models: report both rows then (the baseline's mirrors the other).
        baseline = second.pop()
    if baseline is not None:
        outcomes = stats.against_baseline(outcomes, baseline)
        if not outcomes:
            raise EvalInputError(f"--baseline_model '{baseline}' takes part in no readable judgment here")
    tallies = stats.win_loss(outcomes, both_sides=baseline is None)
    ranked = sorted(tallies.values(), key=lambda t: (-t.adjusted_win_rate, t.model))
    against = f"against {baseline}" if baseline else "against all other models"
    header = ["model", *WIN_LOSS_HEADER, "inconsistent"]
    report.tables.append(
        (
            f"Win / loss / tie {against}",
            header,
            [[*_win_loss_row([t.model], t), str(t.inconsistent)] for t in ranked],
        )
    )
    report.headline += [
        f"{t.model} {against}: adjusted win rate {_pct(t.adjusted_win_rate)} ({t.win} win, "
        f"{t.loss} loss, {t.tie} tie)"
        for t in ranked
    ]
    if baseline is None:
        matrix = stats.win_loss(outcomes, both_sides=True, per_opponent=True)
        models = [t.model for t in ranked]
        cells = [
            [m, *(_pct(matrix[m, o].adjusted_win_rate) if (m, o) in matrix else "-" for o in models)]
            for m in models
        ]
        report.tables.append(
            ("Adjusted win rate of row model against column model", ["model", *models], cells)
        )
    report.notes.append(
        "Each pair is judged twice with the answers' positions swapped; a pair whose two "
        "verdicts disagree counts as a tie (column 'inconsistent')."
    )
    if errors:
        report.notes.append(f"{errors} judgments without a readable verdict were left out.")
    by_cat = None
    if categories is not None:
        cat = stats.win_loss(outcomes, both_sides=baseline is None, categories=categories)
        by_cat = {t.model: {} for t in ranked}
        for (model, c), t in cat.items():
            by_cat[model][c] = t.adjusted_win_rate
        report.tables.append(_category_table(f"Adjusted win rate per category {against}", by_cat, _pct))
    if plot_dir:
        bars = [(t.model, t.win / t.n, t.tie / t.n, t.loss / t.n) for t in ranked if t.n]
        report.plots.append(
            plots.win_tie_loss(
                bars, os.path.join(plot_dir, "win_tie_loss.png"), title=f"Win / tie / loss {against}"
            )
        )
        if by_cat:
            pct = {m: {c: 100 * v for c, v in per.items()} for m, per in by_cat.items()}
            _category_plots(report, pct, plot_dir, "adjusted win rate (%)", 100.0)
    return baseline


def _interval(lower: float, upper: float, fmt: Callable[[float], str]) -> str:
    return "-" if math.isnan(lower) else f"[{fmt(lower)}, {fmt(upper)}]"


def _ratings_section(
    report: Report, rows: Rows, baseline: str | None, plot_dir: str | None, options: RatingOptions
) -> None:
    """Bradley-Terry ratings with bootstrap intervals, the length-controlled win rate, the win-rate matrix."""
    games = ratings.games_from_rows(rows)
    if not games:
        return
    played = {g.model_a for g in games} | {g.model_b for g in games}
    anchor = baseline if baseline in played else None
    table = ratings.bradley_terry(games, anchor, rounds=options.rounds, seed=options.seed)
    rating = lambda x: f"{x:.0f}"  # noqa: E731
    header = ["model", "rating", "95% CI"]
    header += [f"win rate vs {anchor} (BT)", "95% CI"] if anchor else []
    cells = []
    for r in table.ratings:
        interval = "anchor" if r.model == anchor else _interval(r.lower, r.upper, rating)
        row = [r.model, rating(r.rating), interval]
        if anchor:
            row += [_pct(r.win_rate), "-" if r.model == anchor else _interval(r.win_lower, r.win_upper, _pct)]
        cells.append([*row, f"{r.games:g}"])
    scale = f"{anchor} = 1000" if anchor else "mean 1000"
    strong = any("g1_verdict" in r for r in rows)
    games_column = "weighted games" if strong else "games"
    report.tables.append((f"Bradley-Terry ratings (Elo scale, {scale})", [*header, games_column], cells))
    report.headline += [
        f"{r.model}: rating {rating(r.rating)}"
        + ("" if r.model == anchor else f" (95% CI {_interval(r.lower, r.upper, rating)})")
        for r in table.ratings
    ]
    report.notes.append(
        f"Ratings: Bradley-Terry over {len(games)} games (each judged order is a game, ties count half"
        + (f", a strong verdict such as A>>B counts {ratings.STRONG_WEIGHT:g} games" if strong else "")
        + f"); 95% intervals from {table.rounds} bootstrap resamples of the {table.questions} questions."
    )
    if anchor:
        _length_controlled_section(report, games, anchor, options)
    models, matrix = ratings.win_rate_matrix(games)
    order = [models.index(r.model) for r in table.ratings]
    if plot_dir and len(models) >= 2:
        report.plots.append(
            plots.win_rate_matrix(
                [models[i] for i in order],
                matrix[np.ix_(order, order)],
                os.path.join(plot_dir, "win_rate_matrix.png"),
                title="Share of games won, row model against column model",
            )
        )


def _length_controlled_section(
    report: Report, games: list[ratings.Game], anchor: str, options: RatingOptions
) -> None:
    lc = ratings.length_controlled(games, anchor, rounds=options.rounds, seed=options.seed)
    if not lc:
        report.notes.append(
            "No length-controlled win rate: the judgments do not record reply lengths (judge them with this "
            "version, or pass --answer_files)."
        )
        return
    header = ["model", "win rate", "length-controlled", "95% CI", "mean length difference", "games"]
    cells = [
        [t.model, _pct(t.win_rate), _pct(t.lc_win_rate), _interval(t.lower, t.upper, _pct),
         f"{t.mean_length_diff:+.0f} chars", str(t.games)]
        for t in sorted(lc, key=lambda t: -t.lc_win_rate)
    ]  # fmt: skip
    report.tables.append((f"Length-controlled win rate against {anchor}", header, cells))
    report.notes.append(
        "Length control: per model, a logistic regression of its result against the baseline (ties half) "
        "on tanh(length difference / its standard deviation) plus an intercept; the length-controlled win "
        "rate is the prediction at equal length."
    )


def _vicuna(
    report: Report, rows: Rows, categories: dict[str, str] | None, baseline: str | None, plot_dir: str | None
) -> None:
    if baseline is None and len({r["model_1"] for r in rows}) == 1:
        baseline = rows[0]["model_1"]
    pairs, errors = stats.vicuna_score_pairs(rows, baseline)
    if not pairs:
        raise EvalInputError("no readable review" + (f" involving '{baseline}'" if baseline else ""))
    _relative_section(report, pairs, stats.score_outcomes(pairs), baseline, plot_dir)
    if errors:
        report.notes.append(f"{errors} reviews without a readable score pair were left out.")
    if categories is not None:
        totals = stats.relative_totals(pairs, categories)
        by_cat: dict[str, dict[str, float]] = {}
        for (model, base, c), t in totals.items():
            by_cat.setdefault(f"{model} vs {base}", {})[c] = t.ratio
        report.tables.append(
            _category_table("Total score relative to the baseline, per category", by_cat, _pct)
        )
        if plot_dir:
            pct = {k: {c: 100 * v for c, v in per.items()} for k, per in by_cat.items()}
            top = max(110.0, max(v for per in pct.values() for v in per.values() if not math.isnan(v)) * 1.1)
            _category_plots(report, pct, plot_dir, "relative total score (%)", top)


# ---------------------------------------------------------------------------------------------------- CLI
FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the CLI flags, only when run as a program: eval modules share flag names."""
    flags.DEFINE_string(
        "judgment_file", None, "Judgments jsonl written by vicuna_jax.eval.judge (or FastChat)."
    )
    flags.DEFINE_string("question_file", None, "Questions jsonl, for per-category figures.")
    flags.DEFINE_string("baseline_model", None, "Express totals and win rates relative to this model.")
    flags.DEFINE_string(
        "judge_model", None, "Only this judge's rows: a model name, or 'model @ host' as the report shows it."
    )
    flags.DEFINE_bool(
        "mix_judges",
        False,
        "Allow judgments of different judges (model or endpoint) or prompt texts in one table.",
    )
    flags.DEFINE_string(
        "output_dir", None, "Where summary.md and the PNGs go (default: <judgment file>_report/)."
    )
    flags.DEFINE_bool("plots", True, "Write PNG charts.")
    flags.DEFINE_integer(
        "bootstrap", ratings.BOOTSTRAP_ROUNDS, "Bootstrap resamples of the questions for rating intervals."
    )
    flags.DEFINE_integer("seed", 0, "Seed of the bootstrap resampling.")
    flags.DEFINE_list(
        "answer_files",
        [],
        "Answer files of the judged models: reply lengths for the length-controlled win rate when the "
        "judgment rows do not record them.",
    )


def write_report(
    judgment_file: str,
    *,
    question_file: str | None = None,
    baseline: str | None = None,
    judge_model: str | None = None,
    mix_judges: bool = False,
    output_dir: str | None = None,
    make_plots: bool = True,
    answer_files: Sequence[str] = (),
    bootstrap_rounds: int = ratings.BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> Report:
    """Builds the report, writes summary.md (and the plots) to output_dir, and returns it."""
    if bootstrap_rounds < 0:
        raise EvalInputError(f"--bootstrap must be >= 0, got {bootstrap_rounds}")
    judgments = stats.load_judgments(judgment_file, judge_model, mix_judges=mix_judges)
    categories = {q.key: q.category for q in load_questions(question_file)} if question_file else None
    if answer_files and judgments.kind == "pairwise":
        _fill_answer_lengths(judgments.rows, load_answer_files(list(answer_files)))
    output_dir = output_dir or os.path.splitext(judgment_file)[0] + "_report"
    os.makedirs(output_dir, exist_ok=True)
    report = build_report(
        judgments,
        categories=categories,
        baseline=baseline,
        plot_dir=output_dir if make_plots else None,
        rating=RatingOptions(bootstrap_rounds, seed),
    )
    atomic_write_text(os.path.join(output_dir, "summary.md"),
                      report.to_markdown(judgment_file, relative_to=output_dir))
    return report


def _fill_answer_lengths(rows: Rows, answers: dict[str, dict[str, tuple[str, ...]]]) -> None:
    """Reply lengths for rows that do not record them (FastChat's, or older ones), from the answer files."""
    for r in rows:
        if r.get("answer_lengths"):
            continue
        qid, turn = str(r["question_id"]), int(r.get("turn", 1))
        replies = [answers.get(m, {}).get(qid, ()) for m in (r["model_1"], r["model_2"])]
        if all(len(t) >= turn for t in replies):
            r["answer_lengths"] = [len(t[turn - 1]) for t in replies]


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.judgment_file:
        raise UserError("--judgment_file is required")
    report = write_report(
        FLAGS.judgment_file,
        question_file=FLAGS.question_file,
        baseline=FLAGS.baseline_model,
        judge_model=FLAGS.judge_model,
        mix_judges=FLAGS.mix_judges,
        output_dir=FLAGS.output_dir,
        make_plots=FLAGS.plots,
        answer_files=FLAGS.answer_files,
        bootstrap_rounds=FLAGS.bootstrap,
        seed=FLAGS.seed,
    )
    out = FLAGS.output_dir or os.path.splitext(FLAGS.judgment_file)[0] + "_report"
    print(report.to_markdown(FLAGS.judgment_file, relative_to=out))
    print(f"\nwrote {os.path.join(out, 'summary.md')}" + "".join(f"\nwrote {p}" for p in report.plots))


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, define_flags)
