"""The scores as tables: results.csv, improvement.csv and results.md (the results table with the
paper's figures and the released file's columns beside each method, the IQM table, the probabilities
of improvement, and the paper-layout table in Markdown and LaTeX).

  results.csv  level,name,method,phase,mean,std_ddof1,num_seeds,num_tasks,domain,seeds,final_steps,
               status,notes,iqm,iqm_ci_low,iqm_ci_high (percent; level is task, domain, overall,
               published (the paper's table, method '<M> (paper)') or released (the --reference file,
               method '<M> 1M (released)' / '<M> 1.5M (released)'); status final / unfinished: ...)
  improvement.csv  x,y,phase,probability_x_beats_y,ci_low,ci_high,num_tasks,seeds

Beside each run method (experiments/report/published.py): the TRQAM paper's table, per domain mean +- std
and overall, for the run method's own paper method (trqam -> TRQAM, qam -> QAM, sqam and sqam_eps0.5 ->
SQAM) and always TRQAM's; with --reference, the released file's scores for every method it holds.
"""

from __future__ import annotations

import collections
import csv
import math
from typing import Optional, Sequence

from experiments.report import published
from experiments.report.exp_data import Released
from experiments.report.runs import (DOMAINS, PHASES, TASKS_PER_DOMAIN, domain_key, domain_tasks,
                                     method_key)
from experiments.report.stats import CONFIDENCE, STD_DDOF, Row

CSV_FIELDS = ("level", "name", "method", "phase", "mean", f"std_ddof{STD_DDOF}", "num_seeds",
              "num_tasks", "domain", "seeds", "final_steps", "status", "notes", "iqm", "iqm_ci_low",
              "iqm_ci_high")


def _status(r: Row) -> str:
    if r.level in ("published", "released"):
        return r.level
    if r.level == "task":
        return f"unfinished: {r.progress}" if r.progress else "final"
    return f"includes unfinished: {', '.join(r.unfinished)}" if r.unfinished else "final"


def paper_columns(methods: Sequence[str]) -> list[str]:
    """The paper's methods shown: those of the run methods, and TRQAM, in the paper's order."""
    wanted = {published.paper_method(m) for m in methods} | {"TRQAM"}
    return [m for m in published.PAPER_METHODS if m in wanted]


def published_rows(rows: Sequence[Row], released: Optional[Released] = None) -> list[Row]:
    """Figures not computed from these runs, for the domains (tasks) present in `rows`, and overall:
    level 'published', the TRQAM paper's table (method 'TRQAM (paper)'), for the paper methods of the
    run methods and TRQAM; level 'released', the released results file's 1M (offline) and 1.5M
    (online) scores, per task, domain and overall, for every method it holds."""
    methods = sorted({r.method for r in rows}, key=method_key)
    domains = sorted({r.name for r in rows if r.level == "domain"}, key=domain_key)
    has_overall = any(r.level == "overall" for r in rows)
    out = []
    note = f"published figure, not computed from these runs: {published.PAPER_SOURCE}"
    for method in paper_columns(methods):
        for domain in domains:
            if domain in published.PAPER_TABLE[method]:
                mean, std = published.PAPER_TABLE[method][domain]
                out.append(Row("published", domain, f"{method} (paper)", "offline", float(mean), float(std),
                               published.PAPER_SEEDS, TASKS_PER_DOMAIN, domain=domain, notes=(note,)))
        if has_overall:
            out.append(Row("published", "overall", f"{method} (paper)", "offline",
                           float(published.PAPER_OVERALL[method]), math.nan, published.PAPER_SEEDS,
                           TASKS_PER_DOMAIN * len(published.PAPER_DOMAINS), num_domains=len(published.PAPER_DOMAINS),
                           notes=(note + "; the mean of the 10 rounded domain means",)))
    if released is None:
        return out
    note = f"released results file {released.path} ({released.describe()}), not computed from these runs"
    tasks = sorted({(r.domain, r.task, r.name) for r in rows if r.level == "task"},
                   key=lambda t: (domain_key(t[0]), t[1]))
    for method in released.methods:
        for phase in PHASES:
            step = "1M" if phase == "offline" else "1.5M"
            label = f"{method} {step} (released)"
            for domain, task, name in tasks:
                score = released.score(name, method, phase)
                if score:
                    out.append(Row("released", name, label, phase, *score, released.seeds, 1, domain=domain,
                                   task=task, notes=(note,)))
            for domain in domains:
                score = released.score(domain, method, phase, domain_tasks(domain))
                if score:
                    out.append(Row("released", domain, label, phase, *score, released.seeds, TASKS_PER_DOMAIN,
                                   domain=domain, notes=(note,)))
            score = released.score("all", method, phase)
            if has_overall and score:
                out.append(Row("released", "overall", label, phase, *score, released.seeds, 0, notes=(note,)))
    return out


def write_csv(rows: Sequence[Row], path: str, released=None, iqm: Optional[dict] = None) -> None:
    """One row per score; the std column's name states its ddof. Figures not computed from the runs
    come last (level 'published': the paper's table; 'released': the released results file). Domain
    and overall rows carry the IQM and its bootstrap CI (percent) when `iqm` is given."""
    iqm = iqm or {}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in list(rows) + published_rows(rows, released):
            iv = iqm.get((r.level, r.name, r.method, r.phase))
            writer.writerow([r.level, r.name, r.method, r.phase, repr(r.mean), repr(r.std),
                             r.num_seeds, r.num_tasks, r.domain,
                             " ".join(str(s) for s, _ in r.per_seed),
                             " ".join(map(str, r.final_steps)), _status(r), " | ".join(r.notes),
                             *((repr(iv.estimate), repr(iv.low), repr(iv.high)) if iv else ("", "", ""))])


def write_improvement_csv(pairs: Sequence, path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "y", "phase", "probability_x_beats_y", "ci_low", "ci_high", "num_tasks", "seeds"])
        for x, y, phase, iv in pairs:
            writer.writerow([x, y, phase, repr(iv.estimate), repr(iv.low), repr(iv.high), iv.num_tasks, iv.notes])



# ---------------------------------------------------------------------------------------- markdown

def format_score(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.1f} (1 seed, no std)" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _step_notes(rows: Sequence[Row]) -> list[str]:
    """Per (method, phase): a note when task runs end at different final steps (unfinished runs)."""
    notes = []
    groups = collections.defaultdict(list)
    for r in rows:
        if r.level == "task":
            groups[(r.method, r.phase)].append(r)
    for (method, phase), task_rows in groups.items():
        last = max(max(r.final_steps) for r in task_rows)
        behind = [r for r in task_rows if min(r.final_steps) < last]
        if behind:
            earlier = ", ".join(f"{r.name} ({min(r.final_steps)})" for r in behind)
            notes.append(f"{method} {phase}: most advanced final evaluation at step {last}; "
                         f"earlier in {earlier}")
    return notes


def _columns(rows: Sequence[Row], released) -> list[tuple]:
    """('run', method, phase) per method and phase present, each paper method's ('paper', M) right
    after the last run method it belongs to (TRQAM's after the run columns when no run is TRQAM), then
    ('released', M, phase) for every method of the released file."""
    methods = sorted({r.method for r in rows if r.level in ("task", "domain", "overall")}, key=method_key)
    present = {(r.method, r.phase) for r in rows}
    paper = paper_columns(methods)
    last = {}
    for m in methods:
        if published.paper_method(m) in paper:
            last[published.paper_method(m)] = m
    columns = []
    for m in methods:
        columns += [("run", m, p) for p in PHASES if (m, p) in present]
        columns += [("paper", pm) for pm in paper if last.get(pm) == m]
    columns += [("paper", pm) for pm in paper if pm not in last]
    if released is not None:
        columns += [("released", pm, p) for pm in released.methods for p in PHASES]
    return columns


def _header(column) -> str:
    if column[0] == "run":
        return f"{column[1]} {column[2]}"
    if column[0] == "paper":
        return f"{column[1]} (paper)"
    return f"{column[1]} {'1M' if column[2] == 'offline' else '1.5M'} (released)"


def to_markdown(rows: Sequence[Row], released: Optional[Released] = None,
                iqm: Optional[dict] = None, pairs: Optional[Sequence] = None,
                iqm_info: str = "", poi_info: str = "") -> str:
    """Markdown: the table (tasks grouped under domains, then domain means, then overall; one column
    per method and phase, the paper's figures beside their methods, the released file's columns
    last), the IQM table, the probabilities of improvement, and the paper-layout table."""
    columns = _columns(rows, released)
    cells = {(r.level, r.name, r.method, r.phase): r for r in rows}
    extra = {(r.level, r.name, r.method, r.phase): r for r in published_rows(rows, released)}
    notes: list[str] = []

    def run_cell(level, name, method, phase):
        r = cells.get((level, name, method, phase))
        if r is None:
            return "–"
        text = format_score(r.mean, r.std)
        if level == "domain" and r.num_tasks != TASKS_PER_DOMAIN:
            text += f" ({r.num_tasks}/{TASKS_PER_DOMAIN} tasks)"
        if level == "overall" and set(r.members) != set(DOMAINS):
            outside = [d for d in r.members if d not in DOMAINS]
            text += (f" ({r.num_domains}/{len(DOMAINS)} domains)" if not outside else
                     f" ({r.num_domains} domains, incl. {', '.join(outside)})")
        if r.progress:
            text += f" (unfinished: {r.progress})"
        elif r.unfinished:
            text += " (incl. unfinished)"
            notes.append(f"{name} / {method} / {phase}: includes unfinished run(s): {', '.join(r.unfinished)}")
            text += f" [{len(notes)}]"
        for note in r.notes:
            notes.append(f"{name} / {method} / {phase}: {note}")
            text += f" [{len(notes)}]"
        return text

    def cell(column, level, name):
        if column[0] == "run":
            return run_cell(level, name, column[1], column[2])
        if column[0] == "paper":
            r = extra.get(("published", name, f"{column[1]} (paper)", "offline"))
            if r is None:
                return "–"
            return f"{r.mean:.0f}" if math.isnan(r.std) else f"{r.mean:.0f} ± {r.std:.0f}"
        r = extra.get(("released", name, _header(column), column[2]))
        return "–" if r is None else format_score(r.mean, r.std)

    def line(label, level, name):
        return "| " + " | ".join([label] + [cell(c, level, name) for c in columns]) + " |"

    domains = sorted({r.domain for r in rows if r.level == "domain"}, key=domain_key)
    tasks = sorted({(r.domain, r.task, r.name) for r in rows if r.level == "task"},
                   key=lambda t: (domain_key(t[0]), t[1], t[2]))
    seeds = sorted({r.num_seeds for r in rows if r.level == "task"})
    out = [
        f"Success rate (%), mean ± std over seeds (sample std, ddof={STD_DDOF}, as the reference's "
        "exp_data/reproduce.py). Offline: each seed's "
        "last offline evaluation (end of offline training); online: its last online evaluation. "
        "Domain: per seed, the mean over the domain's tasks, then mean ± std over the seeds "
        "common to them; overall: per seed, the mean over the domains present, then mean ± std "
        "over seeds. "
        f"Seeds per task: {', '.join(map(str, seeds))}.",
        "",
        "| task | " + " | ".join(_header(c) for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    blank = " |" * len(columns)
    for domain in domains:
        out.append(f"| **{domain}** |" + blank)
        for d, task, name in tasks:
            if d == domain:
                out.append(line(f"task{task}", "task", name))
    out.append("| **domain mean** |" + blank)
    for domain in domains:
        out.append(line(domain, "domain", domain))
    out.append(line("**overall**", "overall", "overall"))
    notes.extend(_step_notes(rows))
    out += ["", f"Columns marked (paper) are published figures, not computed from these runs: "
            f"{published.PAPER_SOURCE}; per domain the mean of its 5 tasks, overall the mean of all 10 "
            "domains (the paper gives no per-task figures). " + published.QAM_RELEASE_FOOTNOTE]
    outside = [d for d in domains if d not in published.PAPER_DOMAINS]
    if outside:
        out[-1] += (f" {', '.join(outside)} {'is' if len(outside) == 1 else 'are'} not among the paper's 10 "
                    "domains: no paper figure.")
    if released is not None:
        out += ["", f"Columns marked (released) are from the authors' released results file {released.path} "
                f"({released.describe()}): mean ± std (ddof={STD_DDOF}) over its {released.seeds} seeds at 1M "
                "steps (offline) and 1.5M (online: 1M offline steps then 500K env steps); a domain is its "
                "own entry (else the per-seed mean of its 5 tasks), overall the file's 'all' entry."]
    if notes:
        out += ["", "Notes:"] + [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    if iqm:
        out += ["", *iqm_markdown(rows, iqm, iqm_info)]
    if pairs:
        out += ["", *improvement_markdown(pairs, poi_info)]
    out += ["", *paper_layout(rows)]
    return "\n".join(out) + "\n"


def iqm_markdown(rows: Sequence[Row], iqm: dict, stats_info: str = "") -> list[str]:
    """The IQM table: a row per domain and overall, a column per method and phase."""
    columns = sorted({(k[2], k[3]) for k in iqm}, key=lambda c: (method_key(c[0]), PHASES.index(c[1])))
    domains = sorted({k[1] for k in iqm if k[0] == "domain"}, key=domain_key)

    def cell(level, name, method, phase):
        iv = iqm.get((level, name, method, phase))
        return "–" if iv is None else (f"{iv.estimate:.1f} [{iv.low:.1f}, {iv.high:.1f}] "
                                       f"({iv.num_tasks}×{iv.num_seeds})")

    out = [f"Interquartile mean (IQM, success %) with its {100 * CONFIDENCE:.0f}% stratified bootstrap "
           "confidence interval [low, high] over (tasks × seeds), computed with rliable: the mean of the "
           "middle 50% of all the (task, seed) scores of the domain (overall: of every task present); "
           f"the bootstrap resamples each task's seeds with replacement{stats_info}.",
           "", "| IQM | " + " | ".join(f"{m} {p}" for m, p in columns) + " |", "|---|" + "---|" * len(columns)]
    for level, name in [("domain", d) for d in domains] + [("overall", "overall")]:
        out.append(f"| {'**overall**' if level == 'overall' else name} | "
                   + " | ".join(cell(level, name, m, p) for m, p in columns) + " |")
    return out


def improvement_markdown(pairs: Sequence, stats_info: str = "") -> list[str]:
    out = ["Probability of improvement P(X > Y), computed with rliable: on each task both methods ran, the "
           "probability that a seed of X scores higher than a seed of Y (ties count one half), averaged "
           f"over those tasks; 0.5 means neither is better. {100 * CONFIDENCE:.0f}% stratified bootstrap "
           f"confidence interval{stats_info}. P(Y > X) = 1 − P(X > Y).",
           "", "| X | Y | phase | P(X > Y) | CI | tasks | seeds |", "|---|---|---|---|---|---|---|"]
    for x, y, phase, iv in pairs:
        out.append(f"| {x} | {y} | {phase} | {iv.estimate:.2f} | [{iv.low:.2f}, {iv.high:.2f}] | "
                   f"{iv.num_tasks} | {iv.notes} |")
    return out


def paper_layout(rows: Sequence[Row]) -> list[str]:
    """The paper's table layout (domains as columns, methods as rows, best in bold), in Markdown and
    LaTeX: the paper's rows, then this report's methods, offline, rounded to whole percent. Our
    'all' cell is shown only when the method has all 10 domains."""
    ours = sorted({r.method for r in rows if r.level == "domain" and r.phase == "offline"}, key=method_key)
    extra_domains = sorted({r.name for r in rows if r.level == "domain" and r.name not in published.PAPER_DOMAINS},
                           key=domain_key)
    domains = list(published.PAPER_DOMAINS) + extra_domains
    cells = {(r.level, r.name, r.method): r for r in rows if r.phase == "offline"}
    table = []  # (label, {column: (mean, std or nan, marker)})
    for m in published.PAPER_METHODS:
        row = {d: (*published.PAPER_TABLE[m][d], "") for d in published.PAPER_DOMAINS}
        row["all"] = (published.PAPER_OVERALL[m], math.nan, "")
        table.append((m, row))
    for m in ours:
        row = {}
        for d in domains:
            r = cells.get(("domain", d, m))
            if r is not None and not math.isnan(r.mean):
                row[d] = (r.mean, r.std, "" if r.num_tasks == TASKS_PER_DOMAIN else "†")
        r = cells.get(("overall", "overall", m))
        if r is not None and set(published.PAPER_DOMAINS) <= set(r.members):
            row["all"] = (r.mean, math.nan, "")
        if row:
            table.append((f"{m} (ours)", row))
    columns = domains + ["all"]
    # Best per column, bold only where the column has more than one figure to compare.
    best = {c: max(round(row[c][0]) for _, row in table if c in row) if sum(c in row for _, row in table) > 1
            else None for c in columns}

    def text(row, c, bold, pm="±"):
        if c not in row:
            return "–"
        mean, std, marker = row[c]
        value = f"{mean:.0f}" if math.isnan(std) else f"{mean:.0f} {pm} {std:.0f}"
        return bold(value) + marker if round(mean) == best[c] else value + marker

    short = {d: published.PAPER_SHORT.get(d, d.replace("-play", "")) for d in domains}
    md = ["Offline success (%) in the TRQAM paper's layout: the paper's rows (at 1M steps), then this report's "
          "methods (their last offline evaluation), mean ± std over seeds, rounded; best per column in bold. "
          "† fewer than 5 tasks of the domain; 'all' for our methods only with all 10 domains.",
          "", "| method | " + " | ".join(short[d] for d in domains) + " | all |",
          "|---|" + "---|" * len(columns)]
    for label, row in table:
        md.append(f"| {label} | " + " | ".join(text(row, c, lambda v: f"**{v}**") for c in columns) + " |")
    tex = ["```latex", "\\begin{tabular}{l" + "c" * len(columns) + "}", "\\toprule",
           "Method & " + " & ".join(short[d] for d in domains) + " & all \\\\", "\\midrule"]
    for i, (label, row) in enumerate(table):
        if i == len(published.PAPER_METHODS) and len(table) > i:
            tex.append("\\midrule")
        cells_tex = [text(row, c, lambda v: f"\\textbf{{{v}}}", "$\\pm$").replace("†", "$^\\dagger$")
                     .replace("–", "--") for c in columns]
        tex.append(label.replace("_", "\\_") + " & " + " & ".join(cells_tex) + " \\\\")
    tex += ["\\bottomrule", "\\end{tabular}", "```"]
    return md + [""] + tex
