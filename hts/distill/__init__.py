"""Distillation: a small, fast MACE student trained on the teacher's labels for one campaign's chemistry.

``hts distill CONFIG`` runs :func:`hts.distill.pipeline.run_distill`.  The
science parts (:mod:`~hts.distill.sample`, :mod:`~hts.distill.evaluate`) take
batches and return records; the pipeline fans them out through an engine.
"""
