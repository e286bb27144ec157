"""Evaluation (docs/architecture.md, "Evaluation"): variants on held-out items, bootstrap intervals, downstream AUC, gates.

The only package besides the embedded world allowed to read the oracle. Entry point:
:func:`icg_core.stages.evaluate.run_evaluation` (the evaluate stage).
"""
