"""Training: the stages (pre-training, fine-tuning, evaluation), the loop they share, checkpoints, DDP."""
