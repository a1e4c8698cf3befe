"""Lightning callbacks: what train.py adds to every run (resources, seeding, finite loss,
last checkpoint) and optional views composed from configs/callbacks/."""
