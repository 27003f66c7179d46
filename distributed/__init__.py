"""The training engine: encoders and losses, the Ray Train loop, DeepSpeed wiring (training issue)."""
