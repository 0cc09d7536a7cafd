"""The rule kinds: one module per kind, each an `Evaluator` (the Protocol in rules.kinds.base) that
the engine (rules.engine) builds per rule and feeds a batch's in-order series.

    base       the Evaluator Protocol, BaseEvaluator (the no-op stages), Series, Batch, Context
    threshold  threshold: on the reading or a window's aggregate, `for`, hysteresis (ThresholdEvaluator)
    rate       rate_of_change (RateEvaluator)
    index      index_band: ISPU, Siaga, LOS, rain class → severity (IndexEvaluator)
    absence    absence: silence measured from arrivals (AbsenceEvaluator)
    quality    data_quality: stuck (StuckEvaluator), out_of_range (OutOfRangeEvaluator)
    composite  composite: conditions combined per district or river (CompositeEvaluator)
"""
