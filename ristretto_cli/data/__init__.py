"""Data input: Datum DBs, the DataTransformer, prefetching, the batch cache, converters."""
