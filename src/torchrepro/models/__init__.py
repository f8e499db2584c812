"""What training, evaluation and prediction share: the networks (nets.py), their checkpoints
(checkpoint.py) and how a trained network is run and scored (inference.py)."""
