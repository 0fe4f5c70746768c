"""Orchestration only: `run.py` (the whole job) and `data_engine.py` (the training set) compose the
stages of the packages below; nothing below imports from here."""
