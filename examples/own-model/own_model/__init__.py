"""An example of your own code for lrtune: a `Workload` factory and a `TrainFunction`.

Start lrtune with this folder on the code path (`lrtune serve --code-path examples/own-model`)
and name the factories in a job: `own_model.regression:make` or `own_model.classifier:make`.
"""
