"""Machine-readable outputs: the --events log and the --json summary (stable contracts)."""
