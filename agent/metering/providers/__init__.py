"""Provider parsers: one module per wire-format family, each turning events into `Counts`."""
