"""`data` and `status`: which data the defaults find, and which device they use."""

from __future__ import annotations

import time

from fer_core.analysis.status import data_status, device_status
from fer_core.cli.common import print_json
from fer_core.common import EMOTIONS
from fer_core.data.sources import load, resolve_spec


def cmd_status(args) -> int:
    out = {"data": data_status(args.data), "device": device_status()}
    if args.json:
        print_json(out)
        return 0
    d = out["data"]
    dev = out["device"]
    print(f"device: {dev['name']} ({dev['device']}; --device auto picks CUDA, then Apple's MPS, then the CPU)")
    if not d["ok"]:
        print(f"data: error: {d['error']}")
    else:
        kind = "synthetic faces (NOT FER2013)" if d["synthetic"] else f"{d['data']} ({d['kind']}, {d['file']})"
        print(f"data: {kind}, " + ", ".join(f"{k} {v:,}" for k, v in d["sizes"].items()))
    return 0


def cmd_data(args) -> int:
    spec = resolve_spec(args.data)
    t = time.perf_counter()
    d = load(spec)
    desc = d.describe()
    desc["load_s"] = round(time.perf_counter() - t, 3)
    if args.json:
        print_json(desc)
        return 0
    where = "built-in synthetic faces (NOT FER2013)" if d.synthetic else f"{d.kind} {d.path}"
    print(f"data: {d.name}  ({where})")
    print(f"fingerprint: {d.fingerprint}\n")
    print(f"{'split':<8}" + "".join(f"{e:>9}" for e in EMOTIONS) + f"{'total':>9}")
    for s, counts in desc["counts"].items():
        print(f"{s:<8}" + "".join(f"{c:>9}" for c in counts) + f"{sum(counts):>9}")
    for n in d.notes:
        print(f"note: {n}")
    return 0


def register(sub) -> None:
    """Add this group's commands to the top-level parser's subcommands."""
    s = sub.add_parser("status", help="which data and which device the defaults use (the dashboard's home)")
    s.add_argument("--data", default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("data", help="what data is found: source, counts per split and class")
    s.add_argument("--data", default=None, help="file/folder or 'synthetic' (default: $FER_DATA, data/, synthetic)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data)
