"""Stage ``select_ifd``: the phase-1 choice between the original and the reflected instruction."""
