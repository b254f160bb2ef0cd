"""Glue from other libraries' outputs to `Decoder.decode` (each imports its library lazily, if at all)."""
