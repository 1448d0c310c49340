"""The report's layout: blocks (headings, paragraphs, tables, images) rendered to Markdown and
HTML, and the PNG plots (matplotlib, optional). Numbers come from :mod:`.analytics`
(which calls this module), :mod:`.comparison` and :mod:`.signals`."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .comparison import compare_to_oracle, cost_ratios, reference_methods, target_lines
from .matrix import COST_PHASES
from .report_plots import write_plots
from .signals import signal_aucs

METHOD_ORDER = (
    "largest",
    "smallest",
    "random",
    "cascade",
    "knn",
    "sale_default",
    "sale_no_memory",
    "sale_published",
    "sale_lean",
    "sale_lean_nojury",
    "sale_lean_verify",
    "oracle",
    "largest_direct",
    "smallest_direct",
    "cascade_direct",
    "knn_direct",
    "oracle_direct",
    "sale",
)
SALE_METHODS = (
    "sale_default",
    "sale_no_memory",
    "sale_published",
    "sale",
    "sale_lean",
    "sale_lean_nojury",
    "sale_lean_verify",
    "run",
)
Block = tuple[Any, ...]


@dataclass
class ReportData:
    """What the report shows, as :mod:`.analytics` queried it from the logs."""

    stats: dict[str, dict[str, Any]]  # analytics.method_stats' dict, per method
    stream: dict[str, list[dict[str, Any]]]  # analytics.stream_shares in quarters (the table)
    stream_fine: dict[str, list[dict[str, Any]]]  # ... in finer parts (the plot)
    matrix: list[dict[str, Any]]  # the matrix's signal columns (queries.matrix_signal_cells)
    summary: dict[str, Any] | None  # summary.json, when the logs came from `sale-ray eval`


def _order(methods: Sequence[str]) -> list[str]:
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(methods, key=lambda m: (rank.get(m, len(rank)), m))


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    return fmt.format(x) if isinstance(x, int | float) else str(x)


def _pct(x: Any) -> str:
    return _f(x, "{:.1%}")


# --- blocks ---------------------------------------------------------------------------------------
def build_blocks(data: ReportData, plot_dir: Path | None) -> list[Block]:
    """Everything the report shows, in order; PNG plots written into ``plot_dir`` if given."""
    stats, matrix, summary = data.stats, data.matrix, data.summary
    methods = _order(list(stats))
    run = (summary or {}).get("_run", {})
    b: list[Block] = [("h", 1, "sale-ray evaluation report")]
    if run:
        b.append(
            (
                "p",
                f"Dataset **{run.get('dataset')}**: {run.get('tasks')} tasks "
                f"({run.get('train_tasks')} train / {run.get('test_tasks')} held-out, "
                f"seed {run.get('seed')}); pool: {run.get('pool')}. "
                f"All numbers are on the held-out split; costs count every token of "
                f"every phase (bids, jury, refinement, execution; prompt and completion).",
            )
        )
    ratios = cost_ratios(stats)
    refs = [
        (key, label)
        for key, label, name in (
            ("cost_vs_largest_direct", "cost / largest_direct", "largest_direct"),
            ("cost_vs_largest_plan", "cost / largest (plan)", "largest"),
        )
        if name in stats
    ]
    b += [
        ("h", 2, "Methods"),
        (
            "table",
            ["method", "pass@1", "passed", "cost $"]
            + [label for _, label in refs]
            + ["largest share", "auction overhead", "note"],
            [
                [m, _f(s["pass_at_1"]), f"{s['passed']}/{s['tasks']}", _f(s["cost_usd"], "{:.6f}")]
                + [_f(ratios[m].get(key), "{:.2f}") for key, _ in refs]
                + [
                    _pct(s["largest_share"]),
                    _f(s["auction_overhead"], "{:.2f}"),
                    "; ".join(s.get("notes", []))[:80],
                ]
                for m, s in ((m, stats[m]) for m in methods)
            ],
        ),
    ]
    b.append(
        (
            "p",
            "Auction overhead = (bid + jury + refinement tokens) / execution tokens. "
            "Plan-conditioned single-agent routers (largest, smallest, random, cascade, knn, "
            "oracle) pay the chosen agent's plan as part of its execution; the `*_direct` "
            "methods call each agent once with the task alone (no plan, no bid, no jury). "
            '"largest_direct" is the baseline a user means by "just call the largest model"; '
            '"largest (plan)" is the same agent planning first, then executing.',
        )
    )
    plots = (
        write_plots(stats, data.stream_fine, summary, plot_dir, _order, SALE_METHODS)
        if plot_dir
        else {}
    )
    if "frontier" in plots:
        b.append(("img", plots["frontier"], "pass@1 vs cost, with the oracle"))

    ref, orc = reference_methods(stats)
    cmp_rows = []
    for m in (
        "sale",
        "sale_published",
        "sale_no_memory",
        "sale_default",
        "sale_lean",
        "sale_lean_nojury",
        "sale_lean_verify",
    ):
        c = compare_to_oracle(stats, m)
        if c:
            t = c["targets"]
            cmp_rows.append(
                [
                    m,
                    _f(c["cost_vs_largest"], "{:.2f}"),
                    _f(c["oracle_cost_vs_largest"], "{:.2f}"),
                    _pct(c["oracle_saving_captured"]),
                    _pct(c["oracle_gain_captured"]),
                    _f(t["pass_at_1_ge_largest"]),
                    _f(t["cost_le_0.60_largest"]),
                    _f(t["largest_share_le_0.40"]),
                    ", ".join(f"{k}: {_f(v)}" for k, v in t["not_dominated_by"].items()),
                ]
            )
    if cmp_rows:
        b += [
            ("h", 2, f"SALE against {ref} and {orc}"),
            (
                "table",
                [
                    "method",
                    f"cost / {ref}",
                    f"{orc} cost / {ref}",
                    "oracle saving captured",
                    "oracle pass@1 gain captured",
                    f"pass@1 >= {ref}",
                    f"cost <= 0.60 x {ref}",
                    "largest share <= 40 %",
                    "not dominated by",
                ],
                cmp_rows,
            ),
        ]
    for m in ("sale", "sale_published", "sale_no_memory", "sale_lean", "sale_lean_verify"):
        lines = target_lines(stats, m)
        if lines:
            b += [("h", 3, f"Targets: {m}"), ("p", "; ".join(lines) + ".")]
    b += [
        ("h", 2, "Reliance on the largest agent"),
        (
            "p",
            "Share of held-out tasks on which the largest agent executed (for the cascade: "
            "was escalated to).",
        ),
    ]
    if "largest" in plots:
        b.append(("img", plots["largest"], "largest share"))
    bins = sorted({k for s in stats.values() for k in s["per_bin"]})
    if bins:
        b += [
            ("h", 2, "Per complexity bin"),
            ("p", "pass@1 (tasks) per bin:"),
            (
                "table",
                ["method"] + [f"bin {x}" for x in bins],
                [
                    [m]
                    + [
                        _f(stats[m]["per_bin"].get(x, {}).get("pass_at_1"))
                        + f" ({stats[m]['per_bin'].get(x, {}).get('tasks', 0)})"
                        for x in bins
                    ]
                    for m in methods
                ],
            ),
            ("p", "cost $ per bin:"),
            (
                "table",
                ["method"] + [f"bin {x}" for x in bins],
                [
                    [m]
                    + [_f(stats[m]["per_bin"].get(x, {}).get("cost_usd"), "{:.6f}") for x in bins]
                    for m in methods
                ],
            ),
        ]
        if "bins" in plots:
            b.append(("img", plots["bins"], "pass@1 and cost per bin"))
    sale = [m for m in methods if m in SALE_METHODS]
    if sale:
        b += [
            ("h", 2, "Winner share over the task stream"),
            (
                "table",
                ["method", "stream part"]
                + sorted({a for m in sale for a in stats[m]["winner_share"]}),
                _stream_rows(data.stream, sale),
            ),
        ]
        if "stream" in plots:
            b.append(("img", plots["stream"], "winner share over the stream"))
        b += [
            ("h", 2, "Token overhead per auction phase"),
            (
                "table",
                ["method"]
                + [f"{p} tokens" for p in COST_PHASES]
                + [f"{p} $" for p in COST_PHASES]
                + ["overhead"],
                [
                    [m]
                    + [str(stats[m]["tokens_by_phase"][p]) for p in COST_PHASES]
                    + [_f(stats[m]["cost_usd_by_phase"][p], "{:.6f}") for p in COST_PHASES]
                    + [_f(stats[m]["auction_overhead"], "{:.2f}")]
                    for m in sale
                ],
            ),
        ]
        if "phases" in plots:
            b.append(("img", plots["phases"], "tokens per phase"))
    if "spend" in plots:
        b += [
            ("h", 2, "Spend per phase"),
            ("p", "$ per method, split by phase (bids, jury, refinement, execution)."),
            ("img", plots["spend"], "spend per phase"),
        ]
    if matrix:
        sig = signal_aucs(matrix)
        if sig["all"]["n"]:
            b += _signal_blocks(sig)
        if sig["direct"]:
            b += _direct_signal_blocks(sig["direct"])
    fit = (summary or {}).get("_fit")
    if fit:
        b += [
            ("h", 2, "Fitted weights (training split only)"),
            (
                "p",
                f"objective `{fit.get('settings', {}).get('objective')}`, status: "
                f"{fit.get('status')}; weights: `{fit.get('weights')}`; training figures: "
                f"`{fit.get('train')}`",
            ),
        ]
    return b


def _stream_rows(
    stream: dict[str, list[dict[str, Any]]], methods: Sequence[str]
) -> list[list[str]]:
    agents = sorted({a for m in methods for p in stream.get(m, []) for a in p["won"]})
    return [
        [m, f"Q{p['part'] + 1} ({p['tasks']} tasks)"]
        + [_pct(p["won"].get(a, 0) / p["tasks"]) for a in agents]
        for m in methods
        for p in stream.get(m, [])
    ]


def _signal_blocks(s: dict[str, Any]) -> list[Block]:
    names = ["neg_entropy", "jury_mean", "jury_self", "neg_plan_tokens", "self_check"]
    head = ["group", "n", "pass rate"] + names

    def row(label: str, t: dict[str, Any]) -> list[str]:
        return [label, str(t["n"]), _f(t["pass_rate"], "{:.2f}")] + [
            _f(t[x], "{:.2f}") for x in names
        ]

    rows = [row("all cells", s["all"])]
    rows += [row(f"agent {a}", t) for a, t in s["by_agent"].items()]
    rows += [row(f"bin {k}", t) for k, t in s["by_bin"].items()]
    bidders = sorted({b for t in s["by_juror"].values() for b in t})
    return [
        ("h", 2, "Signals: what predicts that an agent's own execution passes"),
        (
            "p",
            "AUC of each signal (0.5 = chance; below 0.5 points the wrong way): the negated "
            "plan entropy, the mean jury score a plan received, the bidder's score of its own "
            "plan, the negated plan length, and the agent's own run of the prompt's examples "
            "(the cascade's verifier).",
        ),
        ("table", head, rows),
        (
            "p",
            "Per juror: AUC of the score it gave each bidder's plan; parse failures = share "
            "of its verdicts that could not be read.",
        ),
        (
            "table",
            ["juror"] + [f"on {x}" for x in bidders] + ["parse failures"],
            [
                [j] + [_f(t.get(x), "{:.2f}") for x in bidders] + [_pct(s["jury_parse_failure"][j])]
                for j, t in s["by_juror"].items()
            ],
        ),
    ]


def _direct_signal_blocks(s: dict[str, Any]) -> list[Block]:
    names = ["self_check", "neg_entropy"]

    def row(label: str, t: dict[str, Any]) -> list[str]:
        return [label, str(t["n"]), _f(t["pass_rate"], "{:.2f}")] + [
            _f(t[x], "{:.2f}") for x in names
        ]

    return [
        ("h", 2, "Signals on direct calls"),
        (
            "p",
            'AUC for "this direct answer passes the hidden tests": its own run of the '
            "prompt's examples (the direct cascade's verifier on code) and its negated mean "
            "token entropy (on answer tasks).",
        ),
        (
            "table",
            ["group", "n", "pass rate"] + names,
            [row("all direct calls", s["all"])]
            + [row(f"agent {a}", t) for a, t in s["by_agent"].items()],
        ),
    ]


# --- rendering ------------------------------------------------------------------------------------
def render_markdown(blocks: list[Block]) -> str:
    out = []
    for blk in blocks:
        if blk[0] == "h":
            out.append("#" * blk[1] + " " + blk[2])
        elif blk[0] == "p":
            out.append(blk[1])
        elif blk[0] == "table":
            out.append("| " + " | ".join(blk[1]) + " |")
            out.append("|" + "---|" * len(blk[1]))
            out += ["| " + " | ".join(r) + " |" for r in blk[2]]
        elif blk[0] == "img":
            out.append(f"![{blk[2]}]({Path(blk[1]).name})")
        out.append("")
    return "\n".join(out)


def render_html(blocks: list[Block], title: str) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}td:first-child{text-align:left}"
        "img{max-width:100%}</style></head><body>",
    ]
    for blk in blocks:
        if blk[0] == "h":
            parts.append(f"<h{blk[1]}>{e(blk[2])}</h{blk[1]}>")
        elif blk[0] == "p":
            parts.append(f"<p>{e(blk[1]).replace('**', '')}</p>")
        elif blk[0] == "table":
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in blk[1]) + "</tr>")
            parts += [
                "<tr>" + "".join(f"<td>{e(c).replace('**', '')}</td>" for c in r) + "</tr>"
                for r in blk[2]
            ]
            parts.append("</table>")
        elif blk[0] == "img":
            parts.append(f"<img src='{e(Path(blk[1]).name)}' alt='{e(blk[2])}'>")
    return "\n".join(parts) + "</body></html>\n"
