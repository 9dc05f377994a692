"""tep package."""
