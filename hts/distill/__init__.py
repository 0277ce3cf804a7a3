"""Distillation: a small, fast MACE student trained on the teacher's labels for one campaign's chemistry.

``hts distill CONFIG`` runs :func:`hts.distill.pipeline.run_distill`.  The
science parts (:mod:`~hts.distill.sample`, :mod:`~hts.distill.evaluate`,
:mod:`~hts.distill.screening`) take batches and return records; the phases
(:mod:`~hts.distill.labelling`, :mod:`~hts.distill.training`,
:mod:`~hts.distill.calibration`, :mod:`~hts.distill.rounds`,
:mod:`~hts.distill.report`) fan them out through an engine, and the pipeline
runs the phases in order.
"""
