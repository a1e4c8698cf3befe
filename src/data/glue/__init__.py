"""GLUE fine-tuning: the task table and readers (``tasks``) and the DataModule."""
