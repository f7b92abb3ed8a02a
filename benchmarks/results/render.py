"""Renders the benchmark pages of the docs site, docs/benchmarks/*.md, and their plots from the
result files beside this script (benchmarks/results/*.json). Every figure on those pages is read
from a result file: the tables, and the numbers the prose quotes (formatted here, never typed).

    python benchmarks/results/render.py                  # pages and plots into docs/benchmarks/
    python benchmarks/results/render.py --no-plots --out /tmp/pages   # the pages alone

A result file is one benchmark: a header (benchmark, title, machine, source, units, the command)
and "rows", each with what was measured (run, dataset, settings, seed), the machine, its
metrics or value, the command that reproduces it and its source; rows measured on the battery
weld's published split also say so (test_split). tests/test_benchmark_results.py checks the
fields and that the committed pages are what this script writes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent
ROOT = RESULTS.parents[1]
OUT = ROOT / "docs" / "benchmarks"
SCRIPT = "benchmarks/results/render.py"
WELD = "battery weld"
M5 = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")
M7 = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
NAMES = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1max": "image F1-max",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pixel_f1max": "pixel F1-max",
    "aupro": "AUPRO",
}
OVERLAP_ANCHOR = "accuracy.md#weld-test-split-overlap"


# ------------------------------------------------------------------------------ data access
def load_all(results: Path = RESULTS) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


class Data:
    def __init__(self, docs: dict[str, dict]):
        self.docs = docs

    def rows(self, name: str, **match) -> list[dict]:
        return [r for r in self.docs[name]["rows"] if all(r.get(k) == v for k, v in match.items())]

    def row(self, name: str, **match) -> dict:
        found = self.rows(name, **match)
        if len(found) != 1:
            raise KeyError(f"{name}: {len(found)} rows match {match}")
        return found[0]

    def fact(self, name: str, key: str):
        return self.row(name, run=key)["value"]

    def f(self, name: str, key: str) -> str:
        return num(self.fact(name, key))


def num(x) -> str:
    """A number as its result file writes it (1.2e-7 stays short)."""
    if isinstance(x, float) and x != 0 and abs(x) < 1e-4:
        mantissa, exp = f"{x:.1e}".split("e")
        return f"{mantissa}e{int(exp)}"
    return str(x)


def p1(x) -> str:
    return "" if x is None else f"{x:.1f}"


def pct(x) -> str:
    """A percentage cell: one decimal, or as quoted when the file holds an integer."""
    if x is None:
        return ""
    return str(x) if isinstance(x, int) else f"{x:.1f}"


def r1(x: float) -> str:
    """A derived figure (a mean) to one decimal, halves rounded up as on paper."""
    from decimal import ROUND_HALF_UP, Decimal

    return str(Decimal(repr(round(x, 9))).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def d1(x: float) -> str:
    return f"{x:+.1f}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def reproduce(rows: list[dict], label=lambda r: r.get("label") or r["run"]) -> str:
    """The command of each row, rows with the same command together."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        if r.get("command"):
            groups.setdefault(r["command"], [])
            name = label(r)
            if name not in groups[r["command"]]:
                groups[r["command"]].append(name)
    out = ["Reproduce:", ""]
    for cmd, names in groups.items():
        out.append(f"- {'; '.join(names)}: `{cmd}`")
    return "\n".join(out) + "\n"


def caveats(rows: list[dict], label=lambda r: r.get("label") or r["run"]) -> str:
    seen, out = set(), []
    for r in rows:
        for key in ("caveat", "session", "run_note"):
            text = r.get(key)
            if text and (label(r), text) not in seen:
                seen.add((label(r), text))
                out.append(f"- {label(r)} (`{r['run']}`): {text}")
    return ("Caveats:\n\n" + "\n".join(out) + "\n") if out else ""


class Page:
    def __init__(self, name: str, title: str):
        self.name, self.title, self.files, self.parts = name, title, [], []

    def uses(self, *names: str) -> None:
        for n in names:
            if n not in self.files:
                self.files.append(n)

    def add(self, text: str) -> None:
        self.parts.append(text.rstrip("\n") + "\n")

    def render(self, data: Data, weld_note: str) -> str:
        files = ", ".join(f"benchmarks/results/{n}.json" for n in self.files)
        head = [
            f"<!-- generated by {SCRIPT} from {files}; do not edit -->",
            "",
            f"# {self.title}",
            "",
        ]
        weld = any("test_split" in r for n in self.files for r in data.docs[n]["rows"])
        if weld:
            head += [weld_note, ""]
        sources = sorted({data.docs[n]["source"] for n in self.files})
        machines = sorted({data.docs[n]["machine"] for n in self.files})
        head += [
            f"Machine: {', '.join(machines)}. Source: {'; '.join(sources)}. "
            f"Result files: {', '.join(f'`{n}.json`' for n in self.files)}.",
            "",
        ]
        return "\n".join(head) + "\n" + "\n".join(self.parts)


# ------------------------------------------------------------------------------ pages
def weld_note(d: Data) -> str:
    w = d.row("weld_split", run="published_split")
    return (
        f"> **Battery weld rows.** Rows measured before {w['refused_since']} used the "
        f"published weld split, whose test set holds {w['value']} of the "
        f"{w['train_images']} training images (byte-identical); `adps test` now refuses "
        f"that split; see [overlap_weld]({OVERLAP_ANCHOR}). Such rows say so in their "
        f'result files (`"test_split": "{w["row_label"]}"`); their commands now run '
        f"on the disjoint split `{w['disjoint_split']}`."
    )


def page_index(d: Data, pages: list[Page]) -> Page:
    p = Page("index", "Benchmarks")
    p.uses(*sorted(d.docs))
    machines = sorted({r["machine"] for doc in d.docs.values() for r in doc["rows"]})
    gpu = [m for m in machines if "no GPU" not in m and "unknown" not in m]
    p.add(
        "Every figure on these pages is read from a machine-readable result file under "
        f"`benchmarks/results/` and rendered by `{SCRIPT}`. To regenerate the pages and plots "
        "after adding or changing a result file:\n\n"
        "```bash\npython benchmarks/results/render.py\n```\n"
    )
    p.add(
        "Each row of a result file records what was measured (run, dataset, settings, "
        "seed), the machine, the wall time or budget where there is one, the metrics, the "
        "command that reproduces it, and its source. Machines: "
        + "; ".join(f"{m}" for m in machines)
        + ". "
        + (
            "No GPU figure exists yet: the CUDA paths are written but unmeasured."
            if not gpu
            else ""
        )
        + "\n"
    )
    p.add("## Pages\n")
    p.add(
        "\n".join(
            f"- [{q.title}]({q.name}.md): from " + ", ".join(f"`{n}.json`" for n in q.files)
            for q in pages
        )
        + "\n"
    )
    p.add("## Result files\n")
    p.add(
        table(
            ["file", "benchmark", "rows", "source"],
            [
                [f"`{n}.json`", doc["title"], len(doc["rows"]), doc["source"]]
                for n, doc in sorted(d.docs.items())
            ],
        )
    )
    return p


def page_training(d: Data, plots: dict) -> Page:
    p = Page("training", "Training speed and accuracy per image seen")
    p.uses("train_step", "training_notes", "cpu_speed", "accuracy_per_image", "bottle_reduced")
    ts = d.docs["train_step"]
    cols = ts["rows"]
    first = cols[0]["settings"]
    p.add("## One training step, part by part\n")
    p.add(
        f"Seconds per step at {first['image_size']} px, k = {first['k']}, batch "
        f"{first['batch']} (`{ts['command']}`; {cols[0]['caveat']}):\n"
    )
    parts = [
        ("synthesis", "synthesis"),
        ("teacher_forward", "teacher forward"),
        ("student_forward_backward", "student forward + backward"),
        ("psm_forward_backward", "PSM forward + backward"),
        ("loss", "loss"),
        ("optimiser", "optimiser"),
        ("whole_step", "whole step"),
    ]
    body = [[label] + [f"{c['metrics'][k]:.3f}" for c in cols] for k, label in parts]
    body.append(["images/s"] + [f"{c['metrics']['images_per_s']:.2f}" for c in cols])
    body.append(["speed-up"] + [f"{c['metrics']['speedup']:.2f}x" for c in cols])
    p.add(table(["part"] + [c["run"] for c in cols], body))
    if plots.get("train_step"):
        p.add("![seconds per training step, part by part](train_step.png)\n")
    s2 = d.row("train_step", run="bf16, stride 2")
    s1 = d.row("train_step", run="bf16, stride 1")
    s4 = d.row("train_step", run="bf16, stride 4")
    slow = d.f("training_notes", "student_bf16_backward_slowdown")
    patches = first["batch"] * first["k"] ** 2
    p.add(
        f"bf16 autocast runs the teacher and the PSM in bf16 on a CPU with native bf16 (this "
        f"one has avx512_bf16). The student stays in float32: the profile showed that in bf16 "
        f"the backward of its depthwise convolutions on the {patches} small patches of a "
        f"batch takes {slow}x longer than in float32 (oneDNN, torch 2.14). The PSM at "
        f"stride 2 drops the last, full-resolution up-block and upsamples its logits: its "
        f"forward + backward falls from {s1['metrics']['psm_forward_backward']:.3f} s to "
        f"{s2['metrics']['psm_forward_backward']:.3f} s, and stride 4 saves little more "
        f"(whole step {s2['metrics']['whole_step']:.3f} s against "
        f"{s4['metrics']['whole_step']:.3f} s).\n"
    )
    p.add(reproduce(cols))

    p.add("## Training and synthesis throughput\n")
    speed = [r for r in d.docs["cpu_speed"]["rows"] if r["topic"] in ("training", "metrics")]
    p.add(speed_table(speed))
    ratio = d.row("cpu_speed", run="train-128")["values"]["ratio"]
    p.add(
        f"Synthesis and data do not bound training: the full step runs at "
        f"{ratio * 100:.0f}% of the model's own rate.\n"
    )

    p.add("## Accuracy per image seen\n")
    pi = d.docs["accuracy_per_image"]
    rows = pi["rows"]
    s = rows[0]["settings"]
    p.add(
        f"{WELD.capitalize()}, {s['epochs']} epochs at batch {s['batch']}, two seeds, "
        f"{rows[0]['scoring']} (`{pi['command']}`):\n"
    )
    p.add(
        table(
            ["run", "settings", "seed"] + [NAMES[k] for k in M5],
            [
                [r["label"], r["settings_label"], r["seed"]] + [p1(r["metrics"][k]) for k in M5]
                for r in rows
            ],
        )
    )

    def mean(recipe, key):
        return statistics.mean(r["metrics"][key] for r in rows if r["recipe"] == recipe)

    spread = max(
        abs(a["metrics"]["image_auroc"] - b["metrics"]["image_auroc"])
        for a in rows
        for b in rows
        if a["recipe"] == b["recipe"]
    )
    train_images = d.row("weld_split", run="published_split")["train_images"]
    speedup = s2["metrics"]["speedup"]
    p.add(
        f"Per image seen the fast recipe (C) is "
        f"{'ahead' if mean('C', 'image_auroc') > mean('A', 'image_auroc') else 'behind'} "
        f"on image metrics (mean image AUROC {r1(mean('C', 'image_auroc'))} vs "
        f"{r1(mean('A', 'image_auroc'))} for the paper's, A) and level on the maps (pixel AP "
        f"{r1(mean('C', 'pixel_ap'))} vs {r1(mean('A', 'pixel_ap'))}, AUPRO "
        f"{r1(mean('C', 'aupro'))} vs {r1(mean('A', 'aupro'))}); the two seeds of one recipe "
        f"differ by up to {p1(spread)} points of image AUROC on this small set "
        f"({train_images} training images), more than the recipes do. Per minute the fast "
        f"recipe's step is {speedup:.2f}x cheaper (table above), so it sees about twice the "
        f"images in a budget: see [accuracy per minute](accuracy.md#accuracy-per-minute).\n"
    )
    timed = [r for r in rows if "train_minutes" in r]
    if timed:
        p.add(
            "Training minutes recorded for these runs ("
            + timed[0]["train_minutes_source"]
            + "): "
            + ", ".join(f"{r['run']} {r['train_minutes']}" for r in timed)
            + ".\n"
        )
    p.add(reproduce(rows, label=lambda r: r["run"]))

    p.add("## MVTec AD bottle, reduced CPU runs\n")
    br = d.docs["bottle_reduced"]
    rows = br["rows"]
    s = rows[0]["settings"]
    p.add(
        f"The paper's geometry ({s['image_size']} px, {s['backbone']} teacher, "
        f"{s['textures']} textures) at batch {s['batch']}, with a fraction of the paper's "
        f"schedule; metrics at {s['image_size']} px:\n"
    )
    p.add(f"```\n{br['command']}\n```\n")
    keys = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
    p.add(
        table(
            ["run"] + [NAMES[k] for k in keys] + ["train s"],
            [
                [r["label"]] + [p1(r["metrics"][k]) for k in keys] + [r["train_seconds"]]
                for r in rows
            ],
        )
    )
    k8 = d.row("bottle_reduced", run="bottle-cpu-k8-16ep")
    k1 = d.row("bottle_reduced", run="bottle-cpu-k1-16ep")
    ref = br["reference"]
    p.add(
        f"Each row is one run with one seed, so the k = 8 vs k = 1 gap "
        f"({d1(k8['metrics']['pixel_ap'] - k1['metrics']['pixel_ap'])} pixel AP) is a hint, "
        f"not a result. {rows[0]['caveat'][0].upper() + rows[0]['caveat'][1:]}. For "
        f"reference, {ref['what']} is {p1(ref['value'])}, and the paper's full schedule on a "
        f"GPU is the target (pixel AP >= {br['target']['pixel_ap']}). A short CPU run is no "
        f"substitute for that.\n"
    )
    p.add(reproduce(rows))
    return p


def speed_table(rows: list[dict]) -> str:
    return table(
        ["what", "figure", "command"],
        [
            [
                r["what"],
                r["figure"].format(**{k: num(v) for k, v in r["values"].items()}),
                r["command_cell"],
            ]
            for r in rows
        ],
    )


def page_accuracy(d: Data, plots: dict) -> Page:
    p = Page("accuracy", "Accuracy: the demo, time budgets, PatchCore, image scores")
    p.uses("demo", "accuracy_per_minute", "patchcore", "prior_costs", "image_score", "weld_split")
    if "overlap_weld" in d.docs:
        p.uses("overlap_weld")

    # demo
    demo = d.docs["demo"]["rows"][0]
    s = demo["settings"]
    p.add("## The demo\n")
    p.add(
        f"`{demo['command']}` generates {s['train_images']} normal training images and "
        f"{s['test_normal']} normal plus {s['test_defective']} defective test images at "
        f"{s['image_size']} px (test defects: {', '.join(demo['test_defects'])}, drawn by a "
        f"generator unrelated to the training synthesis), trains k = {s['k']} for {s['epochs']} "
        f"epochs of {s['steps_per_epoch']} steps, sets the image threshold on "
        f"{s['holdout_normal']} held-out normal images ({s['target_far'] * 100:.0f}% false "
        f"alarms) and evaluates the model. It trained in {demo['train_seconds']} s "
        f"({demo['train_images_per_s']} images/s) and took {demo['total_seconds']} s in "
        f"all:\n"
    )
    p.add(table(["name", *M7], [["demo"] + [p1(demo["metrics"][k]) for k in M7]]))
    fd, fn = demo["flagged_defective"], demo["flagged_normal"]
    p.add(
        f"Image threshold {demo['image_threshold']}: {fd[0]} of {fd[1]} defective and "
        f"{fn[0]} of {fn[1]} normal test images flagged. The procedural defects sit on a "
        f"clean, regular surface, so they are easier than most real ones: these numbers show "
        f"that the pipeline works and learns, not what to expect on your parts.\n"
    )

    # per minute
    pm = d.docs["accuracy_per_minute"]
    rows = pm["rows"]
    pc = {r["dataset"]: r for r in d.docs["patchcore"]["rows"] if not r.get("quoted")}
    quoted = [r for r in d.docs["patchcore"]["rows"] if r.get("quoted")]
    p.add("## Accuracy per minute\n")
    p.add(
        f"Training with a wall-clock budget (`--time-budget`; `{pm['command']}`). "
        f'"+ prior" is the same model scored with the late-fused memory prior, what '
        f"`--recipe fast` now trains ([memory prior](memory-prior.md)). PatchCore is "
        f"anomalib's on the same images with the same Lite0 weights; its minutes are its fit "
        f"time. The train minutes are the budget; the prior's fit comes before it.\n"
    )

    def minutes(r):
        return r["budget_minutes"]

    body = []
    for ds in ("bottle", WELD):
        body.extend(
            [ds, r["label"], r["seed"], minutes(r), *(p1(r["metrics"][k]) for k in M5)]
            for r in rows
            if r["dataset"] == ds
        )
        peers = [q for q in quoted if q["dataset"] == ds] + [pc[ds]]
        for q in peers:
            mins = q.get("fit_minutes", None)
            mins = p1(mins if mins is not None else q["fit_seconds"] / 60)
            body.append([ds, q["label"], "", mins] + [pct(q["metrics"].get(k)) for k in M5])
    p.add(table(["dataset", "run", "seed", "train min"] + [NAMES[k] for k in M5], body))
    if plots.get("minutes"):
        p.add("![pixel AP and AUPRO against training minutes](minutes.png)\n")

    def r_(run):
        return d.row("accuracy_per_minute", run=run)

    fa0, fa1 = r_("bottle-C-10m"), r_("bottle-C-10m-s1")
    pa0, pa1 = r_("bottle-A-10m"), r_("bottle-A-10m-s1")
    ahead = all(
        f["metrics"][k] > q["metrics"][k]
        for f, q in ((fa0, pa0), (fa1, pa1))
        for k in ("pixel_ap", "aupro")
    )
    says = ["What this says:", ""]
    says.append(
        f"- **The fast recipe against the paper's, per minute, two seeds** (bottle, "
        f"{fa0['budget_minutes']} minutes, PSM alone): pixel AP {p1(fa0['metrics']['pixel_ap'])} "
        f"and {p1(fa1['metrics']['pixel_ap'])} against {p1(pa0['metrics']['pixel_ap'])} and "
        f"{p1(pa1['metrics']['pixel_ap'])}, AUPRO {p1(fa0['metrics']['aupro'])} and "
        f"{p1(fa1['metrics']['aupro'])} against {p1(pa0['metrics']['aupro'])} and "
        f"{p1(pa1['metrics']['aupro'])}. The fast recipe is "
        f"{'ahead on both seeds' if ahead else 'not ahead on both seeds'}. The seed-0 fast run: "
        f"{fa0['caveat']}."
    )
    tgt = pm["targets"]["bottle"]
    prior_rows = sorted(
        (r for r in rows if r["dataset"] == "bottle" and r["scoring"] == "late prior"), key=minutes
    )

    def meets(r):
        return all(r["metrics"][k] >= v for k, v in tgt["metrics"].items())

    met = [r for r in prior_rows if meets(r) and r["budget_minutes"] <= tgt["budget_minutes"]]
    psm20 = r_("bottle-C-20m")
    psm30 = r_("bottle-C-30m")
    if met:
        says.append(
            f"- **Bottle target ({tgt['budget_minutes']} minutes: pixel AP >= "
            f"{tgt['metrics']['pixel_ap']}, AUPRO >= {tgt['metrics']['aupro']}, image AUROC "
            f"{tgt['metrics']['image_auroc']}): met by the default recipe, and in "
            f"{met[0]['budget_minutes']} minutes already.** With the memory prior: "
            + " and ".join(
                f"{p1(r['metrics']['pixel_ap'])} / {p1(r['metrics']['aupro'])} / "
                f"{p1(r['metrics']['image_auroc'])} after {r['budget_minutes']} "
                f"minutes (seed {r['seed']})"
                for r in met
            )
            + f". The PSM alone reached {p1(psm20['metrics']['pixel_ap'])} / "
            f"{p1(psm20['metrics']['aupro'])} after {psm20['budget_minutes']} minutes "
            f"({psm20['session'].split(';')[0]}). Its {psm30['budget_minutes']}-minute run, "
            f"{p1(psm30['metrics']['pixel_ap'])} / {p1(psm30['metrics']['aupro'])}, "
            f"{psm30['caveat']}."
        )
    weld_prior = sorted(
        (r for r in rows if r["dataset"] == WELD and r["scoring"] == "late prior"), key=minutes
    )
    peer = pc[WELD]

    def beats(r):
        return (
            r["metrics"]["pixel_ap"] > peer["metrics"]["pixel_ap"]
            and r["metrics"]["aupro"] > peer["metrics"]["aupro"]
            and r["metrics"]["image_auroc"] >= peer["metrics"]["image_auroc"]
        )

    wt = pm["targets"][WELD]
    won = [r for r in weld_prior if beats(r) and r["budget_minutes"] <= wt["budget_minutes"]]
    rest = [r for r in weld_prior if r not in won]
    line = (
        f"- **Battery weld target (ahead of PatchCore on pixel AP and AUPRO, not behind on "
        f"image AUROC, within {wt['budget_minutes']} minutes): "
    )
    if won:
        w = won[0]
        line += (
            f"met at the {w['budget_minutes']}-minute budget, one seed**: "
            f"{p1(w['metrics']['pixel_ap'])} / {p1(w['metrics']['aupro'])} / "
            f"{p1(w['metrics']['image_auroc'])} against PatchCore's "
            f"{p1(peer['metrics']['pixel_ap'])} / {p1(peer['metrics']['aupro'])} / "
            f"{p1(peer['metrics']['image_auroc'])}."
        )
    else:
        line += "not met.**"
    if rest:
        line += (
            " Longer budgets give AUPRO "
            + ", ".join(p1(r["metrics"]["aupro"]) for r in rest)
            + " and image AUROC "
            + ", ".join(p1(r["metrics"]["image_auroc"]) for r in rest)
            + " after "
            + ", ".join(str(r["budget_minutes"]) for r in rest)
            + " minutes, but pixel AP "
            + ", ".join(p1(r["metrics"]["pixel_ap"]) for r in rest)
            + f" (PatchCore {p1(peer['metrics']['pixel_ap'])})."
        )
    psm = {}
    for r in rows:
        if r["dataset"] == WELD and r["scoring"] == "PSM alone":
            psm.setdefault(r["budget_minutes"], []).append(p1(r["metrics"]["pixel_ap"]))
    line += (
        " Longer training does not help the PSM on this surface: "
        + ", ".join(str(b) for b in sorted(psm))
        + " minutes give pixel AP "
        + ", ".join(" / ".join(v) for _, v in sorted(psm.items()))
        + " (two runs at 10 minutes). The gain comes from the memory."
    )
    says.append(line)
    says.append(
        f"- The prior's fit ({d.f('prior_costs', 'fit_weld_s')} s on weld, "
        f"{d.f('prior_costs', 'fit_bottle_min_low')} to "
        f"{d.f('prior_costs', 'fit_bottle_min_high')} minutes on bottle on a busy "
        f"machine) came before the budget and was not counted in it in these runs; since "
        f"2026-12-04 the budget counts it (see the memory fit below)."
    )
    p.add("\n".join(says) + "\n")
    p.add(caveats(rows, label=lambda r: f"{r['dataset']}, {r['label']}, seed {r['seed']}"))
    p.add(reproduce(rows, label=lambda r: r["run"]))

    # PatchCore
    p.add("## PatchCore, measured here\n")
    prow = [r for r in d.docs["patchcore"]["rows"] if not r.get("quoted")]
    p.add(
        f"`{d.docs['patchcore']['command']}` runs anomalib's PatchCore (coreset "
        f"{prow[0]['settings']['coreset_sampling_ratio'] * 100:.0f} %, "
        f"{prow[0]['settings']['num_neighbors']} neighbours, layers "
        f"{' + '.join(prow[0]['settings']['layers'])}, anomalib "
        f"{prow[0]['settings']['anomalib']}) with the same Lite0 weights and scores it with "
        f"`adps.metrics` at {prow[0]['settings']['image_size']} px; "
        f"`benchmarks/peers/README.md` describes how.\n"
    )
    keys = M7
    p.add(
        table(
            ["dataset", "train / test images"]
            + [NAMES[k] for k in keys]
            + ["fit s", "embedding s", "coreset s", "memory bank", "inference s"],
            [
                [r["dataset"], f"{r['settings']['train_images']} / {r['settings']['test_images']}"]
                + [p1(r["metrics"][k]) for k in keys]
                + [
                    r["fit_seconds"],
                    r["embed_seconds"],
                    r["coreset_seconds"],
                    " x ".join(f"{v:,}" for v in r["memory_bank"]),
                    r["infer_seconds"],
                ]
                for r in prow
            ],
        )
    )
    p.add(caveats(prow, label=lambda r: r["dataset"]))
    p.add(reproduce(prow, label=lambda r: r["dataset"]))

    if "decision" in d.docs:
        decision_section(d, p)
    if "teacher" in d.docs:
        teacher_section(d, p)

    # image score
    p.add("## Image score\n")
    isd = d.docs["image_score"]
    rows = isd["rows"]
    p.add(f"The same maps scored several ways (`{isd['command']}`; image AUROC / AP):\n")
    ways = (
        ("max", "max of the smoothed map (the paper, default)"),
        ("top_1pct_mean", "top 1% mean"),
        ("top_5pct_mean", "top 5% mean"),
    )
    p.add(
        table(
            ["model"] + [w[1] for w in ways],
            [
                [r["label"]]
                + [
                    f"{p1(r['metrics'][k]['image_auroc'])} / {p1(r['metrics'][k]['image_ap'])}"
                    for k, _ in ways
                ]
                for r in rows
            ],
        )
    )
    gains = [
        r["metrics"]["top_5pct_mean"]["image_auroc"] - r["metrics"]["max"]["image_auroc"]
        for r in rows
        if r["dataset"] == WELD
    ]
    bottle = d.row("image_score", dataset="bottle")
    cost = (
        bottle["metrics"]["max"]["image_auroc"] - bottle["metrics"]["top_5pct_mean"]["image_auroc"]
    )
    p.add(
        f"On the weld surface, where a few hot pixels on good parts outrank real defects, "
        f"the mean of the top 5% of the smoothed map ranks images {p1(min(gains))} to "
        f"{p1(max(gains))} AUROC points better; on bottle, whose image metrics saturate, it "
        f"costs {p1(cost)}. The default stays the paper's max; choose `--image-score top_mean "
        f"--score-top-share 0.05` for textured surfaces. The choice is stored in the "
        f"checkpoint and inside every export, so all backends decide the same way.\n"
    )
    p.add(caveats(rows))
    p.add(reproduce(rows))

    # overlap
    w = d.row("weld_split", run="published_split")
    p.add("## Weld test split overlap\n")
    p.add(
        f"The published battery-weld split holds {w['value']} of its {w['train_images']} "
        f"training images among its {w['test_good']} normal test images, byte-identical. "
        f"`adps test` refuses such a split since {w['refused_since']} (commit "
        f"`{w['refused_commit']}`); `{w['disjoint_split']}` is the disjoint split that "
        f"`benchmarks/recipes/run.sh` now uses. Every battery-weld row on these pages "
        f"{'other than the comparison below ' if 'overlap_weld' in d.docs else ''}was "
        f"measured before that, on the published split.\n"
    )
    if "overlap_weld" in d.docs:
        p.add(generic(d.docs["overlap_weld"]))
    else:
        p.add(
            "The comparison of the same weld model on both splits (`overlap_weld.json`) is "
            "not in `benchmarks/results/` yet.\n"
        )
    if "fingerprint" in d.docs:
        p.uses("fingerprint")
        p.add("## What the overlap check costs\n")
        p.add(generic(d.docs["fingerprint"]))
    if "memory_fit" in d.docs:
        p.uses("memory_fit")
        p.add("## The memory's fit\n")
        p.add(generic(d.docs["memory_fit"]))
        for name in ("memory_fit_accuracy", "memory_fit_budget"):
            if name in d.docs:
                p.uses(name)
                p.add(generic(d.docs[name]))
    return p


DECISION_KEYS = ("image_auroc", "image_ap", "image_f1max", "pixel_ap", "aupro")


def decision_section(d: Data, p: Page) -> None:
    """The decision study: per set, PatchCore at adps's bank size (and at its default share)
    beside adps's maps scored four ways, mean over seeds with each seed's figure."""
    p.uses("decision", "patchcore_bank", "patchcore")
    doc = d.docs["decision"]
    p.add("## The decision\n")
    p.add(doc["note"] + "\n")
    peers = list(d.docs["patchcore_bank"]["rows"])
    peers += [r for r in d.docs["patchcore"]["rows"] if not r.get("quoted")]
    cells = []
    for dataset in dict.fromkeys(r["dataset"] for r in doc["rows"]):
        groups: dict[str, list[dict]] = {}
        for r in peers:
            if r["dataset"] == dataset.split(" (")[0] or r["dataset"] == dataset:
                if r in d.docs["patchcore"]["rows"] and dataset == WELD:
                    continue  # measured on the published weld split: not comparable
                label = "PatchCore, " + (
                    "bank as adps's memory"
                    if r["settings"].get("bank_size_requested")
                    else f"coreset {r['settings']['coreset_sampling_ratio'] * 100:.0f} %"
                )
                groups.setdefault(label, []).append(r)
        for label in dict.fromkeys(r["label"] for r in doc["rows"]):
            groups[label] = [
                r for r in doc["rows"] if r["dataset"] == dataset and r["label"] == label
            ]
        for label, runs in groups.items():
            bank = runs[0].get("bank_size") or runs[0]["memory_bank"][0]
            row = [dataset, label, f"{bank:,}", str(len(runs))]
            for k in DECISION_KEYS:
                values = [r["metrics"].get(k) for r in runs]
                if any(v is None for v in values):
                    row.append("")
                    continue
                mean = r1(sum(values) / len(values))
                row.append(
                    mean if len(values) == 1 else f"{mean} ({' / '.join(p1(v) for v in values)})"
                )
            cells.append(row)
    p.add(
        "Mean over the runs (adps: one seed each), each run's figure in brackets; the "
        "image-level screw set has no masks. PatchCore is anomalib's "
        "([below](#patchcore-measured-here)), on the same images and Lite0 weights, with 9 "
        "neighbours; its runs differ although seeded alike, as its coreset's random projection "
        "draws from numpy's unseeded generator.\n"
    )
    p.add(
        table(["dataset", "model", "bank rows", "runs"] + [NAMES[k] for k in DECISION_KEYS], cells)
    )
    if doc.get("conclusion"):
        p.add(doc["conclusion"] + "\n")
    p.add(caveats(doc["rows"]))
    p.add(reproduce(doc["rows"][:1], label=lambda r: "every row"))


def teacher_section(d: Data, p: Page) -> None:
    """Lite0 against Lite2 as teacher: rates, the memory alone, the whole model."""
    p.uses("teacher")
    doc = d.docs["teacher"]
    p.add("## The teacher: Lite0 or Lite2\n")
    p.add(
        "The paper's teacher is a WideResNet-50; adps's is EfficientNet-Lite0, whose weights "
        "install offline, as do Lite2's. Each teacher with the default recipe's geometry "
        "(256 px, k = 8, batch 16, memory of 4096 rows): its forward and a whole training step "
        "(images/s, bottle), the memory alone on its features, and the decision study's model "
        "(280 steps of 16 images, seed 0, the default decision) trained with it as teacher and "
        "student. Image AUROC unless named.\n"
    )
    sets = ("screw", "battery weld")
    header = ["teacher", "teacher images/s", "training images/s"]
    for s_ in sets:
        header += [f"{s_}: memory alone", f"{s_}: model", f"{s_}: model F1-max"]
    header += [
        "battery weld: model pixel AP",
        "battery weld: model AUPRO",
        "inference images/s, screw / weld",
    ]
    body = []
    for r in doc["rows"]:
        v = r["values"]

        def cell(key: str) -> str:
            return num(v[key]) if key in v else ""

        row = [r["run"], cell("teacher_images_per_s"), cell("train_images_per_s")]
        for s_ in sets:
            row += [
                cell(f"{s_} memory_alone_image_auroc"),
                cell(f"{s_} model_image_auroc"),
                cell(f"{s_} model_image_f1max"),
            ]
        row += [
            cell("battery weld model_pixel_ap"),
            cell("battery weld model_aupro"),
            " / ".join(cell(f"{s_} model_inference_images_per_s") for s_ in sets),
        ]
        body.append(row)
    p.add(table(header, body))
    p.add(f"Machine: {doc['machine']}; {doc['source']}.\n")
    if doc.get("conclusion"):
        p.add(doc["conclusion"] + "\n")
    p.add(reproduce(doc["rows"][:1], label=lambda r: "every row"))


def generic(doc: dict) -> str:
    """Any result file: its title, notes and rows (scalar fields and flattened metrics)."""
    out = []
    if doc.get("title"):
        out.append(f"**{doc['title']}**\n")
    out.extend(
        doc[key] + "\n"
        for key in ("description", "note", "notes", "conclusion")
        if isinstance(doc.get(key), str)
    )
    rows = doc.get("rows", [])

    def flat(r: dict) -> dict:
        cells = {}
        for k, v in r.items():
            if k in ("command", "source", "machine", "settings"):
                continue
            if isinstance(v, dict):
                for k2, v2 in v.items():
                    if isinstance(v2, dict):
                        for k3, v3 in v2.items():
                            cells[f"{k2} {k3}"] = v3
                    else:
                        cells[k2 if k == "metrics" else f"{k} {k2}"] = v2
            elif isinstance(v, (str, int, float)) or v is None:
                cells[k] = v
            else:
                cells[k] = json.dumps(v)
        return cells

    flats = [flat(r) for r in rows]
    cols: list[str] = []
    for f in flats:
        cols += [k for k in f if k not in cols]
    if rows:
        out.append(
            table(
                [c.replace("_", " ") for c in cols],
                [[num(f.get(c)) if f.get(c) is not None else "" for c in cols] for f in flats],
            )
        )
        out.append(f"Machine: {doc.get('machine', rows[0].get('machine', 'not recorded'))}.\n")
        out.append(reproduce(rows, label=lambda r: str(r.get("run", ""))))
    return "\n".join(out)


def page_prior(d: Data) -> Page:
    p = Page("memory-prior", "The memory prior and its fusion")
    p.uses(
        "memory_prior",
        "patchcore",
        "prior_sweeps",
        "fusion_grid",
        "fusion_fit",
        "fusion_fit_extra",
        "prior_costs",
        "cpu_speed",
    )
    mp = d.docs["memory_prior"]
    rows = mp["rows"]
    pc = {r["dataset"]: r for r in d.docs["patchcore"]["rows"] if not r.get("quoted")}
    pc_keys = ("image_auroc", "image_f1max", "pixel_auroc", "pixel_ap", "aupro")
    p.add(
        f"The memory (`--prior memory`, on in `--recipe fast`) is PatchCore's idea on the "
        f"frozen teacher: a coreset of the teacher's features of the normal training images, "
        f"and each position's distance to its nearest row is a prior map; late fusion "
        f"(the default) multiplies it by a boosted PSM probability. Its fit took "
        f"{d.f('prior_costs', 'fit_weld_s')} s for weld's features on an idle machine "
        f"({d.f('prior_costs', 'fit_bottle_min_low')} to "
        f"{d.f('prior_costs', 'fit_bottle_min_high')} minutes for bottle's on a busy one), "
        f"and it adds {d.f('prior_costs', 'checkpoint_mib')} MiB to the checkpoint.\n"
    )
    p.add("## The same maps scored each way\n")
    p.add(
        f'`{mp["command"]}`; "prior alone" is the memory by itself, PatchCore with one '
        f"neighbour. PatchCore rows: [measured here](accuracy.md#patchcore-measured-here).\n"
    )
    body, last = [], None
    order = [
        ("bottle", "bottle-C-30m"),
        ("bottle", "bottle-C-10m-s1"),
        ("bottle", "pc"),
        (WELD, "weld-C-30m"),
        (WELD, "pc"),
        (WELD, "weld-E-10m-s1"),
        ("demo", "demo"),
    ]
    for ds, run in order:
        if run == "pc":
            body.append(
                [ds, "PatchCore (anomalib, measured)"] + [p1(pc[ds]["metrics"][k]) for k in pc_keys]
            )
            last = None
            continue
        for r in d.rows("memory_prior", dataset=ds, run=run):
            body.append(
                [r["model"] if r["model"] != last else "", r["label"]]
                + [p1(r["metrics"][k]) for k in pc_keys]
            )
            last = r["model"]
    p.add(table(["dataset, model", "map"] + [NAMES[k] for k in pc_keys], body))

    def m(run, map_):
        return d.row("memory_prior", run=run, map=map_)["metrics"]

    b30p, b30l = m("bottle-C-30m", "psm"), m("bottle-C-30m", "late")
    b30r = m("bottle-C-30m", "prior")
    b10p, b10l = m("bottle-C-10m-s1", "psm"), m("bottle-C-10m-s1", "late")
    w30p, w30l, w30r = m("weld-C-30m", "psm"), m("weld-C-30m", "late"), m("weld-C-30m", "prior")
    dp, dl = m("demo", "psm"), m("demo", "late")
    early = m("weld-E-10m-s1", "early")
    wpc, bpc = pc[WELD]["metrics"], pc["bottle"]["metrics"]
    w5 = d.row("accuracy_per_minute", run="weld-C-5m + prior")["metrics"]
    diff_w = max(abs(w30r[k] - wpc[k]) for k in pc_keys)
    diff_b = max(abs(b30r[k] - bpc[k]) for k in ("pixel_auroc", "pixel_ap", "aupro"))
    ahead_w = [k for k in ("image_auroc", "pixel_auroc", "aupro") if w30l[k] > wpc[k]]
    maps = ("pixel_auroc", "pixel_ap", "aupro")
    says = ["What this says:", ""]
    says.append(
        f"- On both real surfaces the fused map is ahead of the PSM alone: bottle pixel AP "
        f"{d1(b30l['pixel_ap'] - b30p['pixel_ap'])} and AUPRO {d1(b30l['aupro'] - b30p['aupro'])} "
        f"after 30 minutes ({d1(b10l['pixel_ap'] - b10p['pixel_ap'])} / "
        f"{d1(b10l['aupro'] - b10p['aupro'])} after 10); on weld, where synthetic defects "
        f"taught the PSM little, pixel AP {p1(w30p['pixel_ap'])} -> {p1(w30l['pixel_ap'])} and "
        f"AUPRO {p1(w30p['aupro'])} -> {p1(w30l['aupro'])}. Against PatchCore on weld, the "
        f"30-minute model is ahead on "
        + ", ".join(f"{NAMES[k]} ({p1(w30l[k])} vs {p1(wpc[k])})" for k in ahead_w)
        + f", and {p1(wpc['pixel_ap'] - w30l['pixel_ap'])} points behind on pixel AP "
        f"({p1(w30l['pixel_ap'])} vs {p1(wpc['pixel_ap'])}). The 5-minute model "
        f"([accuracy per minute](accuracy.md#accuracy-per-minute)) has "
        f"{p1(w5['image_auroc'])} / {p1(w5['pixel_auroc'])} / {p1(w5['aupro'])} / "
        f"{p1(w5['pixel_ap'])} (image AUROC / pixel AUROC / AUPRO / pixel AP). On bottle the "
        f"fused map's pixel AUROC / AP / AUPRO are "
        + " / ".join(p1(b30l[k]) for k in maps)
        + " against PatchCore's "
        + " / ".join(p1(bpc[k]) for k in maps)
        + "."
    )
    says.append(
        f"- The prior alone matches anomalib's PatchCore within {p1(diff_w)} points on every "
        f"metric on weld, and within {p1(diff_b)} on bottle's map metrics ("
        + " / ".join(p1(b30r[k]) for k in maps)
        + ")."
    )
    says.append(
        f"- On the procedural demo surface, where the PSM is already near perfect, the prior "
        f"costs a little with the default fusion: pixel AP {d1(dl['pixel_ap'] - dp['pixel_ap'])}, "
        f"AUPRO {d1(dl['aupro'] - dp['aupro'])}. Fitting the fusion to a few labelled defects "
        f"(below) removes the cost; without labelled defects, `--prior none` is the choice for "
        f"such parts."
    )
    says.append(
        f"- Early fusion lost clearly on weld (pixel AP {p1(early['pixel_ap'])}, AUPRO "
        f"{p1(early['aupro'])} after 10 minutes, about the PSM alone): the PSM learns to trust "
        f"the prior on synthetic defects and not on real ones. It stays available as "
        f"`--prior-fusion early`."
    )
    f = lambda k: d.f("prior_sweeps", k)  # noqa: E731
    says.append(
        f"- The boost a = 2 is a compromise: boost 1 / 2 / 4 give weld pixel AP "
        f"{f('boost1_weld_pixel_ap')} / {f('boost2_weld_pixel_ap')} / {f('boost4_weld_pixel_ap')} "
        f"and bottle {f('boost1_bottle_pixel_ap')} / {f('boost2_bottle_pixel_ap')} / "
        f"{f('boost4_bottle_pixel_ap')}. Memory sizes 1024, 4096 and 16384 differ by under "
        f"{f('memory_sizes_weld_max_diff')} point on weld (1024 and 4096 on bottle, within "
        f"{f('memory_sizes_bottle_max_diff')}); 4096 is the default, 1024 fits about "
        f"{f('memory_1024_fit_speedup')} times faster."
    )
    p.add("\n".join(says) + "\n")
    p.add(reproduce(rows, label=lambda r: f"{r['run']} {r['map']}"))
    p.add(reproduce(d.docs["prior_sweeps"]["rows"]).replace("Reproduce:", "Reproduce the sweeps:"))

    # grid
    g = d.docs["fusion_grid"]
    p.add("## Exponent and boost\n")
    p.add(
        f"Flattening the prior before the product (g < 1) trades one surface for another "
        f"(pixel AP / AUPRO on the same maps; {g['models']}; `{g['command']}`):\n"
    )
    labels = []
    for r in g["rows"]:
        if r["label"] not in labels:
            labels.append(r["label"])
    dsets = ("demo", WELD, "bottle")
    body = []
    for label in labels:
        cells = []
        for ds in dsets:
            r = d.row("fusion_grid", label=label, dataset=ds)
            cells.append(f"{p1(r['metrics']['pixel_ap'])} / {p1(r['metrics']['aupro'])}")
        body.append([label, *cells])
    body.append(
        ["PatchCore (anomalib)"]
        + [
            f"{p1(pc[ds]['metrics']['pixel_ap'])} / {p1(pc[ds]['metrics']['aupro'])}"
            if ds == WELD
            else ""
            for ds in dsets
        ]
    )
    p.add(table(["g, a", *dsets], body))
    demo_best = max(
        (r for r in g["rows"] if r["dataset"] == "demo"), key=lambda r: r["metrics"]["aupro"]
    )
    p.add(
        f"The demo's best AUPRO needs g = {demo_best['settings']['prior_exponent_g']}; weld "
        f"then falls behind PatchCore (pixel AUROC {f('grid_weld_g025_pixel_auroc')} against "
        f"{p1(wpc['pixel_auroc'])}). Normal images cannot tell the two surfaces apart (the "
        f"PSM is as quiet on weld's normal parts as on the demo's; it is on weld's real "
        f"defects that it misses), but labelled defects can. Other late fusions, compared on "
        f"the same maps (`benchmarks/prior_fusion/`), were behind the product on weld: a sum "
        f"of z-scored maps gave pixel AP {f('zsum_equal_pixel_ap')} at equal weights and "
        f"{f('zsum_3to1_pixel_ap')} at 3:1 for the prior, with pixel AUROC "
        f"{f('zsum_equal_pixel_auroc')} / {f('zsum_3to1_pixel_auroc')}.\n"
    )

    # fitted
    ff = d.docs["fusion_fit"]
    x = lambda k: d.f("fusion_fit_extra", k)  # noqa: E731
    p.add("## Fitting the fusion to labelled defects\n")
    s = ff["rows"][0]["settings"]
    p.add(
        f"`adps calibrate --fit-fusion` scores each g in {s['grid_g']} x a in {s['grid_a']} "
        f"by the mean of pixel AP and AUPRO on labelled defects and stores the best pair. On "
        f"weld's 10 images it took {x('weld_fit_seconds')} s in all. Below, the fit is made "
        f"on {s['defects_fitted']} random defective images and every map is scored on the "
        f"rest of the test set, mean over {s['splits']} splits (`{ff['command']}`; image "
        f"AUROC / F1-max / pixel AUROC / pixel AP / AUPRO):\n"
    )
    keys = ("image_auroc", "image_f1max", "pixel_auroc", "pixel_ap", "aupro")

    def cell(mm):
        return " / ".join(pct(mm[k]) for k in keys)

    def chosen(ch):
        return ", ".join(
            f"({num(ga[0])}, {num(ga[1])})" + (f" x{n}" if n > 1 else "") for ga, n in ch
        )

    p.add(
        table(
            [
                "dataset",
                "PSM alone",
                "prior alone (~PatchCore)",
                "default fusion (1, 2)",
                "fitted fusion",
                "chosen (g, a)",
            ],
            [
                [
                    r["dataset"],
                    cell(r["metrics"]["psm"]),
                    cell(r["metrics"]["prior"]),
                    cell(r["metrics"]["default"]),
                    cell(r["metrics"]["fitted"]),
                    chosen(r["chosen"]),
                ]
                for r in ff["rows"]
            ],
        )
    )
    chosen = d.row("fusion_fit_extra", run="highres_pixel_ap_fitted")["chosen"]
    p.add(
        f"- Across splits the fitted fusion's figures move by at most {x('fitted_max_std')} "
        f"(standard deviation), pixel AP by up to {x('fitted_pixel_ap_max_std')}, no more "
        f"than the PSM alone's (up to {x('psm_pixel_ap_max_std')}: the splits differ).\n"
        f"- Five defects: demo pixel AP {x('demo_5_defects_pixel_ap')} against "
        f"{x('demo_5_defects_pixel_ap_reference')}, AUPRO {x('demo_5_defects_aupro')} against "
        f"{x('demo_5_defects_aupro_reference')}, but {x('demo_5_defects_splits_kept_g1')} demo "
        f"split of {s['splits']} kept g = 1; ten are safer.\n"
        f"- Keep the defects you fit on out of any evaluation, as above.\n"
        f"- High resolution (`benchmarks/highres/`, tiled): fitted on 4 pit images it chose "
        f"({', '.join(num(v) for v in chosen)}), "
        f"and on the other images pixel AP rose from {x('highres_pixel_ap_default')} to "
        f"{x('highres_pixel_ap_fitted')}. Fit and calibration on all 8 pit images took "
        f"{x('highres_fit_all8_minutes')} minutes and {x('highres_fit_all8_gib')} GiB beside "
        f"another CPU-heavy job.\n"
        f"- An exponent below 1 adds no measurable time (batch-1 OpenVINO float32 on weld, "
        f"g = 1 against g = 0.25, three calls: "
        + ", ".join(
            f"{x(f'latency_g1_call{i}_ms')} / {x(f'latency_g025_call{i}_ms')}" for i in (1, 2, 3)
        )
        + f" ms). Its maps equal torch's within {x('g025_map_max_diff_vs_torch')}.\n"
    )
    p.add(reproduce(ff["rows"], label=lambda r: r["dataset"]))
    p.add(
        reproduce(d.docs["fusion_fit_extra"]["rows"]).replace("Reproduce:", "Reproduce the notes:")
    )

    # costs
    c = lambda k: d.f("prior_costs", k)  # noqa: E731
    ov = d.row("cpu_speed", run="openvino-weld")["values"]
    ovp = d.row("cpu_speed", run="openvino-weld-prior")["values"]
    nn = d.row("cpu_speed", run="nn-search")["values"]
    p.add("## What the prior costs\n")
    cost = d.fact("prior_costs", "torch_prior_ms") - d.fact("prior_costs", "torch_psm_ms")
    p.add(
        f"About {cost:.0f} ms per image at batch 1 in torch on CPU ({c('torch_psm_ms')} ms "
        f"for the PSM alone, {c('torch_prior_ms')} ms with the prior at 256 px; demo at 128 "
        f"px: {c('torch_demo_psm_ms')} / {c('torch_demo_prior_ms')} ms; idle machine), none "
        f"measurable in OpenVINO (without / with: {num(ov['openvino_f32_ms'])} / "
        f"{num(ovp['openvino_f32_ms'])} ms in float32, {num(ov['openvino_bf16_ms'])} / "
        f"{num(ovp['openvino_bf16_ms'])} ms in bf16; the search is about "
        f"{num(nn['openvino_search_ms'])} ms of it), and {c('checkpoint_mib')} MiB in the "
        f"checkpoint. Peak resident memory of `adps predict` on the weld test images: torch "
        f"{c('rss_torch_mib')} MiB without the prior, {c('rss_torch_prior_mib')} MiB with it; "
        f"OpenVINO, conversion cached, {c('rss_openvino_mib')} / "
        f"{c('rss_openvino_prior_mib')} MiB ({c('rss_openvino_first_mib')} / "
        f"{c('rss_openvino_first_prior_mib')} MiB on the first call, which converts). faiss "
        f"searches the bank {num(nn['speedup_low'])}-{num(nn['speedup_high'])}x faster than "
        f"torch's eager search ([inference](inference.md)), but on CPU the search runs "
        f"inside the OpenVINO graph, where faiss cannot go, so it is not used.\n"
    )
    p.add(caveats(d.docs["prior_costs"]["rows"]))
    p.add(reproduce(d.docs["prior_costs"]["rows"]))
    return p


def page_inference(d: Data) -> Page:
    p = Page("inference", "Inference latency and the OpenVINO runtime")
    p.uses("cpu_speed", "openvino_runtime")
    rows = [r for r in d.docs["cpu_speed"]["rows"] if r["topic"] == "inference"]
    p.add("## Latency per runtime\n")
    p.add(f"{d.docs['cpu_speed']['title']}:\n")
    p.add(speed_table(rows))
    p.add(
        "On CPU, torch inference is fastest per image at batch 1, so `predict`, `test` and "
        "`adps.load` use batch 1 on CPU unless told otherwise.\n"
    )
    p.add(caveats(rows))
    o = lambda k: d.f("openvino_runtime", k)  # noqa: E731
    ovp = d.row("cpu_speed", run="openvino-weld-prior")["values"]
    ov = d.row("cpu_speed", run="openvino-weld")["values"]
    p.add("## The OpenVINO runtime\n")
    p.add(
        f"With `openvino` installed, `predict`, `serve` and `adps.load` run a checkpoint on "
        f"CPU with OpenVINO. The first call converts it ({o('convert_seconds')} s for the "
        f"weld model at 256 px); later calls load the conversion in "
        f"{o('load_cached_seconds')} s (torch: {o('load_torch_seconds')} s). It runs in "
        f"float32 and gives torch's maps within {o('f32_map_tolerance')} (measured: within "
        f"{num(ovp['f32_map_max_diff'])} on weld), so a threshold calibrated in training "
        f"keeps its meaning: the default recipe's model answers in "
        f"{num(ovp['openvino_f32_ms'])} ms instead of torch's {num(ovp['torch_fp32_ms'])}.\n"
    )
    p.add(
        f"`--precision auto` runs bf16 where the CPU has it natively: "
        f"{num(ovp['openvino_bf16_ms'])} ms for the default recipe's model, "
        f"{ovp['torch_fp32_ms'] / ovp['openvino_bf16_ms']:.1f}x torch. bf16 moves scores: up "
        f"to {num(ovp['bf16_score_max_diff'])} on weld ({ovp['decisions_changed']} and "
        f"{ov['decisions_changed']} of {ov['images']} decisions changed at the F1-optimal "
        f"threshold), up to {o('bf16_demo_score_max_diff')} on the demo model, mostly upwards "
        f"(a good part's margin to its threshold fell from {o('bf16_demo_margin_f32')} to "
        f"{o('bf16_demo_margin_bf16')}). So it is not the default: calibrate with the same "
        f"precision you predict with.\n"
    )
    slowdown = d.fact("openvino_runtime", "dynamic_batch_ms") / d.fact(
        "openvino_runtime", "fixed_batch_ms"
    )
    p.add(
        f"The graph is compiled for a fixed batch size, once per size used (under "
        f"{o('compile_seconds_max')} s each): with the batch left dynamic, OpenVINO ran "
        f"everything after the memory prior's search about "
        f"{slowdown:.0f}x "
        f"slower ({o('dynamic_batch_ms')} ms instead of {o('fixed_batch_ms')}).\n"
    )
    p.add(reproduce(rows, label=lambda r: r["run"]))
    p.add(
        reproduce(d.docs["openvino_runtime"]["rows"]).replace("Reproduce:", "Reproduce the notes:")
    )
    return p


def page_serving(d: Data, plots: dict) -> Page:
    p = Page("serving", "Serving: `adps serve` under load")
    p.uses("serve")
    sv = d.docs["serve"]
    rows = sv["rows"]
    s = rows[0]["settings"]
    p.add(
        f"{s['clients']} concurrent clients on the same machine for {s['seconds']} s each, "
        f"{s['size']} px, k = {s['k']} (`{sv['command']}`). The offline figure is "
        f"{sv['offline']}.\n"
    )
    body, last = [], None
    for r in rows:
        mm = r["metrics"]
        label = ""
        if r["runtime"] != last:
            label = (
                f"{r['runtime']} ({r['runtime_note_before']}offline best "
                f"{num(mm['offline_best_images_per_s'])} images/s at batch "
                f"{mm['offline_best_batch']}{r['runtime_note_after']})"
            )
        last = r["runtime"]
        body.append(
            [
                label,
                r["server"],
                num(mm["requests_per_s"]),
                f"{mm['of_offline_best_pct']}%",
                f"{mm['p50_ms']} / {mm['p95_ms']} / {mm['p99_ms']}",
                f"{mm['errors']} of {mm['requests']}",
            ]
        )
    p.add(
        table(
            [
                "runtime",
                "server",
                "requests/s",
                "of the offline best",
                "p50 / p95 / p99 ms",
                "errors",
            ],
            body,
        )
    )
    for r in rows:  # rows measured elsewhere or later than the file's header says
        if r.get("machine", sv["machine"]) != sv["machine"]:
            p.add(
                f"Row *{r['run']}*: {r['machine']}, not the machine above; "
                f"{r['source']}; {r['caveat']}.\n"
            )
    if plots.get("serve"):
        p.add("![requests per second by runtime and --max-batch](serve.png)\n")
    p.add(
        f"The clients used {num(sv['client_cores'])} cores. Latency is queueing: "
        f"{s['clients']} clients share one model.\n"
    )
    p.add(f"Note on the command: {sv['command_note']}.\n")
    p.add(reproduce(rows, label=lambda r: r["run"]))
    return p


def calibration_spread(st: dict) -> str:
    """How far one calibration's false-alarm rate can miss: adps.engine.calibrate sets the
    threshold between the j-th and the (j + 1)-th highest of n normal scores (j = floor(target
    x (n + 1)) - 1; before 2026-12-06, the empirical quantile, floor(target x n)), and the
    share of normal parts over the j-th highest is Beta(j, n + 1 - j)."""
    from scipy import stats

    n, target = st["calibration_images"], st["target_false_alarm_rate"]
    if st.get("threshold_rule", "empirical quantile") == "conformal":
        j = int(target * (n + 1) + 1e-9) - 1
    else:
        j = int(target * n + 1e-9)
    high = stats.beta(j + 1, n - j).sf(2 * target)
    low = stats.beta(j, n + 1 - j).sf(2 * target) if j else 0.0
    nth = {1: "highest", 2: "second highest", 3: "third highest"}
    where = (
        f"between the {nth.get(j, f'{j}th highest')} and the "
        f"{nth.get(j + 1, f'{j + 1}th highest')} normal score"
        if j
        else "above the highest normal score"
    )
    how_often = f"{pct(100 * low)} to {pct(100 * high)} %" if j else f"at most {pct(100 * high)} %"
    return (
        f"With {n} calibration images the threshold lies {where}, so a calibration's "
        "false-alarm rate is itself a random draw: it exceeds "
        f"twice the target ({pct(200 * target)} %) in {how_often} of "
        f"calibrations, before the {st['evaluation_normal_images']} evaluation images' own "
        "sampling error; one run's rows are one such draw."
    )


def flipped_before(runs: int) -> str:
    """The drift watch's runs whose window of repeats flipped it before the change, if any:
    they are left out of the runs that measure the change."""
    return f" (the repeats of the window flipped {runs} more before the change)" if runs else ""


def by_source(rows: list[dict], sources: list[str], pooled: bool) -> str:
    """The update rows' false-alarm rates by where the normal images came from, memory-only
    updates against fine-tunes, as ranges over the numbers of new images."""

    def of_kind(kind: str) -> list[dict]:
        return [
            r
            for r in rows
            if r["stage"].startswith("update")
            and r["settings"].get("refresh_norms", True)  # as adps update does by default
            and (r["settings"]["fine_tune"] is None) == (kind == "memory only")
        ]

    def span(kind: str, source: str) -> str:
        rates = [
            100 * f / n
            for r in of_kind(kind)
            for f, n in [r["values"]["false_alarms_by_source"][source]]
        ]
        low, high = pct(min(rates)), pct(max(rates))
        return f"{low} %" if low == high else f"{low} to {high} %"

    parts = [
        f"{kind}, {', '.join(f'{span(kind, s)} of {s}' for s in sources)}"
        for kind in ("memory only", "fine-tuned")
        if of_kind(kind)
    ]
    where = (
        "the new images, the calibration images and these come from one shuffled pool of both"
        if pooled
        else "the new images and the calibration images are unseen train/good images; "
        "test/good is the published test split's normal parts"
    )
    return f"By source, the updates flag: {'; '.join(parts)} ({where}).\n"


REDEALT_NOTE = (
    "*Re-dealt*: the stage's calibration repeated on {deals} calibration sets dealt anew (the "
    "statistics of the decision refitted each time, as `adps calibrate` and `adps update` do), "
    "with false alarms counted on the other normal images: the mean false-alarm rate and "
    "recall over those deals, and how often one deal exceeds twice the target. One deal's row "
    "is a single draw of this; the mean is what the threshold rule promises to keep at or "
    "under the target. The sets are drawn from {pool}.\n"
)


def redealt_count(rows: list[dict]) -> int:
    return max(r["values"].get("redealt_calibrations", 0) for r in rows)


def redealt_pool(rows: list[dict]) -> str:
    """Where the re-dealt calibrations were drawn from: runs since 2026-12-07 give every stage
    the same images (both calibration sets), earlier ones each stage its own calibration set."""
    pools = {r["values"].get("redealt_pool") for r in rows if "redealt_recall" in r["values"]}
    if None not in pools:
        return (
            "one pool of "
            + "/".join(str(n) for n in sorted(pools))
            + " normal images that no stage learned from, the same images for every stage, "
            "before the change or after it: the base model's and the updates' calibration "
            "images and the evaluated normal images of their population. The stages then "
            "differ in the model and the lamp only; with a pool of its own, which parts a "
            "stage's calibration images held moved its recall by several points"
        )
    return (
        "the calibration images and the evaluated normal images of the same population, "
        "each stage its own calibration images"
    )


def redealt_cells(v: dict) -> str:
    if "redealt_false_alarm_rate" not in v:
        return ""
    return (
        f"{pct(100 * v['redealt_false_alarm_rate'])} %, "
        f"{pct(100 * v['redealt_over_twice_target'])} %, {pct(100 * v['redealt_recall'])} %"
    )


def redealt_mean(rates: list[float], recalls: list[float]) -> str:
    """The re-dealt false-alarm rates' mean (range) and mean recall over the deals, in %
    (empty for a stage that was not recalibrated)."""
    if not rates:
        return ""
    return (
        f"{pct(sum(rates) / len(rates))} % ({pct(min(rates))} to {pct(max(rates))}); "
        f"{pct(sum(recalls) / len(recalls))} %"
    )


def over_draws(rows: list[dict], sources: list[str], target: float) -> str:
    """The update stages over every deal of the images into roles (``--draw``; same base
    model, another calibration, new batch and evaluation set each): the false-alarm rate's
    mean and range, false alarms by source summed over the deals, and recall."""
    stages = [r["stage"] for r in rows if r.get("draw", 0) == 0 and r["stage"] != "drift watch"]
    body, within, within_expected = [], [], []
    redealt = all(
        "redealt_false_alarm_rate" in r["values"] for r in rows if r["stage"].startswith("update")
    )
    for stage in stages:
        mine = [r["values"] for r in rows if r["stage"] == stage]
        if len(mine) == 1:  # the fine-tunes ran in the first deal only
            continue
        far = [100 * v["false_alarm_rate"] for v in mine]
        recall = [100 * v["recall"] for v in mine]
        expected = [
            100 * v["redealt_false_alarm_rate"] for v in mine if "redealt_false_alarm_rate" in v
        ]
        expected_recall = [100 * v["redealt_recall"] for v in mine if "redealt_recall" in v]
        summed = {
            k: [sum(v["false_alarms_by_source"][k][i] for v in mine) for i in (0, 1)]
            for k in sources
        }
        body.append(
            [
                stage,
                str(len(mine)),
                f"{pct(sum(far) / len(far))} % ({pct(min(far))} to {pct(max(far))})",
                *(f"{summed[k][0]} of {summed[k][1]}" for k in sources),
                f"{pct(sum(recall) / len(recall))} % (lowest {pct(min(recall))})",
                *([redealt_mean(expected, expected_recall)] if redealt else []),
            ]
        )
        if stage.endswith("memory only"):
            within += [f <= 200 * target + 1e-9 for f in far]
            within_expected += [f <= 200 * target + 1e-9 for f in expected]
    text = table(
        [
            "stage",
            "deals",
            "false alarms, mean (range)",
            *(f"of them on {k}, summed" for k in sources),
            "defect recall, mean",
            *(
                ["re-dealt false alarms, mean over the deals (range); re-dealt recall"]
                if redealt
                else []
            ),
        ],
        body,
    )
    expected_text = (
        f" Re-dealt, their mean false-alarm rate kept within twice the target in "
        f"{sum(within_expected)} of {len(within_expected)}."
        if redealt
        else ""
    )
    return (
        "The same base model with the normal images dealt into their roles again "
        f"(`--draw 1` to `{max(r.get('draw', 0) for r in rows)}`, memory-only updates): "
        "another base calibration, new batch, update calibration and evaluation set each "
        f"time. Memory-only updates kept within twice the target in {sum(within)} of "
        f"{len(within)} updates (every deal, every number of new images).{expected_text}\n\n" + text
    )


def page_updating(d: Data) -> Page:
    p = Page("updating", "A drifting line: `adps update` and the drift watch")
    p.uses(*[n for n in ("update", "drift") if n in d.docs])
    if "update" in d.docs:
        rows = d.docs["update"]["rows"]
        s = rows[0]["settings"]
        p.add(
            f"The change: a re-aimed, dimmer lamp (gamma {s['drift']['gamma']}, "
            f"{pct(100 * s['drift']['brightness'])} % brightness) on every image, normal and "
            "defective. The base model is trained on part of the normal images and calibrated "
            "for a false-alarm rate on unseen ones; each update learns N unseen normal images "
            "after the change (`adps update`, memory only or with a fine-tune) and recalibrates "
            "on further unseen ones. False alarms are counted on normal images that no stage "
            "learned from or calibrated on; recall on the test defects, at each stage's "
            "threshold. Wall time and peak RSS are the update's own process (start-up "
            "included). Each set's first table is one deal of its normal images into these "
            "roles; where a second follows, the memory-only updates were repeated over further "
            "deals with the same base model, because one deal's false-alarm rate is one random "
            "draw. *test/good pooled*: the published test/good images join the unseen training "
            "images in one shuffled pool before the deal, so the new batch, the calibration "
            "images and the evaluated normal images come from one population, as on a line"
            + (
                "; without it the new batch and the calibration images are training images and "
                "the evaluated ones mostly test/good, a population that differs (before any "
                "change the base model already flags more of it).\n"
                if not all(r["settings"].get("pool_test_good") for r in rows)
                else ".\n"
            )
        )
        for dataset in dict.fromkeys(r["dataset"] for r in rows):
            every = [r for r in rows if r["dataset"] == dataset]
            mine = [r for r in every if r.get("draw", 0) == 0]  # the deal the table shows
            st = mine[0]["settings"]
            seen = " (drawn from its training images)" if st["new_images_seen_before_drift"] else ""
            p.add(f"### {dataset}\n")
            p.add(
                f"Base model on {st['base_images']} normal images; target false-alarm rate "
                f"{pct(100 * st['target_false_alarm_rate'])} % on {st['calibration_images']} "
                f"images; false alarms over {st['evaluation_normal_images']} normal images; "
                f"new images unseen by the base model{seen}. {calibration_spread(st)}\n"
            )
            body = []
            # runs since 2026-12-06 split the false alarms by where the normal image came from
            sources = list(
                dict.fromkeys(
                    k for r in mine for k in r["values"].get("false_alarms_by_source", {})
                )
            )
            redealt = any("redealt_false_alarm_rate" in r["values"] for r in mine)
            for r in mine:
                v = r["values"]
                if r["stage"] == "drift watch":
                    continue
                split = v.get("false_alarms_by_source", {})
                body.append(
                    [
                        r["stage"],
                        f"{pct(100 * v['false_alarm_rate'])} %",
                        *(f"{split[k][0]} of {split[k][1]}" if k in split else "" for k in sources),
                        f"{pct(100 * v['recall'])} %",
                        p1(100 * v["image_auroc"]),
                        num(round(v["update_process_seconds"], 1))
                        if "update_process_seconds" in v
                        else "",
                        num(round(v["update_peak_rss_mib"])) if "update_peak_rss_mib" in v else "",
                        *([redealt_cells(v)] if redealt else []),
                    ]
                )
            p.add(
                table(
                    [
                        "stage",
                        "false alarms",
                        *(f"of them on {k}" for k in sources),
                        "defect recall",
                        "image AUROC",
                        "update wall s",
                        "update peak RSS MiB",
                        *(
                            ["re-dealt: false alarms, over twice the target, recall"]
                            if redealt
                            else []
                        ),
                    ],
                    body,
                )
            )
            if redealt:
                p.add(REDEALT_NOTE.format(deals=num(redealt_count(mine)), pool=redealt_pool(mine)))
            for r in mine:
                if r["stage"].startswith("retrained"):
                    p.add(
                        "*Retrained*: the base recipe trained again from scratch, on the base "
                        "model's training images after the change, for the base model's time "
                        f"({r['values']['retrained_steps']} steps), and calibrated on the "
                        "updates' calibration images: what training again instead of an "
                        "update gives (one model, trained once, serves every deal). The "
                        "fine-tune learns from the new images and the base model's training "
                        "images (`--train-dir`)"
                        + (
                            "; one marked *new images only* from the new images alone "
                            "(`--fine-tune-new-only`)"
                            if any(q["stage"].endswith("new images only") for q in mine)
                            else ""
                        )
                        + (
                            "; one marked *lr* with that peak learning rate (`--fine-tune-lr`; "
                            "by default a quarter of the model's)"
                            if any(", lr " in q["stage"] for q in mine)
                            else ""
                        )
                        + ".\n"
                    )
            if any(r["settings"].get("refresh_norms") is False for r in mine):
                p.add(
                    "*BatchNorm statistics kept*: the memory-only update with `--keep-norms`, "
                    "which keeps every BatchNorm statistic of the base model, as `adps update` "
                    "was before it re-estimated the student's and the PSM's on the new images "
                    "and aligned the teacher's: "
                    "what those buy. The other update rows do both (the default) unless their "
                    "note says otherwise.\n"
                )
            if sources:
                p.add(by_source(mine, sources, st.get("pool_test_good", False)))
            if len(every) > len(mine):
                p.add(over_draws(every, sources, st["target_false_alarm_rate"]))
            for note in dict.fromkeys(r["note"] for r in mine if r.get("note")):
                p.add(f"Note on this run: {note}.\n")
            first = {
                round(r["values"]["update_peak_rss_mib_as_run"])
                for r in mine
                if "update_peak_rss_mib_as_run" in r["values"]
            }
            if first:
                p.add(
                    "Peak RSS: each update run again in a fresh process that read its own "
                    "high-water mark (VmHWM). The figure the run first recorded, "
                    f"{', '.join(num(x) for x in sorted(first))} MiB for every update, was the "
                    "benchmark script's own peak: getrusage's ru_maxrss, which Linux carries "
                    "across fork and exec into the child.\n"
                )
            w = next(r for r in mine if r["stage"] == "drift watch")["values"]
            p.add(
                f"Drift watch (window {w['window']}, alarm {w['alarm']}) on this model's real "
                f"normal scores: {w['false_flips']} false flips in {w['unshifted_streams']} "
                f"unshifted streams, each the {w['unshifted_stream_images']} normal images from "
                "before the change in its own order; after a full window of those (drawn with "
                f"replacement), scores after the change flipped it in {w['flipped_runs']} of "
                f"{w['runs'] - w.get('drifting_before_change', 0)} runs"
                + flipped_before(w.get("drifting_before_change", 0))
                + (
                    " (5,000 images each). "
                    if not w["flipped_runs"]
                    else f", after {w['images_to_flip_min']} images in every run. "
                    if w["images_to_flip_min"] == w["images_to_flip_max"]
                    else f", after {w['images_to_flip_min']} to {w['images_to_flip_max']} images "
                    f"(median {num(w['images_to_flip_median'])}). "
                )
                + "The shifted scores are drawn with replacement from a few dozen images, so a "
                "window holds repeats, which makes the test more eager than on a stream of new "
                "parts. "
                + (
                    f"The full window before the change was also the baseline (the first "
                    f"{w['baseline']} judged images); that test alone flipped in "
                    f"{w['baseline_false_flips']} of {w['baseline_streams']} unshifted streams "
                    f"of {num(w['baseline_stream_images'])} images drawn with replacement (the "
                    "window and the baseline from the same scores, so repeats do not make it "
                    "eager).\n"
                    if "baseline" in w
                    else "This watch had the calibration's two tests only (before the test "
                    "against the service's first images).\n"
                )
            )
            watches = [r["values"] for r in every if r["stage"] == "drift watch"]
            if len(watches) > 1 and all("baseline" in v for v in watches):
                flipped = [v for v in watches if v["flipped_runs"]]

                def total(key: str) -> int:
                    return sum(v.get(key, 0) for v in watches)

                low = min(v["images_to_flip_min"] for v in flipped)
                high = max(v["images_to_flip_max"] for v in flipped)
                p.add(
                    f"Over the {len(watches)} deals: {total('false_flips')} false flips in "
                    f"{total('unshifted_streams')} unshifted streams; the baseline's test "
                    f"alone, {total('baseline_false_flips')} in {total('baseline_streams')}; "
                    f"the change flipped it in {total('flipped_runs')} of "
                    f"{total('runs') - total('drifting_before_change')} runs, "
                    + (
                        f"after {low} images in every run"
                        if low == high
                        else f"after {low} to {high} images"
                    )
                    + flipped_before(total("drifting_before_change"))
                    + ".\n"
                )
        p.add(reproduce(rows, label=lambda r: r["run"].split(":")[0]))
    if "drift" in d.docs:
        rows = d.docs["drift"]["rows"]
        s = rows[0]["settings"]
        p.add("### The drift watch on simulated scores\n")
        p.add(
            f"Normal scores N(0, 1), a threshold calibrated on some of them, window "
            f"{s['window']}, alarm {s['alarm']}, seeds {rows[0]['seed']}; with the test against "
            "the service's first images (*baseline*: the first "
            f"{num(max(r['settings'].get('baseline', 0) for r in rows))} judged) and without "
            "it. Unshifted: 20 streams of 3,000 images and 20 of 200; shifted: each continues "
            "one of them (a full window or more), 1,000 images at most, and a seed whose "
            "unshifted stream flipped is left out.\n"
        )
        body = []
        for r in rows:
            v, st = r["values"], r["settings"]
            stream = r["run"].split(": ")[-1]
            first = [
                f"{st['calibration_images']} images, {pct(100 * st['target_far'])} %",
                num(st["baseline"]) if st.get("baseline") else "off",
                stream,
            ]
            if stream == "unshifted":
                flips = f"{v['false_flips']} false flip{'' if v['false_flips'] == 1 else 's'}"
                body.append([*first, f"{flips} of {v['runs']} runs", ""])
            else:
                body.append(
                    [
                        *first,
                        f"flipped in {v['flipped_runs']} of {v['runs']} runs",
                        f"{v['images_to_flip_min']} to {v['images_to_flip_max']} (median "
                        f"{num(v['images_to_flip_median'])})"
                        if v["flipped_runs"]
                        else "",
                    ]
                )
        p.add(
            table(["calibration", "baseline", "stream", "verdict", "images until it flips"], body)
        )
        p.add(reproduce(rows, label=lambda r: "every row"))
    return p


def page_tiling(d: Data) -> Page:
    p = Page("tiling", "High-resolution images and tiling")
    p.uses("highres", "tiling_20mp")
    hr = d.docs["highres"]
    rows = hr["rows"]
    t = rows[0]
    p.add(
        f"`{hr['command']}`: {t['dataset']}, {t['settings']['time_budget_minutes']} minutes "
        f"of training each, scored against the masks at full resolution "
        f"(`--eval-resolution original`).\n"
    )
    p.add(
        f"The tiled model kept {t['prior_rows']} of {t['prior_features']:,} normal features "
        f"in its memory ({t['prior_fit_seconds']} s) and trained {t['epochs']} epochs "
        f"({t['steps']} steps) in {num(t['train_seconds'])} s, {t['train_images_per_s']} "
        f"images/s; `adps test` ran at {num(t['test_images_per_s'])} images/s, peak memory "
        f"{t['test_peak_rss_mib']} MiB (cpu-rss):\n"
    )
    p.add(
        "```\n"
        + table(["name", *M7], [["surface_hr"] + [p1(t["metrics"][k]) for k in M7]])
        + "```\n"
    )
    p.add(
        table(
            ["model"] + [NAMES[k] for k in M5],
            [[r["label"]] + [p1(r["metrics"][k]) for k in M5] for r in rows],
        )
    )
    resized = d.row("highres", run="highres-resized")
    p.add(
        f"Resized to 256 px, a pit is one pixel; in a native-resolution tile it is 8 x 8. The "
        f"tiled run costs more: its memory prior took {t['prior_fit_seconds']} s to fit "
        f"({resized['prior_fit_seconds']} s for the resized model), and inference takes "
        f"{t['tiles_per_image']} tiles per image, about {t['seconds_per_image_approx']} s "
        f"per image on this CPU.\n"
    )
    p.add(reproduce(rows))
    tl = d.docs["tiling_20mp"]
    b1 = d.row("tiling_20mp", run="tiling-20mp-b1")
    b16 = d.row("tiling_20mp", run="tiling-20mp-b16")
    s = b1["settings"]
    p.add("## A 20-megapixel image\n")
    p.add(
        f"A {s['width']} x {s['height']} image ({s['tiles']} tiles of {s['tile']} px) predicts "
        f"in {num(b1['metrics']['seconds'])} s ({b1['metrics']['megapixels_per_s']:.2f} "
        f"megapixels/s, {num(b1['metrics']['tiles_per_s'])} tiles/s) at a peak of "
        f"{num(b1['metrics']['peak_gib'])} GiB for the whole process, tiles one at a time; "
        f"batches of {b16['settings']['tile_batch']} tiles are slower on CPU "
        f"({num(b16['metrics']['seconds'])} s): `{tl['command']}`.\n"
    )
    return p


# ------------------------------------------------------------------------------ plots
def make_plots(d: Data, out: Path) -> dict:
    from matplotlib.figure import Figure

    made = {}
    # pixel AP and AUPRO against budget minutes, PatchCore at its fit time
    rows = d.docs["accuracy_per_minute"]["rows"]
    peers = {r["dataset"]: r for r in d.docs["patchcore"]["rows"] if not r.get("quoted")}
    datasets = ["bottle", WELD]
    fig = Figure(figsize=(4.8 * len(datasets), 4.6), layout="constrained")
    for i, name in enumerate(datasets):
        ax = fig.add_subplot(1, len(datasets), i + 1)
        for key, colour in (("pixel_ap", "#d1495b"), ("aupro", "#1f6fb4")):
            for r in (r for r in rows if r["dataset"] == name and r["scoring"] != "early prior"):
                kind = (
                    "fast recipe + prior"
                    if r["scoring"] == "late prior"
                    else "fast recipe"
                    if r["settings"]["recipe"] == "fast"
                    else "paper recipe"
                )
                marker, alpha = {
                    "fast recipe + prior": ("D", 1.0),
                    "fast recipe": ("o", 0.75),
                    "paper recipe": ("s", 0.4),
                }[kind]
                ax.plot(
                    r["budget_minutes"],
                    r["metrics"][key],
                    marker,
                    color=colour,
                    alpha=alpha,
                    markersize=8,
                    label=f"adps {kind}, {key}",
                )
            peer = peers.get(name)
            if peer:
                if peer["fit_seconds"] / 60 > max(r["budget_minutes"] + 2 for r in rows):
                    ax.annotate(
                        f"PatchCore {key} {peer['metrics'][key]:.1f} at "
                        f"{peer['fit_seconds'] / 60:.1f} min ->",
                        (1.0, peer["metrics"][key]),
                        xycoords=("axes fraction", "data"),
                        ha="right",
                        va="center",
                        fontsize=7,
                        color=colour,
                    )
                    continue
                ax.plot(
                    peer["fit_seconds"] / 60,
                    peer["metrics"][key],
                    "*",
                    color=colour,
                    markersize=14,
                    label=f"PatchCore, {key}",
                )
        ax.set_title(name)
        ax.set_xlim(0, max([12] + [r["budget_minutes"] + 2 for r in rows]))
        ax.set_xlabel("training minutes (2-core CPU)")
        ax.set_ylabel("percent")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(
            unique.values(),
            unique.keys(),
            fontsize=7,
            ncol=2,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
        )
    fig.savefig(out / "minutes.png", dpi=110, metadata={"Software": None})
    made["minutes"] = True

    # training step parts, stacked
    cols = d.docs["train_step"]["rows"]
    parts = (
        "synthesis",
        "teacher_forward",
        "student_forward_backward",
        "psm_forward_backward",
        "loss",
        "optimiser",
    )
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    bottom = [0.0] * len(cols)
    for part in parts:
        vals = [c["metrics"][part] for c in cols]
        ax.bar([c["run"] for c in cols], vals, bottom=bottom, label=part.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("seconds per step (256 px, k = 8, batch 16)")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7)
    fig.savefig(out / "train_step.png", dpi=110, metadata={"Software": None})
    made["train_step"] = True

    # serve
    rows = d.docs["serve"]["rows"]
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    labels = [f"{r['runtime']}\nmax-batch {r['settings']['max_batch']}" for r in rows]
    ax.bar(
        labels,
        [r["metrics"]["requests_per_s"] for r in rows],
        color="#1f6fb4",
        label="served requests/s",
    )
    ax.plot(
        labels,
        [r["metrics"]["offline_best_images_per_s"] for r in rows],
        "k_",
        markersize=20,
        label="offline best images/s",
    )
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("per second")
    ax.legend(fontsize=7)
    fig.savefig(out / "serve.png", dpi=110, metadata={"Software": None})
    made["serve"] = True
    return made


# ------------------------------------------------------------------------------ main
def render(results: Path = RESULTS, out: Path = OUT, plots: bool = True) -> list[Path]:
    d = Data(load_all(results))
    out.mkdir(parents=True, exist_ok=True)
    made = {"minutes": True, "train_step": True, "serve": True}  # the pages name them either way
    if plots:
        made = make_plots(d, out)
    pages = [
        page_training(d, made),
        page_accuracy(d, made),
        page_prior(d),
        page_inference(d),
        page_serving(d, made),
        page_updating(d),
        page_tiling(d),
    ]
    note = weld_note(d)
    written = []
    for page in [page_index(d, pages), *pages]:
        path = out / f"{page.name}.md"
        path.write_text(page.render(d, note))
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-plots", action="store_true", help="write the pages only")
    args = parser.parse_args()
    for path in render(args.results, args.out, plots=not args.no_plots):
        print(path)


if __name__ == "__main__":
    main()
