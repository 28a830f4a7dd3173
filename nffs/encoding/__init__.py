"""The field's math: layout, hash-grid encoding, implicit init, decoder.

Nothing in here knows about files, pages on disk or FUSE: values are read
through a `gather` callable so that the parameters can live anywhere.
"""
