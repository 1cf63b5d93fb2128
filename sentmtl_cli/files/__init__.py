"""Files and streams: atomic writes, reading text sources, streaming sinks (json/jsonl/npy).

(The issue's `io/`: named `files` so that no module of ours shadows the standard library's `io`.)"""
