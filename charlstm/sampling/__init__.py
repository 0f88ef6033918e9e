"""Drawing text from a model: the sampling rules, the per-character stepper over arranged
weights, and its compiled kernels."""
