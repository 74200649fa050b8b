"""medrt_train: fine-tuning, distillation and quantization for medrt models."""
