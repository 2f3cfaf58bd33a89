"""Method names with a fixed meaning, shared by the config checks, the rules and the stages.
Imports nothing, so any stage (whatever its conda env) can use it."""

# classical baselines (srnet_core/registration/baselines.py), names reserved for them in
# evaluate.methods and brain.evaluate.methods
BASELINES = ("ants_syn", "elastix")

# the same baselines from their own initialisation instead of srnet's affine pre-alignment (histology
# tables only): `<baseline>_own`, with the settings of registration.baselines.<baseline>
OWN_START_SUFFIX = "_own"
OWN_START_BASELINES = tuple(name + OWN_START_SUFFIX for name in BASELINES)
HISTOLOGY_BASELINES = BASELINES + OWN_START_BASELINES


def baseline_start(name: str) -> tuple[str, str]:
    """A histology baseline column -> (the baseline, its start: "srnet" or "own")."""
    if name in OWN_START_BASELINES:
        return name[:-len(OWN_START_SUFFIX)], "own"
    return name, "srnet"
