"""Dataset protection: differentially private training, and (later) encrypted inference."""
