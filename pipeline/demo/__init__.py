"""The embedded demo: its generated world (catalogue, rendering, captions, writers) and its shipped CLIP."""
