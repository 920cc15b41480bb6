"""``alad run``'s stages, each a function of the run's context (:class:`alad_train.context.RunContext`):

- :mod:`.teacher`: stage 0, the teacher row;
- :mod:`.alignment`: stages 1 and 2, the AlAd of window K aligned to the teacher;
- :mod:`.finetune`: stage 3, the baselines and the ablation (one task model per case);
- :mod:`.latency`: the latency of every row's saved model;
- :mod:`.results`: results.json;
- :mod:`.common`: training with the run's settings.
"""
