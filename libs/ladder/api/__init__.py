"""The Python API: tune your own training loop.

| module                  | what                                                        |
|-------------------------|-------------------------------------------------------------|
| ``ladder.api.study``    | ``create_study`` / ``load_study``, ``Study.trials()``        |
| ``ladder.api.trial``    | ``Trial``: report, should_stop, checkpoint, restore, complete |
| ``ladder.api.optimize`` | ``optimize``: a study with N worker processes in one call    |
| ``ladder.api.attempt``  | the attempt engine (shared with ``workers.runtime``)         |
| ``ladder.api.local``    | the local mode ``ladder reproduce`` runs a script in         |

``import ladder`` exposes the names below (``ladder.create_study`` ...).
"""

from ladder.api.optimize import WorkerFailed, optimize
from ladder.api.study import Study, create_study, load_study
from ladder.api.trial import Trial
from ladder.failures import TrialFailed

__all__ = ["Study", "Trial", "TrialFailed", "WorkerFailed", "create_study", "load_study",
           "optimize"]
