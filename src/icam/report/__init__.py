"""Figures and reports of a run."""
