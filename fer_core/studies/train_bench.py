"""Training speed, measured against what limits it: ``bench``'s training half.

- **The naive baseline** is what a user writes without us: a textbook loop over PIL images with per-image
  torchvision transforms in a ``DataLoader``, fp32 NCHW, glibc's default allocator, in a process of its own
  (so nothing this package sets up at import reaches it). It is given its best of ``num_workers`` 0 and 2.
- **Our engine**, per family at the seed MobileNet's size: images/second, page faults per step (the
  allocator's work), the same engine again in its own process with the default allocator (what keeping
  freed memory adds), the memory bandwidth measured in the same run (a large copy), the network's estimated
  bytes per image (:func:`fer_core.models.stats.training_bytes_per_image`) and the share of the resulting
  limit (bandwidth / bytes per image) the engine reaches.
- **Its levers, one at a time** (``bench --levers``): the engine as shipped against the same engine with one
  thing put back as it was (torch's transparent huge pages; PyTorch's own layers where the families use faster
  equivalents; PyTorch's BatchNorm and activation instead of the fused kernel), and with all of them put back at
  once (the allocator alone), one thread per process as a study worker trains, each configuration in a process of
  its own, the configurations interleaved over rounds and their medians compared: ratios measured in one run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fer_core.common.memory import ENV as ALLOCATOR_ENV
from fer_core.common.memory import page_faults, tune_allocator
from fer_core.common.paths import PROJECT_DIR
from fer_core.data.synthetic import make_split
from fer_core.models import count_params, create_model, list_models, solve_width
from fer_core.models.fused import fuse_bn_act
from fer_core.models.layers import ReLU6, plain_layers
from fer_core.models.stats import training_bytes_per_image
from fer_core.training.config import RunConfig
from fer_core.training.engine import GraphedStep, Step, make_optimizer
from fer_core.training.evaluation import memory_format

SEED_MOBILENET_PARAMS = 107_247  # the seed network's size: every family is timed at it


def training_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's images: synthetic faces, the same ones in every process (fixed seed)."""
    return make_split(n, seed=123, split_index=0)


def family_width(family: str) -> float:
    return 1.0 if family == "mobilenet" else solve_width(family, SEED_MOBILENET_PARAMS)[0]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def naive_throughput(
    x: np.ndarray, y: np.ndarray, batch: int = 128, workers: int = 0, seed: int = 0, device: str = "cpu"
) -> float:
    """Images/second of the seed-style pipeline: per-image torchvision transforms in a DataLoader, fp32 NCHW."""
    # torchvision is only this baseline's (importing it costs 1.6 s here: it loads torch._dynamo)
    from torchvision import transforms as T

    tf = T.Compose(
        [
            T.RandomHorizontalFlip(),
            T.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            T.ToTensor(),
            T.Normalize([0.5], [0.5]),
        ]
    )

    class Faces(Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return tf(Image.fromarray(x[i])), int(y[i])

    torch.manual_seed(seed)
    model = create_model("mobilenet", 1.0).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(
        Faces(), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True, pin_memory=device != "cpu"
    )
    model.train()
    n, t0 = 0, None
    for i, (xb, yb) in enumerate(loader):
        if i == 1:  # the first batch pays for worker start-up and allocation: not timed
            _sync(device)
            t0, n = time.perf_counter(), 0
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        n += len(yb)
    _sync(device)
    return n / (time.perf_counter() - t0)


def engine_speed(
    x: np.ndarray,
    y: np.ndarray,
    batch: int = 128,
    seed: int = 0,
    device: str = "cpu",
    graph: bool = True,
    family: str = "mobilenet",
    width: float = 1.0,
    before_timing=None,
    plain: bool = False,
) -> dict:
    """Our engine's training step (data as one tensor on the device, batched augmentation, channels_last; on
    CUDA bf16 autocast and the step replayed as a CUDA graph): images/second and page faults per step.
    ``before_timing``, if given, is called after the warm-up step, just before the clock starts; ``plain``: the
    network with PyTorch's own layers (:func:`~fer_core.models.layers.plain_layers`)."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = create_model(family, width)
    if plain:
        plain_layers(model)
    model = model.to(dev).to(memory_format=memory_format(dev))
    fused = fuse_bn_act(model) if dev.type == "cpu" else 0  # as the trainer does
    cfg = RunConfig()
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    graphed = dev.type == "cuda" and graph
    opt = make_optimizer(model, cfg, dev, graphed)
    step = GraphedStep(model, opt, xt, yt, cfg, dev, batch) if graphed else Step(model, opt, xt, yt, cfg, dev)
    model.train()
    perm = torch.randperm(len(y), device=dev)
    steps = len(y) // batch
    step(perm[:batch])  # warm-up, like the naive pipeline's untimed first batch
    if before_timing:
        before_timing()
    t0, f0 = time.perf_counter(), page_faults()
    for i in range(1, steps):
        step(perm[i * batch : (i + 1) * batch])
    float(step.loss_sum)
    dt, f1 = time.perf_counter() - t0, page_faults()
    return {
        "img_per_s": (steps - 1) * batch / dt,
        "page_faults_per_step": None if f0 is None else (f1 - f0) / max(1, steps - 1),
        "faster_layers": _faster_layers(model),  # what was trained, not what was asked for
        "fused_bn_act": fused,
    }


def engine_throughput(x: np.ndarray, y: np.ndarray, **kw) -> float:
    """Images/second of :func:`engine_speed`."""
    return engine_speed(x, y, **kw)["img_per_s"]


def memory_bandwidth_gbs(megabytes: int = 256, repeats: int = 8) -> float:
    """This machine's memory bandwidth now, in GB/s: a copy of a tensor far larger than the caches, with
    torch's threads, counting the bytes read and written; the best of three."""
    a = torch.ones(megabytes * 2**20 // 4)
    b = torch.empty_like(a)
    b.copy_(a)  # fault both in before timing
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            b.copy_(a)
        best = max(best, 2 * a.numel() * 4 * repeats / (time.perf_counter() - t) / 1e9)
    return best


# --------------------------------------------------------------------------------------------------- own process


def _default_allocator_env() -> dict:
    """This process's environment without any allocator setting: what a user's own script starts with."""
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    env["FER_MALLOC"] = "default"
    root = str(PROJECT_DIR)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


_CHILD = "import sys; from fer_core.studies.train_bench import _child; _child(sys.argv[1])"


def _child_result(out: str, err: str, rc: int, what: str) -> dict:
    if rc != 0:
        raise RuntimeError(f"{what} in its own process failed: {err.strip().splitlines()[-1:]}")
    return json.loads(out.strip().splitlines()[-1])


def in_own_process(what: str, images: int, **kw) -> dict:
    """Run ``naive`` or ``engine`` on the benchmark images in a fresh Python with the default allocator."""
    spec = json.dumps({"what": what, "images": images, "kw": kw})
    env = _default_allocator_env()
    out = subprocess.run([sys.executable, "-c", _CHILD, spec], capture_output=True, text=True, env=env, timeout=3600)
    return _child_result(out.stdout, out.stderr, out.returncode, what)


def lanes_speed(images: int, lanes: int, family: str = "mobilenet", width: float = 1.0) -> dict:
    """What ``study families --workers`` buys on this CPU: the engine in ``lanes`` processes of one thread each,
    timed together (each starts its clock when all have warmed up), against one process with ``lanes``
    threads; images/second in all. Both with the allocator kept, as the study's workers run."""
    env = {**os.environ, **ALLOCATOR_ENV, "PYTHONPATH": str(PROJECT_DIR)}
    one = in_processes(images, 1, lanes, family, width, env)[0][0]
    with tempfile.TemporaryDirectory() as gate:
        each, went = in_processes(images, lanes, 1, family, width, env, gate)
    # every lane's images over the time from the common start to the last lane's end
    together = sum(r["images_timed"] for r in each) / (max(r["ended"] for r in each) - went)
    return {
        "family": family,
        "width": width,
        "lanes": lanes,
        "one_process_img_per_s": round(one["img_per_s"], 1),
        "lanes_img_per_s": round(together, 1),
        "lanes_each_img_per_s": [round(r["img_per_s"], 1) for r in each],
        "lanes_vs_one_process": round(together / one["img_per_s"], 3),
    }


def in_processes(
    images, n, threads, family, width, env, gate: str | None = None, plain: bool = False
) -> tuple[list[dict], float]:
    """``n`` engine processes of ``threads`` threads at once, their results and when they were told to go; with
    ``gate`` (a folder) their clocks start together: each says it is ready there and waits for the word."""
    kw = {"family": family, "width": width, "threads": threads, "gate": gate, "plain": plain}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps({"what": "engine", "images": images, "kw": {**kw, "lane": i}})],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(n)
    ]
    if gate:
        while len(list(Path(gate).glob("ready-*"))) < n and all(p.poll() is None for p in procs):
            time.sleep(0.01)
    went = time.time()
    if gate:
        (Path(gate) / "go").touch()
    return [_child_result(*p.communicate(timeout=3600), p.returncode, "engine") for p in procs], went


def _child(spec: str) -> None:  # pragma: no cover - runs in the subprocesses above
    s = json.loads(spec)
    x, y = training_data(s["images"])
    kw = s["kw"]
    if s["what"] == "naive":
        doc = {"img_per_s": naive_throughput(x, y, **kw)}
    else:
        if kw.get("threads"):
            torch.set_num_threads(kw["threads"])
        gate, lane = kw.pop("gate", None), kw.pop("lane", 0)
        kw.pop("threads", None)

        def wait_for_all():
            (Path(gate) / f"ready-{lane}").touch()
            while not (Path(gate) / "go").exists():
                time.sleep(0.001)

        doc = engine_speed(x, y, before_timing=wait_for_all if gate else None, **kw)
        doc["ended"], doc["images_timed"] = time.time(), (len(y) // 128 - 1) * 128
        doc["huge_pages"] = tune_allocator()["thp"]  # what this process really ran with
    print(json.dumps(doc))


def _faster_layers(model) -> int:
    """How many of ``model``'s modules use the families' faster layers (0 once :func:`plain_layers` ran)."""
    return sum(isinstance(m, ReLU6) or not getattr(m, "plain_shuffle", True) for m in model.modules())


def _has_faster_layers(family: str, width: float) -> bool:
    return _faster_layers(create_model(family, width)) > 0


#: each lever: (what is put back, the environment it adds, whether PyTorch's own layers are used)
LEVERS = {
    "huge_pages": ("torch's transparent huge pages (THP_MEM_ALLOC_ENABLE=1)", {"THP_MEM_ALLOC_ENABLE": "1"}, False),
    "plain_layers": ("PyTorch's own layers (nn.ReLU6 in place, cat then shuffle)", {}, True),
    "unfused": ("PyTorch's BatchNorm and activation kernels (FER_FUSED=0)", {"FER_FUSED": "0"}, False),
    # every lever above put back at once: the engine as the allocator alone left it, so the levers' joint gain
    # is measured in the same run rather than multiplied from the single ratios
    "allocator_alone": (
        "all of them at once: the engine with only the kept allocator",
        {"THP_MEM_ALLOC_ENABLE": "1", "FER_FUSED": "0"},
        True,
    ),
}


def lever_speeds(images: int, rounds: int = 2, families=None, say=lambda *a: None) -> dict:
    """What each of the engine's levers buys, family by family at the seed MobileNet's size: the engine as
    shipped against the same with one lever put back (and with all at once), each a one-thread process of its
    own (as a study worker trains), interleaved over ``rounds``; medians, and shipped / lever-undone as the ratio."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env.update({**ALLOCATOR_ENV, "PYTHONPATH": str(PROJECT_DIR)})
    runs: dict = {}
    for _ in range(rounds):
        for f in families or list_models():
            w = family_width(f)
            configs = {"shipped": ({}, False)}
            faster = _has_faster_layers(f, w)  # PyTorch's own layers can only be put back where they were replaced
            configs.update({k: (e, p and faster) for k, (_, e, p) in LEVERS.items() if e or faster})
            for name, (extra, plain) in configs.items():
                (doc,), _ = in_processes(images, 1, 1, f, w, {**env, **extra}, plain=plain)
                runs.setdefault(f, {}).setdefault(name, []).append(doc)
    rows = {}
    for f, by in runs.items():
        shipped = float(np.median([d["img_per_s"] for d in by["shipped"]]))
        row = {"width": family_width(f), "params": count_params(f, family_width(f))}
        for name, docs in by.items():
            ips = float(np.median([d["img_per_s"] for d in docs]))
            row[name] = {
                "img_per_s": round(ips, 1),
                "img_per_s_each": [round(d["img_per_s"], 1) for d in docs],
                "page_faults_per_step": _round(float(np.median([d["page_faults_per_step"] for d in docs]))),
                "huge_pages": all(d["huge_pages"] for d in docs),
                "faster_layers": min(d["faster_layers"] for d in docs),
                "fused_bn_act": min(d["fused_bn_act"] for d in docs),
            }
            if name != "shipped":
                row[name]["shipped_vs_this"] = round(shipped / ips, 3)
        rows[f] = row
        say(
            f"  {f:<13} shipped {shipped:7.1f} img/s"
            + "".join(
                f" · {k}: {row[k]['img_per_s']:7.1f} (shipped {row[k]['shipped_vs_this']:.2f}x)"
                for k in LEVERS
                if k in by
            )
        )
    return {"levers": {k: what for k, (what, _, _) in LEVERS.items()}, "rounds": rounds, "threads": 1, "families": rows}


# --------------------------------------------------------------------------------------------------- the table


def family_training(images: int, device: str = "cpu", say=lambda *a: None, families=None) -> dict:
    """Every registered family (or ``families``) at the seed MobileNet's size: our engine's img/s and page
    faults per step (here, allocator kept), the same in a process with the default allocator, and the share of
    this machine's memory-bandwidth limit reached (bandwidth measured in this run)."""
    x, y = training_data(images)
    bandwidth = memory_bandwidth_gbs()
    say(f"memory bandwidth (copy, {torch.get_num_threads()} threads): {bandwidth:.1f} GB/s")
    rows = {}
    for f in families or list_models():
        w = family_width(f)
        ours = engine_speed(x, y, device=device, family=f, width=w)
        plain = in_own_process("engine", images, device=device, family=f, width=w) if device == "cpu" else None
        per_image = training_bytes_per_image(create_model(f, w))
        limit = bandwidth * 1e9 / per_image
        rows[f] = {
            "width": w,
            "params": count_params(f, w),
            "train_img_per_s": round(ours["img_per_s"], 1),
            "page_faults_per_step": _round(ours["page_faults_per_step"]),
            "train_img_per_s_default_allocator": round(plain["img_per_s"], 1) if plain else None,
            "page_faults_per_step_default_allocator": _round(plain["page_faults_per_step"]) if plain else None,
            "est_bytes_per_image": per_image,
            "memory_limit_img_per_s": round(limit, 1),
            "share_of_memory_limit": round(ours["img_per_s"] / limit, 3),
        }
        r = rows[f]
        say(
            f"  {f:<13} w{w:<6g} {r['params']:>8,} params: {r['train_img_per_s']:8.1f} img/s, "
            f"{r['page_faults_per_step']} faults/step"
            + (
                f" (default allocator: {r['train_img_per_s_default_allocator']:.1f} img/s, "
                f"{r['page_faults_per_step_default_allocator']} faults/step)"
                if plain
                else ""
            )
            + f"; ~{per_image / 1e6:.1f} MB/image -> limit {limit:.0f} img/s, {r['share_of_memory_limit']:.0%} of it"
        )
    return {"memory_bandwidth_gbs": round(bandwidth, 2), "families": rows}


def _round(v):
    return None if v is None else round(v, 1)
