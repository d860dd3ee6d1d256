"""What changes over training or watches it (GG-SM pre-warmup, mask schedulers, evaluation)."""
