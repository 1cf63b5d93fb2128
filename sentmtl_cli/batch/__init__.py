"""`sentmtl batch`: inputs cut into units (inputs.py), typed parquet shards and the job's record
(output.py), and the engines that run the units (run.py; the Ray worker is sentmtl_cli/ray.py)."""
