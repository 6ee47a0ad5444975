"""Data layer: task catalog, fetch, validation, preprocessing cache, splits and data loading."""
