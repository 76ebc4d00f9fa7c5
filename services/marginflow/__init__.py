"""marginflow: continuous margin re-calibration for a crypto derivatives venue."""
