"""Match-action values and the strict packet simulator (imports nothing else of ours)."""
