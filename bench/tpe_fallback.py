"""What a miss costs a model-based study once TPE answers it: fitted on the request path
(``SuggestionPolicy(warm_fallback=False)``, as before) or popped from the warm buffer
(the default; ``ladder.samplers.policy``, "Warm fallback"), same run.

::

    nice -n 19 .venv/bin/python bench/tpe_fallback.py [--observations 300] [--takes 200]

In process, no services: a policy whose model never answers (every request misses),
the 6-d unit cube of suggest_latency.py, ``--observations`` random observations,
``--takes`` requests of one point each at ``--rates`` requests per second. Writes
bench/results/tpe-fallback-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ladder import samplers
from ladder.samplers import Observation, Pending, Proposal, SamplerContext
from ladder.samplers.policy import MODEL_FALLBACK_ALGORITHM, WARM_MIN
from ladder.samplers.quasirandom import QuasiRandomSampler
from ladder.samplers.tpe import TPESampler
from ladder.space import Space
from ladder.testing import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suggest_latency import DIM, RESULTS, percentiles, search_space  # noqa: E402
from suggest_start import new_report, write_report  # noqa: E402

SPACE = Space.from_proto(search_space())


class Silent(samplers.Sampler):
    """A model whose refit never lands: every request is a miss."""

    algorithm = "silent"

    def __init__(self, context: SamplerContext) -> None:
        super().__init__(context)
        self.gate = threading.Event()

    def _suggest(
        self, observations: Sequence[Observation], count: int, pending: Pending
    ) -> list[Proposal]:
        self.gate.wait(600)
        return []


def run(warm: bool, observations: int, takes: int, rate: float) -> dict[str, Any]:
    context = SamplerContext(space=SPACE, seed=3, reserve=samplers.LocalDraws())
    store, model = samplers.ObservationStore(), Silent(context)
    policy = samplers.SuggestionPolicy(
        store, QuasiRandomSampler(context), samplers.LocalRefit(lambda: model, store), 2,
        name="bench", model_fallback=TPESampler(context), warm_fallback=warm,
    ).start()
    rng = random.Random(1)
    store.add([
        Observation(f"t{i}", {f"x{j}": rng.random() for j in range(DIM)}, rng.random())
        for i in range(observations)
    ])
    if warm:
        wait_for(lambda: policy.stats.warm >= WARM_MIN, 60, "the warm buffer")
    latencies = []
    try:
        for _ in range(takes):
            began = time.perf_counter()
            (point,) = policy.take(1)
            latencies.append((time.perf_counter() - began) * 1000)
            if point.algorithm != MODEL_FALLBACK_ALGORITHM:
                raise SystemExit(f"a miss answered by {point.algorithm}")
            time.sleep(1 / rate)  # the request rate, not a synchronisation
    finally:
        model.gate.set()
        policy.stop(10)
    return percentiles(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--observations", type=int, default=300)
    parser.add_argument("--takes", type=int, default=200)
    parser.add_argument("--rates", default="10,100", help="misses per second")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / f"tpe-fallback-{time.strftime('%Y%m%d')}.json"
    )
    args = parser.parse_args()
    report = new_report(args, rates={})
    for rate in (float(r) for r in args.rates.split(",")):
        report["rates"][f"{rate:g}"] = {
            "request_path_fit_ms": run(False, args.observations, args.takes, rate),
            "warm_buffer_ms": run(True, args.observations, args.takes, rate),
        }
        print(f"{rate:g}/s", json.dumps(report["rates"][f"{rate:g}"]), flush=True)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
