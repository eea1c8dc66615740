"""`openovis analyze`: the visual-word analysis of a trained VET model (see ``report.py``)."""

from openovis.experiments.analysis.report import run_analysis

__all__ = ["run_analysis"]
