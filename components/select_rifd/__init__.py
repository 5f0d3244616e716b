"""Stage ``select_rifd``: the phase-2 choice of the reflected response, and the final cut."""
