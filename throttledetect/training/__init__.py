"""Model training (offline; never imported by classification)."""
