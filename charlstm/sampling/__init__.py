"""Drawing text from a model: the sampling rules, the per-character stepper over arranged
weights, and its compiled kernels; and a server's slots, streams that come and go stepped
together (``slots.py``, ``slot_kernels.py``)."""
