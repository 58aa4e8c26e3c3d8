"""The dump engine: one batched, bucketed, distributed, resumable ark/scp writer for every model."""
