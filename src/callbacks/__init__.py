"""Lightning callbacks: those every train.py run has (``src.cli.RUN_CALLBACKS``: seeding, finite
loss, learning rate, resources, tokens/s, checkpoints) and optional views composed from configs/callbacks/."""
