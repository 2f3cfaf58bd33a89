"""Method names with a fixed meaning, shared by the config checks, the rules and the stages.
Imports nothing, so any stage (whatever its conda env) can use it."""

# classical baselines (srnet_core/registration/baselines.py), names reserved for them in
# evaluate.methods and brain.evaluate.methods
BASELINES = ("ants_syn", "elastix")
