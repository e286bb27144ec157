"""ICG core library: data contracts, storage, the embedded world, models, rewards, training, evaluation.

No Airflow and no Ray here (DESIGN.md section 3): everything is usable from a notebook.
"""
