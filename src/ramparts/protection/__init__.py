"""Dataset protection: differentially private training, and inference on encrypted inputs.

- :mod:`ramparts.protection.dp`: DP-SGD (Abadi et al. 2016) through Opacus, switched on in the one
  training loop with ``TrainConfig(dp=DPConfig(epsilon=...))``; the defence against membership inference.
- :mod:`ramparts.protection.poly`: polynomial activations and the training that makes a model encryptable.
- :mod:`ramparts.protection.he_params`, :mod:`~ramparts.protection.he_model`, :mod:`~ramparts.protection.he_eval`:
  CKKS parameter planning (128-bit HE standard), the compiler from PyTorch layers, and encrypted evaluation in two
  packings (per query, and CryptoNets' batch); :mod:`ramparts.protection.he_files`: key and ciphertext files.
"""
