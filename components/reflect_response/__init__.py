"""Stage ``reflect_response``: the teacher writes a better answer for the phase-1 winner."""
