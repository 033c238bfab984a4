"""Training: config (flags), trainer (loop), checkpoint, flops, metrics."""
