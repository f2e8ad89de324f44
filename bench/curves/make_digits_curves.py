"""Record full learning curves of the digits MLP for the early-stopping benchmark.

Trains :mod:`workers.digits` (the demo's workload, unchanged) for all 27 epochs on
``--configs`` configurations drawn from the demo's search space with Ladder's own
quasi-random (scrambled Sobol') sampler, and stores the validation log-loss after every
epoch and the wall time of every epoch. Deterministic: the Sobol' stream is seeded
with ``--seed`` and trial ``i`` trains with torch seed ``--seed * 100003 + i``. One torch
thread, one process: run it with ``nice`` so it shares the machine politely.

    nice -n 10 .venv/bin/python bench/curves/make_digits_curves.py            # 500 configs
    nice -n 10 .venv/bin/python bench/curves/make_digits_curves.py --configs 10 --out /tmp/x.npz

Output (``.npz``, compressed): ``values`` float32 [n, 27] (NaN = diverged), ``seconds``
float32 [n, 27], ``params_json`` (one JSON object per row), ``seeds`` int64 [n], plus
``meta_json`` (seed, torch version, dataset id, total wall time).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ladder.client import search_space
from ladder.samplers import LocalDraws, QuasiRandomSampler, SamplerContext
from ladder.space import Space

from workers import digits

DEFAULT_OUT = Path(__file__).resolve().parent / "digits_curves.npz"


def draw_configs(count: int, seed: int) -> list[dict]:
    """``count`` points of the demo's space from Ladder's Sobol' sampler (partition 0)."""
    space = Space.from_proto(search_space(digits.SEARCH_SPACE))
    sampler = QuasiRandomSampler(SamplerContext(space=space, seed=seed, reserve=LocalDraws()))
    return [proposal.params for proposal in sampler.suggest((), count)]


def train_curve(workload: digits.DigitsWorkload, params: dict, seed: int
                ) -> tuple[list[float], list[float]]:
    state = workload.init(params, seed)
    values, seconds = [], []
    for epoch in range(1, digits.MAX_EPOCHS + 1):
        start = time.perf_counter()
        value = workload.train_step(state, epoch)
        seconds.append(time.perf_counter() - start)
        values.append(value)
    return values, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=500)
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    workload = digits.DigitsWorkload(threads=1)
    configs = draw_configs(args.configs, args.seed)
    n, epochs = len(configs), digits.MAX_EPOCHS
    values = np.full((n, epochs), np.nan, dtype=np.float32)
    seconds = np.zeros((n, epochs), dtype=np.float32)
    seeds = np.array([args.seed * 100003 + i for i in range(n)], dtype=np.int64)
    started = time.perf_counter()
    for i, params in enumerate(configs):
        row_values, row_seconds = train_curve(workload, params, int(seeds[i]))
        values[i] = row_values
        seconds[i] = row_seconds
        if (i + 1) % 10 == 0 or i + 1 == n:
            elapsed = time.perf_counter() - started
            remaining = elapsed / (i + 1) * (n - i - 1)
            print(f"{i + 1}/{n} configs, {elapsed:.0f}s, eta {remaining:.0f}s", flush=True)
    meta = {
        "seed": args.seed,
        "configs": n,
        "epochs": epochs,
        "metric": digits.METRIC,
        "dataset_id": digits.DATASET_ID,
        "sampler": "ladder QuasiRandomSampler (scrambled Sobol'), partition 0",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "threads": 1,
        "total_seconds": round(time.perf_counter() - started, 1),
        "diverged_rows": int(np.isnan(values).any(axis=1).sum()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        values=values,
        seconds=seconds,
        seeds=seeds,
        params_json=np.array([json.dumps(p, sort_keys=True) for p in configs]),
        meta_json=np.array(json.dumps(meta)),
    )
    finals = values[:, -1]
    best = float(np.nanmin(finals)) if np.isfinite(finals).any() else math.nan
    print(f"wrote {args.out} ({n}x{epochs}); best final {best:.4f}; {meta['total_seconds']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
