"""What a run leaves on disk: the checkpoint format (its versions and migrations), the metrics
log, and the config files."""
