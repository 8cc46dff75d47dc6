"""Training: SFT (difficulty-aware, packed, global token-mean loss) and the pieces GRPO reuses
(optimiser and schedule, atomic checkpoints with exact resume, torch.distributed / FSDP2 setup)."""
