"""Model calls: local models on Triton first, cloud APIs as fallback, every cent accounted."""
