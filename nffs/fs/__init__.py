"""The pyfuse3 Operations: a thin layer mapping paths and handles to the field and page store."""
