"""The train stage (stage.py): the loop (loop.py), torch.optim optimizers and schedulers
(optim.py) and resume checkpoints (resume.py)."""
