"""Experiments on top of training and evaluation: the demo, the ablation grids, the visual-word analysis.

    shapes.py    Shapes World as the experiments use it: settings, test splits, preparation
    grid.py      grid points as recipe rewrites, the run cache (by hash), training + evaluation of one run
    ablation.py  `openovis ablate`: the three experiments, their grids and results folder
    tables.py    aggregation over seeds, Markdown tables (mean ± std) and the accuracy plots
    demo.py      `openovis demo`: the connector experiment with a report of its own (report.py)
    analysis/    `openovis analyze`: how a trained VET uses its visual words

This layer may import everything below it (training, evaluation, inference, data, modeling);
nothing below imports it.
"""
