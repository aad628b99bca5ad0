"""What every layer may use and that knows nothing of recommendation: the error types, signals,
the allocator, the device mesh, Orbax checkpoint files, training progress and metric writers."""
