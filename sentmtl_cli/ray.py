"""sentmtl on Ray Data: `Predictor`, for your own pipelines, and the worker `sentmtl batch --engine ray`
runs. Both load the model once per actor (the ONNX fast path when an export exists), with one
intra-op thread per CPU the actor holds, so actors side by side do not oversubscribe cores.

    import ray
    from sentmtl_cli.ray import Predictor

    ds = ray.data.read_parquet("texts/")
    ds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"tasks": ["embed", "cls", "ner"]},
        batch_size=256,
        num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=4),
    )
    ds.write_parquet("out/")

The columns added are those `sentmtl batch` writes: `embedding` (fixed-size list of float32), and per
sentence task `<task>_label`, `<task>_score`, `<task>_scores` (a struct of label -> float32), per token
task `<task>_entities` (a list of struct text/label/start/end/score).
"""

from .batch.worker import Predictor, ShardWriter, resolve_batch_tasks

__all__ = ["Predictor", "ShardWriter", "resolve_batch_tasks"]
