"""Named, declarative study definitions (issue 4; not built yet)."""
