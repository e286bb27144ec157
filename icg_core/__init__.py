"""ICG core library: data contracts, storage, the embedded world, models, rewards, training, evaluation.

No Airflow and no Ray here (docs/architecture.md, "Layers"): everything is usable from a notebook.
"""
