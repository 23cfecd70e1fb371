"""Real-kernel backends, held against qsink's fake quantization in tests."""
