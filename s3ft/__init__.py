"""s3ft: Selective Self-to-Supervised Fine-Tuning on Ray, vLLM and DeepSpeed."""

__version__ = "0.1.0"
