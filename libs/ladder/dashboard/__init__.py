"""The dashboard's pure code: what the pages show, computed from lineage's answers.

| module       | builds                                                           |
|--------------|------------------------------------------------------------------|
| trials       | ListTrials' summaries as plain ``Trial`` values                  |
| axes         | how each parameter sits on an axis (numeric, log, categorical)   |
| sampling     | fewer points for the browser (even samples, curve decimation)    |
| figures      | optimisation history, compute spent per state                    |
| curves       | learning curves with stop marks, one trial's curve and decisions |
| rungs        | population, promoted, stopped, paused and cutoff per rung        |
| paramplots   | parallel coordinates, slice plots, importance bars               |
| importance   | random-forest permutation importances                            |
| table        | the trial table (JSON for the page, CSV for the download)        |
| listing      | the studies page's rows, a study's live progress                 |
| study        | every figure of the study page from lineage's answers            |
| trialview    | the trial page                                                   |

Figures are plain Plotly dicts (``{"data": [...], "layout": {...}}``) drawn by the
plotly.js bundle of the ``plotly`` wheel; nothing here does I/O. The service that
serves them is ``services/dashboard``.
"""
