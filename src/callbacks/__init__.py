"""Lightning callbacks that any task module can compose from a config."""

from src.callbacks.approximation import ApproximationMonitor, measure_approximation

__all__ = ["ApproximationMonitor", "measure_approximation"]
