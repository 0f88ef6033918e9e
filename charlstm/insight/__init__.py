"""Looking at models and runs: ``explain`` (text features, cell activations, the page), the
table of runs, and their loss curves."""
