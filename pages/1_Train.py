"""Train: choose families and sizes, see each model's cost before starting, follow and cancel the jobs."""

import pandas as pd
import streamlit as st

from fer_core.analysis.planning import configs, costs, log_budgets, parse_numbers, plan
from fer_core.analysis.status import data_status, device_status
from fer_core.common import FerError
from fer_core.jobs.queue import cancel_job, cancel_run, job_runs, list_jobs, submit
from fer_core.jobs.ray_backend import backend_spec
from fer_core.models import budget_note, family_about, list_models
from fer_core.serving.models import available_models
from fer_core.store.runs import study_dirs
from fer_core.studies.families import progress, trained_text
from fer_core.training.config import PRUNE_IMPORTANCES, RECIPES, RunConfig, apply_recipe
from fer_core.training.pruning import FINE_TUNE_EPOCHS, prune_configs
from pages import guard

guard()  # inside the app's navigation, and behind the lock when the dashboard is shared

FAMILIES = {f: f"{f}: {family_about(f)}" for f in list_models()}  # every registered family, new ones included


@st.cache_data(show_spinner=False)
def _costs(family: str, width: float) -> dict:
    return costs({"family": family, "width": width})


def sizes_ui() -> tuple[list[str], list[float] | None, list[float] | None, list[int]]:
    seed = [f for f in ("mobilenet", "cnn") if f in FAMILIES] or list(FAMILIES)
    families = st.multiselect("Families", list(FAMILIES), default=seed, format_func=FAMILIES.get)
    mode = st.radio("Sizes by", ["parameter budgets", "widths"], horizontal=True)
    if mode == "parameter budgets":
        c1, c2, c3 = st.columns(3)
        lo = c1.number_input("smallest budget (parameters)", 1e3, 1e8, 2e4, step=1e4, format="%.0f")
        hi = c2.number_input("largest budget", 1e3, 1e8, 1e6, step=1e5, format="%.0f")
        n = c3.number_input("points (log-spaced)", 1, 20, 5)
        budgets, widths = log_budgets(lo, hi, int(n)), None
        st.caption("Each budget is solved to a width for each family, so the two families' points line up.")
    else:
        budgets, widths = None, parse_numbers(st.text_input("widths (comma-separated)", "0.25, 0.5, 1.0"), "widths")
    seeds = parse_numbers(st.text_input("seeds", "0", help="several seeds give a mean ± sd"), "seeds", integer=True)
    return families, budgets, widths, seeds


def options_ui(gpu: bool) -> RunConfig:
    """Every setting the trainings share, as one RunConfig (each model's family, width and seed come later)."""
    cfg = RunConfig()
    with st.expander("Training settings", expanded=True):
        c1, c2, c3, c4 = st.columns(4)
        cfg.train.epochs = int(c1.number_input("epochs", 1, 1000, 100 if gpu else 10))
        cfg.train.batch_size = int(c2.number_input("batch size", 8, 4096, 128))
        recipe = c3.selectbox("recipe", list(RECIPES), help="`python -m fer_core recipes` lists every setting")
        apply_recipe(cfg, recipe)
        lr = c4.number_input("learning rate (0 = the recipe's)", 0.0, 1.0, 0.0, format="%.4f")
        cfg.train.lr = lr or cfg.train.lr
        st.caption(f"**{recipe}**: {RECIPES[recipe].about}")
        c1, c2, c3, c4 = st.columns(4)
        cfg.data.augment = c1.checkbox("augmentation (flip, rotate, shift, scale)", True)
        cfg.data.data = (
            c2.text_input("data", "", help="empty: $FER_DATA, data/, else synthetic; or a path").strip() or None
        )
        cfg.data.limit = int(c3.number_input("limit training images (0 = all)", 0, 10_000_000, 0)) or None
        cfg.train.device = c4.selectbox(
            "device", ["auto", "cpu", "mps", "cuda"], help="auto = CUDA, else Apple's MPS, else the CPU"
        )
    with st.expander("Distillation: learn from trained teachers", expanded=recipe == "distill"):
        trained = {m["run_id"]: m["label"] for m in available_models()}
        teachers = st.multiselect(
            "teachers (frozen; several = their averaged soft targets)", list(trained), format_func=trained.get
        )
        c1, c2 = st.columns(2)
        cfg.distill.temperature = c1.number_input("temperature", 0.5, 20.0, float(cfg.distill.temperature))
        cfg.distill.alpha = c2.slider("alpha (weight of the teacher's term)", 0.0, 1.0, float(cfg.distill.alpha))
        cfg.distill.teachers = teachers
    return cfg


def plan_table(items: list[dict]) -> pd.DataFrame:
    rows = []
    for it in items:
        if it["seed"] != items[0]["seed"]:
            continue
        c = _costs(it["family"], it["width"])
        rows.append(
            {
                "family": it["family"],
                "width": it["width"],
                "budget": it["budget"],
                "params": c["params"],
                "bytes fp16": c["bytes_fp16"],
                "MACs": c["macs"],
                "off budget": f"{c['params'] / it['budget'] - 1:+.1%}" if it["budget"] else "",
            }
        )
        note = budget_note(it["family"], it["budget"]) if it["budget"] else None
        if note:
            st.warning(note)
    return pd.DataFrame(rows)


def prune_ui(base: RunConfig, gpu: bool, backend: dict | None) -> None:
    """Prune trained runs to parameter budgets (structured: whole channels), fine-tuned, as one job."""
    with st.expander("Prune a trained run: cut whole channels to a parameter budget, then fine-tune"):
        trained = {m["run_id"]: m for m in available_models() if m["format"] == "torch"}
        if not trained:
            st.caption("No trained run yet: train one above, then prune it here.")
            return
        parent = st.selectbox("run to prune", list(trained), format_func=lambda r: trained[r]["label"])
        c1, c2, c3, c4 = st.columns(4)
        budgets = c1.text_input("budgets (parameters, comma-separated)", "50000")
        importance = c2.selectbox(
            "which channels go",
            list(PRUNE_IMPORTANCES),
            help="l1/l2: smallest weight norms · bn: smallest BatchNorm scale · taylor: smallest |weight x gradient|",
        )
        steps = int(c3.number_input("steps", 1, 20, 1, help="pruning steps, fine-tuning between them"))
        epochs = int(c4.number_input("fine-tuning epochs", 1, 1000, FINE_TUNE_EPOCHS if gpu else 10))
        st.caption(
            "Fine-tuning uses the parent's own settings on a cosine schedule, on the data, limit and device chosen "
            "in Training settings above; each run's lineage names its parent."
        )
        if not st.button("Start pruning"):
            return
        try:
            budgets = parse_numbers(budgets, "budgets")
            cfgs = prune_configs(
                parent, budgets, importance, steps, epochs, base.train.device, base.data.data, base.data.limit
            )
            checked = data_status(cfgs[0].data.data)
            if not checked["ok"]:
                raise FerError(f"Data: {checked['error']}")
            jid = submit(cfgs, title=f"prune {parent} to {', '.join(f'{b:,.0f}' for b in budgets)}", backend=backend)
        except FerError as e:
            st.error(str(e))
            return
        st.success(f"Job {jid} started: {len(cfgs)} pruned run{'s' if len(cfgs) > 1 else ''}.")


def where_ui() -> dict | None:
    """Where the trainings run: this machine (one job at a time), or a Ray cluster (None = this machine)."""
    with st.expander("Where to run"):
        where = st.radio("where", ["this machine", "a Ray cluster"], horizontal=True, label_visibility="collapsed")
        if where == "this machine":
            return None
        c1, c2, c3, c4 = st.columns(4)
        address = c1.text_input(
            "cluster address", "local", help="ray://HOST:10001 or HOST:6379, auto, or local (a new one here)"
        ).strip()
        gpu = c2.number_input("GPU per training", 0.0, 1.0, 0.0, 0.05, help="0.25 packs four runs on a GPU")
        cpus = c3.number_input("CPUs per training", 0.25, 64.0, 1.0, 0.25)
        retries = int(c4.number_input("retries if a worker dies", 0, 10, 1))
        return backend_spec(None if address in ("", "local") else address, gpu, cpus, retries)


@st.fragment(run_every=10)
def studies_ui() -> None:
    """Each study folder's progress (done / training / resumable / waiting, time left), as `study --status`."""
    for folder in study_dirs():
        try:
            doc = progress(folder)
        except FerError as e:
            st.error(str(e))
            continue
        lanes = doc["workers"]
        st.subheader(
            f"Study `{folder.name}`: {doc['done']}/{doc['total']} runs done, about {doc['wall_left_s'] / 3600:.1f} h "
            f"left here with {lanes} worker{'s' if lanes > 1 else ''} "
            f"({doc['estimate_left_s'] / 3600:.1f} h of training)"
        )
        cols = ["run", "params", "phase", "state", "epochs_done", "epochs", "estimate_left_s", "private_acc",
                "trained_s", "device", "run_id"]  # fmt: skip
        st.dataframe(pd.DataFrame(doc["runs"])[cols], hide_index=True)
        st.caption(
            f"Protocol {doc['protocol']['recipe']} × {doc['protocol']['epochs']} epochs. It resumes where it stopped: "
            f"`python -m fer_core study families --out {folder} --hours H` (`--workers N`: N runs at once)."
            + (f" Time left unknown for {doc['unknown_estimates']} runs (no epoch measured here yet)."
               if doc["unknown_estimates"] else "")
            + (" trained_s: seconds each run has trained (its epochs, evaluation included) on its device; so far "
               f"{trained_text(doc['trained_s_by_device'])}." if doc["trained_s_by_device"] else "")
        )  # fmt: skip
        for note in doc["notes"]:
            st.caption(f"note: {note}")


@st.fragment(run_every=2)
def jobs_ui() -> None:
    jobs = list_jobs()[:5]
    if not jobs:
        st.caption("No jobs yet.")
        return
    for job in jobs:
        live = job["status"] in ("queued", "waiting", "running")
        head = st.columns([4, 1])
        head[0].markdown(f"**Job {job['id']}** · {job.get('title') or ''} · {job['status']}")
        if live and head[1].button("Cancel job", key=f"cj-{job['id']}"):
            cancel_job(job["id"])
            st.toast("Cancelling the job…")
        for i, t in enumerate(job_runs(job)):
            s = t["summary"] or {}
            done, total = s.get("epochs_done") or 0, s.get("epochs") or 0
            text = f"{t['label']} · {t['status']}"
            if s:
                acc = s.get("public_acc") if t["status"] == "done" else s.get("best_public_acc")
                eta = s.get("wall_s", 0) / max(done, 1) * (total - done) if s.get("status") == "running" else 0
                text += f" · epoch {done}/{total}" + (f" · public {acc:.3f}" if isinstance(acc, float) else "")
                text += f" · {s.get('img_per_s') or 0:,.0f} img/s" + (f" · ETA {eta:.0f} s" if eta else "")
            row = st.columns([4, 1])
            row[0].progress(done / total if total else 0.0, text=text)
            if s.get("status") == "running" and row[1].button("Cancel run", key=f"cr-{job['id']}-{i}"):
                cancel_run(s["run_id"])
                st.toast(f"Cancelling {s['run_id']}…")
            if t.get("error"):
                row[0].caption(f"error: {t['error'].splitlines()[-1]}")


st.title("Train")
found_device = device_status()
gpu = found_device["device"] == "cuda"
st.caption(f"Training device found: **{found_device['name']}** (`{found_device['device']}`)")
try:
    families, budgets, widths, seeds = sizes_ui()
    base = options_ui(gpu)
    backend = where_ui()
    items = plan(families, budgets=budgets, widths=widths, seeds=seeds)
    cfgs = [c.validate() for c in configs(items, base)]
except FerError as e:
    st.error(str(e))
    st.stop()

st.subheader(f"Planned: {len(items)} trainings")
st.dataframe(plan_table(items), hide_index=True)
st.caption("Trainings run one after another in their own process: closing or reloading this page stops nothing.")
if st.button("Start", type="primary"):
    checked = data_status(base.data.data)
    if not checked["ok"]:
        st.error(f"Data: {checked['error']}")
        st.stop()
    try:
        where = f" · Ray {backend['address'] or 'local'}" if backend else ""
        jid = submit(cfgs, title=f"{len(cfgs)} trainings · {base.recipe}{where}", backend=backend)
        st.success(f"Job {jid} started.")
    except FerError as e:
        st.error(str(e))

prune_ui(base, gpu, backend)

st.subheader("Jobs")
jobs_ui()
studies_ui()
