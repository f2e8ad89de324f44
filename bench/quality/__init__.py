"""Quality benchmark: Ladder's samplers vs Optuna at equal budget (see run.py)."""

import os

# One thread per process for every numeric library, set here so that it precedes the
# first numpy or torch import of any benchmark in this package (a pool's processes
# inherit it). With two jobs on two cores, OpenMP's and OpenBLAS's default of a thread per
# core made four spinning threads, and Optuna GP's suite runs took up to ten times as long
# (bench/README.md, the suite section); results change only where a BLAS rounding does.
ONE_THREAD = ("LADDER_TORCH_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
for _variable in ONE_THREAD:
    os.environ.setdefault(_variable, "1")
