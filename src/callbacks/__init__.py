"""Lightning callbacks that every run can use (enabled by train.py where noted)."""
