"""Lightning callbacks that ``train.py`` adds to every run (robustness, resuming, seeding)."""
