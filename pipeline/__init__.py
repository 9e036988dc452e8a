"""SHIP feature-caching pipeline: the library. Stages (`stages/`) are thin glue over it."""
