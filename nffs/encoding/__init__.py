"""The field's math: layout, hash-grid encoding, implicit init, decoder.

Nothing in here knows about files, pages on disk or FUSE: values are read
through a `gather` callable so that the parameters can live anywhere.
"""

from .decoder import Decoder
from .hashgrid import (
    Gather,
    array_gather,
    concept_update,
    corner_entries,
    encode,
    encode_reference,
    entry_elements,
    interpolate,
    parse_point,
    point_from_name,
    touched_pages,
)
from .layout import FieldConfig, FieldLayout

__all__ = [
    "Decoder",
    "FieldConfig",
    "FieldLayout",
    "Gather",
    "array_gather",
    "concept_update",
    "corner_entries",
    "encode",
    "encode_reference",
    "entry_elements",
    "interpolate",
    "parse_point",
    "point_from_name",
    "touched_pages",
]
