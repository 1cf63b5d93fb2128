"""`sentmtl serve`: the model behind HTTP (app.py), with dynamic micro-batching (batcher.py) and a page
to try it (static/)."""
