"""Ray Train worker loops, datasets and models (issue 3; not built yet)."""
