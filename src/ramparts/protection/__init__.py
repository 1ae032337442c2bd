"""Dataset protection: differentially private training, and (later) encrypted inference.

- :mod:`ramparts.protection.dp`: DP-SGD (Abadi et al. 2016) through Opacus, switched on in the one
  training loop with ``TrainConfig(dp=DPConfig(epsilon=...))``; the defence against membership inference.
"""
