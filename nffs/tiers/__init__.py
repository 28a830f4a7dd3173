"""Pages on tier directories: placement, capacity, migration, write-back, checksums, metadata."""
