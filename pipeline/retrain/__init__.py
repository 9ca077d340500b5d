"""Retraining orchestration (offline, Kafka-free): read the archive, train the forecaster kinds, evaluate
against the champion, promote. The plain functions behind the Airflow DAG ``dags/retrain_forecasters.py``.

Flow for one data interval (every step idempotent for that interval), one module per step:

1. ``plan.plan(settings, interval_start, interval_end) -> Plan``: the training range is
   ``[min(interval_start, interval_end - lookback), interval_end)``; the held-out slice is its most
   recent ``holdout_fraction`` (by time, over all series). Raises ``NotEnoughDataError`` (the DAG
   turns it into a skip) when no series has ``min_points`` values before the cut and
   ``min_holdout_points`` after it.
2. ``train.train_candidate(settings, plan, job) -> Candidate`` for each ``Job`` = (model group,
   kind) of ``contracts.plan_jobs(settings)``: fits the forecaster (``models.forecasting.training.fit``,
   device "auto": CUDA when present, else CPU) on the training part of the group's series, evaluates
   it and the current champion on the held-out slice (``evaluate``), and registers it (not
   promoted) with the figures in meta.json ``metrics``, under ``idempotency_key =
   f"{kind}:{interval_start}:{interval_end}"``. A re-run finds that version and neither trains nor
   writes anything.
3. ``promote.promote_if_better(settings, plan, candidate) -> Decision``: promotes through
   ``ModelRegistry.promote`` (atomic pointer) when there is no usable champion, or the candidate's
   held-out normalised MAE is lower by ``min_improvement`` (relative) and, with labels configured,
   its detection F1 is not lower. A champion trained on newer data is never replaced by an older
   interval's candidate. Running scorers hot-reload the new champion.
4. ``figures.record_figures(settings, decisions)``: ``RetrainMetrics`` (last success,
   candidate/champion error, promotions = champion changes in the registry) pushed to
   ``TSAD_PUSHGATEWAY_URL`` when set, else written atomically to ``TSAD_RETRAIN_TEXTFILE``
   (node-exporter textfile collector).

The knobs are ``settings.retrain`` (``models.core.settings``, ``TSAD_RETRAIN_*``); ``tasks`` holds the
DAG's task bodies (dicts at the XCom boundary). Registry names are ``f"{group}-{kind}"`` (e.g.
``default-many-to-one``); serve one with ``tsad serve --model default-many-to-one``.
"""
