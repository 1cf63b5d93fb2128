"""The shipped model (default.yaml and its heads), installed as the package sentmtl_cli.shipped."""
