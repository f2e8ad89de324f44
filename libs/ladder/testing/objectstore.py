"""A SeaweedFS object store on its own, for the tests and benchmarks of what keeps data
in S3 (checkpoints): the stack's ``weed server`` command line, free ports, its one
identity and its buckets, without a broker or Redis beside it."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ladder import objectstore
from ladder.objectstore import S3Settings
from ladder.stack import components, ports, probes
from ladder.stack.components import ObjectStorePorts

START_TIMEOUT_S = 60.0


@contextmanager
def seaweedfs(folder: Path, buckets: tuple[str, ...] = (components.CHECKPOINT_BUCKET,),
              stop_grace: float = 0.0) -> Iterator[S3Settings]:
    """A running SeaweedFS with ``buckets``, its data and log in ``folder``; yields how to
    reach it. On exit it is stopped: SIGTERM with ``stop_grace`` seconds to go, else (and
    by default: test data needs no orderly shutdown) SIGKILL."""
    folder.mkdir(parents=True, exist_ok=True)
    access, secret = objectstore.ensure_identity(folder / "s3.json")
    found = ObjectStorePorts.of(ports.free_ports(ObjectStorePorts.count()))
    settings = S3Settings(f"http://{ports.LOOPBACK}:{found.s3}", access, secret)
    argv = components.objectstore_argv(found, folder / "data", folder / "s3.json")
    (folder / "data").mkdir(exist_ok=True)
    with open(folder / "weed.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S

        def alive() -> bool:
            return proc.poll() is None

        probes.wait_s3(settings, deadline=deadline, alive=alive)
        probes.ensure_buckets(settings, buckets, deadline=deadline, alive=alive)
        for bucket in buckets:
            probes.s3_roundtrip(settings, bucket, deadline=deadline, alive=alive)
        yield settings
    finally:
        if stop_grace > 0 and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(stop_grace)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
