"""`sentmtl index` and `sentmtl search --index`: a corpus's embeddings and every head's outputs in
an embedded Lance table (LanceDB's format) on disk, searched by vector with the heads' outputs as filters."""
