"""Pure figures (plotly) and the one-file HTML report."""

from rope_behavior.viz.html_report import report

__all__ = ["report"]
