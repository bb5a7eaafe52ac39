"""Implementation of ``jaxmm.calibrate``; import the public names from there."""
