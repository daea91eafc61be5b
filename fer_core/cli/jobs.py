"""`jobs`, `cancel` and the hidden `queue`: trainings queued from the dashboard (or a sweep) and their processes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fer_core.cli.common import print_json
from fer_core.jobs import ray_auth
from fer_core.jobs.queue import cancel_job, cancel_run, job_runs, jobs_dir, list_jobs, run_queue


def cmd_queue(args) -> int:
    return run_queue(Path(args.job_dir))


def cmd_jobs(args) -> int:
    jobs = [{**j, "trainings": job_runs(j)} for j in list_jobs()]
    if args.json:
        print_json(jobs)
        return 0
    if not jobs:
        print("no jobs (the dashboard's Train page and `python -m fer_core sweep` start trainings)")
    for j in jobs:
        print(f"job {j['id']} {j['status']}: {j.get('title', '')}")
        for t in j["trainings"]:
            s = t["summary"] or {}
            ep = f"epoch {s.get('epochs_done') or 0}/{s.get('epochs') or '?'}" if s else ""
            print(f"  {t['status']:<9} {t['label']:<28} {ep:<14} {s.get('run_id', '')}")
    return 0


def cmd_cancel(args) -> int:
    if (jobs_dir() / args.target).is_dir():
        cancel_job(args.target)
        print(f"job {args.target}: cancelling")
    else:
        cancel_run(args.target)
        print(f"run {args.target}: cancelling")
    return 0


def cmd_ray_token(args) -> int:
    said = []
    if args.generate:
        path = ray_auth.generate_token(Path(args.generate) if args.generate != "default" else None, args.force)
        said.append(f"wrote a new Ray token to {path} (readable by you only); copy it to every node and client")
    said += [f"note: {note}" for note in ray_auth.secure_token_files()]
    source = ray_auth.token_source()
    if args.json:
        print_json({"token_from": source, "auth_mode": os.environ.get(ray_auth.MODE_ENV) or None, "said": said})
        return 0
    for line in said:
        print(line)
    if source:
        print(f"Ray token: {source}. Start every node, and run FER Lab, with RAY_AUTH_MODE=token set.")
    else:
        print(f"no Ray token here: `python -m fer_core ray-token --generate` writes {ray_auth.default_token_path()}")
    return 0


def register(sub) -> None:
    """Add this group's commands to the top-level parser's subcommands."""
    s = sub.add_parser("jobs", help="queued trainings started from the dashboard, with their progress")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_jobs)

    s = sub.add_parser("cancel", help="cancel a job (its queue) or one running run")
    s.add_argument("target", help="job id or run id")
    s.set_defaults(func=cmd_cancel)

    s = sub.add_parser("ray-token", help="where the Ray cluster token is here; make its file private; make one")
    s.add_argument(
        "--generate",
        nargs="?",
        const="default",
        metavar="FILE",
        help="write a new random token (default ~/.ray/auth_token), readable by you only",
    )
    s.add_argument("--force", action="store_true", help="replace an existing token file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ray_token)

    s = sub.add_parser("queue", help=argparse.SUPPRESS)  # the detached process behind a job
    s.add_argument("job_dir")
    s.set_defaults(func=cmd_queue)
