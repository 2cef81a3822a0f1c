"""Labelling, inside an actor: bytes to masks and rows.

`decode` (bytes -> pixels, bounded), `readahead` (readers ahead of the model, a pixel budget,
shape batches), `stack` (the models, built once from the job), `steps` (the per-image steps),
`labeler` (a shard: read, decode, label, commit its attempt), `rows` (results -> table rows),
`sidecar` (per-image point and box prompts).
"""
