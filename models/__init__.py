"""tsad models: PyTorch LSTM forecasters, windows, training, error thresholds and the model registry."""
